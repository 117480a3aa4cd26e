"""Exact k-nearest-neighbour search in ℓ2 (RMS on [0, 1] pixels), streamed in blocks.

Used by verification (generations x training set, paper §5.1: each generation's n = 50 nearest
training images) and by the black-box extraction mode (generations x generations).

For every query block and every reference block (:mod:`.sources`):

1. a backend (:mod:`.knn_backends`: ``torch`` blocked GEMM, or ``faiss``) proposes the
   c = k + extra rows with the smallest approximate squared distance;
2. the candidates are re-ranked with exact integer arithmetic (:func:`.compute.exact_sq_dists`) and
   merged into the running top k (ties broken by the smaller reference index, so results are
   deterministic and equal across backends); with an exact GEMM (the default int8 one, or float64)
   the candidates' distances are exact already and are merged as they are;
3. a certificate checks that no other row of the block can beat the current k-th distance:
   every non-candidate's approximate distance is ≥ the block's cutoff, so its exact one is ≥
   cutoff − margin (:func:`.compute.error_margin`, a deterministic bound on the fp32 kinds'
   rounding, 0 for the exact kinds). Queries whose certificate fails are recomputed exactly
   against the block (one reference block at a time when the reference is cached whole). The result
   is therefore the exact top k, with exact distances, for every compute kind, backend and image size.

Memory is bounded by the blocks: queries are read once, ``query_block`` rows at a time; the reference
is cached prepared on the device when it fits ``ref_cache_bytes``, else streamed once per group of
query blocks held prepared within ``query_group_bytes`` (the same budget by default: the memory a
cached reference would take goes to the queries instead), in reference blocks of at most 1 GiB
prepared on CUDA, 256 MiB on the CPU (:func:`_stream_block_rows`); the certificate's fallback also
works one reference block at a time. Distances are returned ascending, float64 RMS in [0, 1];
smaller = nearer. Queries and reference must have the same values per image and, where both are
given as images (N, H, W, C), the same image shape (H, W, C).

On CUDA a cached reference is searched as a pipeline (``pipeline``, default on CUDA): query block
i + 1 is queued on the GPU before block i's results are read back, into pinned memory behind an
event, and nothing inside a block waits on the GPU. The queries to recompute (the fused kernel's
incomplete ones, the certificate's failures) are not counted on the host first: a fixed number of
rows, the needy ones first, is recomputed whatever the count (:class:`_Caps`), and a block that needed
more is searched again the waiting way when its counts come back, so the results are the same.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.distances.compute import PIXEL_SQ, exact_sq_dists, resolve_compute
from diffaudit.distances.images import check_same_image_shape
from diffaudit.distances.knn_backends import (
    Candidates,
    PreparedBlock,
    PreparedQueries,
    get_backend,
    mask_rows,
    static_rows,
)
from diffaudit.distances.prefetch import prefetch
from diffaudit.distances.sources import ReferenceSource, iter_blocks, peek_dim

_SENTINEL = torch.iinfo(torch.int64).max
#: Bytes of fp32 gathered candidates per exact re-ranking chunk.
_RERANK_BYTES = 256 << 20


@dataclass
class KnnResult:
    """The k nearest reference rows of each query.

    Attributes:
        distances: float64 (Q, k), ascending ℓ2 (RMS on [0, 1] pixels), exact.
        indices: int64 (Q, k), reference row indices (global, 0-based); ties by smaller index.
        sq: int64 (Q, k), the exact squared sums Σ(q − r)² on 0..255 values.
        dim: values per image (H·W·C).
        fallback_rows: query-block pairs recomputed in full because the certificate failed (a
            diagnostic; 0 for the exact kinds, int8 and float64, except on exact ties).
        stats: ``backend`` and ``compute`` (the kind that ran); with the int8 GEMM's fused kernel
            (:mod:`.knn_fused`, CUDA) also ``fused`` True and ``fused_recomputed_rows``, the queries
            whose candidates were recomputed with the unfused product (a diagnostic); where a
            pipelined block needed more rows recomputed than its caps and was searched again
            (:class:`_Caps`), ``pipeline_redone_blocks``.
    """

    distances: np.ndarray
    indices: np.ndarray
    sq: np.ndarray
    dim: int
    fallback_rows: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def default_extra(k: int) -> int:
    """Extra candidates fetched per block beyond k: max(8, k // 4)."""
    return max(8, k // 4)


def _default_blocks(device: torch.device, n_ref: int | None, dim: int | None = None) -> tuple[int, int]:
    """(query rows, reference rows) per block: the (query x ref) distance block holds at most 2^28
    entries on CUDA (1 GiB fp32), 2^23 on the CPU (64 MiB float64), and the query operand at most
    1 GiB / 64 MiB as float64 when the image size ``dim`` is known (a small reference must not make
    the query block huge; the search passes the queries' own size when the reference's is unknown).

    On an H100, with query blocks read ahead (:mod:`.prefetch`), the exact top-50 of 2^20 CIFAR-sized
    queries among 50,000 took 2.25 s with these 1 GiB blocks and 2.38 s with 4 GiB ones."""
    cuda = device.type == "cuda"
    rb = min(n_ref or (65536 if cuda else 8192), 65536 if cuda else 8192)
    qb = (1 << 28 if cuda else 1 << 23) // max(rb, 1)
    if dim:
        qb = min(qb, (1 << 30 if cuda else 1 << 26) // (8 * dim))
    return max(256 if cuda else 64, qb), rb


def _merge(best_sq: torch.Tensor, best_idx: torch.Tensor, new_sq: torch.Tensor, new_idx: torch.Tensor, k: int):
    """Top k of (best ∪ new) by (sq, index). best is sorted; new rows hold larger indices than best."""
    order = torch.argsort(new_idx, dim=1)  # tie-break by index inside the new block
    new_sq, new_idx = new_sq.gather(1, order), new_idx.gather(1, order)
    sq = torch.cat([best_sq, new_sq], 1)
    idx = torch.cat([best_idx, new_idx], 1)
    keep = torch.sort(sq, dim=1, stable=True).indices[:, :k]
    return sq.gather(1, keep), idx.gather(1, keep)


def _exact_candidates(q: PreparedQueries, r: PreparedBlock, cand: Candidates) -> torch.Tensor:
    """Exact int64 squared distances of the candidates (sentinel where approx is +inf)."""
    out = _rerank(q, r.rows, r.norms, cand.local.to(q.raw.device))
    out[~torch.isfinite(cand.approx.to(out.device))] = _SENTINEL
    return out


def _rerank(q: PreparedQueries, rows: torch.Tensor, norms: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Exact int64 squared distances (Bq, c) of each query to its candidate rows ``sel`` (Bq, c) of
    ``rows`` (n, D) (uint8 or an exact GEMM operand, see :func:`.compute.exact_dots`), gathered in chunks
    of at most ``_RERANK_BYTES``."""
    bq, c = sel.shape
    d = q.raw.shape[1]
    out = torch.empty((bq, c), dtype=torch.int64, device=q.raw.device)
    step = max(1, _RERANK_BYTES // max(1, c * d * max(4, rows.element_size())))
    for lo in range(0, bq, step):
        hi = min(bq, lo + step)
        s = sel[lo:hi]
        gathered = rows[s.reshape(-1)].reshape(hi - lo, c, d)
        out[lo:hi] = exact_sq_dists(q.raw[lo:hi], gathered, q.norms[lo:hi], norms[s])
    return out


def _exact_block_topk(q_raw: torch.Tensor, q_global: torch.Tensor | None, r: PreparedBlock, k: int):
    """Exact top-k of a few query rows against one reference block (certificate fallback): int64
    squared distances (f, min(k, n)) sorted by (distance, index), and their global indices.

    Memory: the (f, n) int64 matrix of one block and its sort, the queries as float64 (f, D), and
    reference rows in float64 chunks of at most ``_RERANK_BYTES``; callers pass one block at a time.
    ``q_global``: the rows' global query indices when self matches are excluded, else None.
    """
    f, d = q_raw.shape
    n = r.raw.shape[0]
    qf = q_raw.to(torch.float64)
    qn = (qf * qf).sum(1)
    sq = torch.empty((f, n), dtype=torch.int64, device=q_raw.device)
    step = max(1, _RERANK_BYTES // max(1, d * 8))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        rf = r.raw[lo:hi].to(q_raw.device, torch.float64)
        sq[:, lo:hi] = (qn.unsqueeze(1) + (rf * rf).sum(1).unsqueeze(0) - 2.0 * (qf @ rf.T)).round().to(torch.int64)
    if q_global is not None:
        mask_rows(sq, q_global, r.offset, _SENTINEL)
    kk = min(k, n)
    keep = torch.sort(sq, dim=1, stable=True).indices[:, :kk]
    return sq.gather(1, keep), keep + r.offset


def _exact_topk_blocks(q_raw: torch.Tensor, q_global: torch.Tensor | None, blocks: list[PreparedBlock], k: int):
    """Exact top k (sq int64, global indices) of query rows against every block in turn, merged:
    memory of one block's fallback (:func:`_exact_block_topk`), never of the whole reference."""
    f = q_raw.shape[0]
    best_sq = torch.full((f, k), _SENTINEL, dtype=torch.int64, device=q_raw.device)
    best_idx = torch.full((f, k), -1, dtype=torch.int64, device=q_raw.device)
    for r in blocks:
        if r.raw.shape[0] == 0:
            continue
        fsq, fidx = _exact_block_topk(q_raw, q_global, r, k)
        best_sq, best_idx = _merge(best_sq, best_idx, fsq, fidx, k)
    return best_sq, best_idx


@dataclass
class _Found:
    """One query block's exact top k, still on the device, with its diagnostics.

    ``sq``/``idx`` int64 (Bq, k) sorted by (distance, index); ``fallback`` the queries the
    certificate sent to the exact recomputation, ``recomputed`` those whose candidates the backend
    computed a second way (None: it never does), ``need`` the most of those in one reference block:
    host ints from a search that waited on its counts, 0-d device tensors from one that did not
    (:class:`_Caps`), whose ``overflow`` (0-d bool) says whether a cap was too small for this block."""

    sq: torch.Tensor
    idx: torch.Tensor
    fallback: Any = 0
    recomputed: Any = None
    need: Any = 0
    overflow: Any = False


def _add(total: Any, part: Any) -> Any:
    """Sum of two counts where either may be None (none counted), an int or a device tensor."""
    return part if total is None else total if part is None else total + part


def _most(a: Any, b: Any) -> Any:
    """The larger of two counts where ``a`` may be None, and both ints or both device tensors."""
    return b if a is None else torch.maximum(a, b) if isinstance(b, torch.Tensor) else max(a, b)


@dataclass
class _Running:
    """One query block's top k so far against a streamed reference: ``sq``/``idx`` int64 (Bq, k)
    sorted by (distance, index), and the diagnostics :class:`_Found` reports."""

    q: PreparedQueries
    sq: torch.Tensor
    idx: torch.Tensor
    fallback: int = 0
    recomputed: Any = None


def _search_streamed(backend, qs: list[PreparedQueries], blocks: Iterator[PreparedBlock], k: int, c: int,
                     exclude_self: bool) -> list[_Found]:
    """Top k of a group of query blocks (at least one) against a streamed reference, read once for
    all of them: each reference block is searched against every query block in turn
    (:func:`_merge_block`)."""
    runs = []
    for q in qs:
        bq, dev = q.raw.shape[0], q.raw.device
        runs.append(_Running(q, torch.full((bq, k), _SENTINEL, dtype=torch.int64, device=dev),
                             torch.full((bq, k), -1, dtype=torch.int64, device=dev)))
    for r in blocks:
        if r.raw.shape[1] != qs[0].raw.shape[1]:
            raise DiffauditError(
                f"queries have {qs[0].raw.shape[1]} values per image but the reference has {r.raw.shape[1]}: image shapes differ"
            )
        if r.raw.shape[0] == 0:
            continue
        for run in runs:
            _merge_block(backend, run, r, k, c, exclude_self)
    return [_Found(run.sq, run.idx, run.fallback, run.recomputed) for run in runs]


def _merge_block(backend, run: _Running, r: PreparedBlock, k: int, c: int, exclude_self: bool) -> None:
    """Merge reference block ``r`` (n ≥ 1 rows) into ``run``: the backend's c candidates, made exact
    and merged; then the certificate, and the exact recomputation of the queries where it fails (one
    host wait per block: this path reads its reference from the host anyway)."""
    q = run.q
    dev = q.raw.device
    n = r.raw.shape[0]
    cc = min(c, n)
    cand = backend.candidates(q, r, cc, exclude_self)
    run.recomputed = _add(run.recomputed, cand.recomputed)
    if backend.spec.exact:  # the float64 GEMM already gave exact integers
        exact = torch.where(torch.isfinite(cand.approx), cand.approx, torch.zeros_like(cand.approx)).round().to(torch.int64)
        exact[~torch.isfinite(cand.approx)] = _SENTINEL
        exact = exact.to(dev)
    else:
        exact = _exact_candidates(q, r, cand)
    prev_sq, prev_idx = run.sq, run.idx
    run.sq, run.idx = _merge(prev_sq, prev_idx, exact, cand.local.to(dev) + r.offset, k)
    if cc >= n:
        return  # every row of the block was a candidate
    kth = run.sq[:, -1].to(torch.float64)
    bound = (cand.cutoff - cand.margin).to(dev)
    fail = ~(bound > kth)
    if bool(fail.any()):
        rows = fail.nonzero().squeeze(1)
        run.fallback += int(rows.numel())
        q_global = (rows + q.offset) if exclude_self else None
        fsq, fidx = _exact_block_topk(q.raw[rows], q_global, r, k)
        msq, midx = _merge(prev_sq[rows], prev_idx[rows], fsq, fidx, k)
        run.sq[rows], run.idx[rows] = msq, midx


#: Rows per query block the sync-free search recomputes at first (:class:`_Caps`): for the fused
#: kernel's incomplete queries (0.75% of 2^20 CIFAR-sized queries on an H100, about 40 of a block
#: of 5,368), and for the certificate's exact fallback (none for the exact kinds but on ties).
_CAP_INCOMPLETE, _CAP_FALLBACK = 64, 8


@dataclass
class _Caps:
    """How many rows a query block's search recomputes without first asking the GPU how many need it
    (:func:`.knn_backends.static_rows`): the search never waits on the device inside a block, and
    pays for recomputing up to ``incomplete`` queries per reference block (fused kernel) and
    ``fallback`` per query block (certificate) whether they need it or not. Each finished block sets
    them to twice what it needed (a power of two, at least the defaults), shrinking by at most half per
    block, so that needs that alternate between large and small do not overflow every other block; a
    block that needed more than its caps is searched again the waiting way (:func:`_search_resident`
    without caps). A :class:`ResidentReference` keeps its caps from one search to the next."""

    incomplete: int = field(default_factory=lambda: _CAP_INCOMPLETE)
    fallback: int = field(default_factory=lambda: _CAP_FALLBACK)

    def fit(self, need_incomplete: int, need_fallback: int) -> None:
        self.incomplete = max(_CAP_INCOMPLETE, _pow2(2 * need_incomplete), self.incomplete // 2)
        self.fallback = max(_CAP_FALLBACK, _pow2(2 * need_fallback), self.fallback // 2)


def _pow2(n: int) -> int:
    """The smallest power of two ≥ n (1 for n ≤ 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _search_resident(backend, q: PreparedQueries, blocks: list[PreparedBlock], ref_raw: torch.Tensor,
                     ref_rows: torch.Tensor, ref_norms: torch.Tensor, k: int, c: int, exclude_self: bool,
                     caps: _Caps | None = None) -> _Found:
    """Search a reference held whole on the device: candidates are merged by their *approximate*
    distance across all blocks and re-ranked exactly once at the end (one gather per query).

    Certificate: a row outside the final c candidates has an approximate distance ≥ the c-th merged
    one (τ) — either it lost the merge, or it lost inside its block, whose own cutoff is ≥ τ — so its
    exact distance is ≥ τ − margin; queries where that does not exceed the exact k-th distance are
    recomputed exactly against every block in turn (memory of one block, :func:`_exact_topk_blocks`).

    ``caps`` None: the queries to recompute (the fused kernel's, per reference block, and the
    certificate's) are found by reading their masks back, a host wait each. With ``caps`` nothing is
    read back: ``caps.incomplete`` and ``caps.fallback`` rows are recomputed whatever the need
    (:func:`.knn_backends.static_rows`), and the result's counts and ``overflow`` are device tensors.
    """
    bq = q.raw.shape[0]
    dev = q.raw.device
    n_total = int(ref_raw.shape[0])
    c = min(c, n_total)
    approx = torch.full((bq, c), np.inf, dtype=torch.float64, device=dev)
    idx = torch.zeros((bq, c), dtype=torch.int64, device=dev)
    margin = torch.zeros(bq, dtype=torch.float64, device=dev)
    recomputed, need, overflow = None, None, False
    for r in blocks:
        n = r.raw.shape[0]
        if n == 0:
            continue
        cand = backend.candidates(q, r, min(c, n), exclude_self, cap=None if caps is None else caps.incomplete)
        if cand.recomputed is not None:
            recomputed = _add(recomputed, cand.recomputed)
            need = _most(need, cand.recomputed)
        if cand.overflow is not None:
            overflow = overflow | cand.overflow
        a2 = torch.cat([approx, cand.approx.to(dev)], 1)
        i2 = torch.cat([idx, cand.local.to(dev) + r.offset], 1)
        keep = torch.topk(a2, c, dim=1, largest=False, sorted=False).indices
        approx, idx = a2.gather(1, keep), i2.gather(1, keep)
        margin = torch.maximum(margin, cand.margin.to(dev))
    if backend.spec.exact:
        exact = torch.where(torch.isfinite(approx), approx, torch.zeros_like(approx)).round().to(torch.int64)
    else:
        exact = _rerank(q, ref_rows, ref_norms, idx)
    exact.masked_fill_(~torch.isfinite(approx), _SENTINEL)
    empty = torch.empty((bq, 0), dtype=torch.int64, device=dev)
    best_sq, best_idx = _merge(empty, empty, exact, idx, k)
    if best_sq.shape[1] < k:  # fewer rows than k: pad (reported as an error by the caller)
        pad = k - best_sq.shape[1]
        best_sq = torch.cat([best_sq, torch.full((bq, pad), _SENTINEL, dtype=torch.int64, device=dev)], 1)
        best_idx = torch.cat([best_idx, torch.full((bq, pad), -1, dtype=torch.int64, device=dev)], 1)
    fallback = 0
    if c < n_total:
        finite = torch.where(torch.isfinite(approx), approx, torch.full_like(approx, -np.inf))
        tau = finite.amax(1)
        fail = ~((tau - margin) > best_sq[:, -1].to(torch.float64))
        if caps is not None:  # recompute caps.fallback rows, the failing ones first, without a host wait
            rows_f, fallback = static_rows(fail, caps.fallback)
            q_global = (rows_f + q.offset) if exclude_self else None
            fsq, fidx = _exact_topk_blocks(q.raw[rows_f], q_global, blocks, k)
            redo = fail[rows_f].unsqueeze(1)
            best_sq[rows_f] = torch.where(redo, fsq, best_sq[rows_f])
            best_idx[rows_f] = torch.where(redo, fidx, best_idx[rows_f])
            overflow = overflow | (fallback > rows_f.shape[0])
        elif bool(fail.any()):
            rows_f = fail.nonzero().squeeze(1)
            fallback = int(rows_f.numel())
            q_global = (rows_f + q.offset) if exclude_self else None
            fsq, fidx = _exact_topk_blocks(q.raw[rows_f], q_global, blocks, k)  # one block at a time
            best_sq[rows_f], best_idx[rows_f] = fsq, fidx
    return _Found(best_sq, best_idx, fallback, recomputed, 0 if need is None else need, overflow)


@dataclass
class ResidentReference:
    """A reference set prepared once on the device (uint8 rows, exact norms, backend operands), to be
    reused by several searches (e.g. one per resumable chunk of queries). Make it with
    :func:`prepare_reference`; pass it as ``reference`` with the same backend and device.

    ``rows`` is the backend's operand of the whole set (the re-rank gathers from it); the blocks'
    operands are slices of it, so it costs no extra memory. ``image_shape``: (H, W, C) when the set
    was given as images, else None (rows). ``caps``: the recompute caps its pipelined searches have
    learned (:class:`_Caps`), kept from one search to the next, so that a search of one chunk starts
    where the last chunk's left off."""

    backend: Any
    raw: torch.Tensor
    norms: torch.Tensor
    blocks: list[PreparedBlock]
    rows: torch.Tensor
    image_shape: tuple[int, int, int] | None = None
    caps: _Caps = field(default_factory=_Caps)

    @property
    def size(self) -> int:
        return int(self.raw.shape[0])


#: The compute kinds the faiss backend runs: it multiplies in fp32 on the CPU, whatever is asked.
_FAISS_KINDS = ("auto", "float32")


def _make_backend(backend: str, device: str | torch.device, compute: str, dim: int | None):
    """The backend for ``compute`` on ``device`` ("auto" is the exact int8 GEMM wherever the device's
    int8 GEMM is exact, whatever the image size; ``dim`` is no longer needed for that choice)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    spec = resolve_compute(compute, dev, cpu_default="float64", dim=dim, allow_int8=True)
    if backend == "faiss" and compute not in _FAISS_KINDS:
        raise DiffauditError(
            f"the faiss backend computes in float32 on the CPU; compute {compute!r} is not available with it: "
            "use backend 'torch' for int8, bf16 or float64, or compute 'auto'/'float32' with faiss"
        )
    return get_backend(backend, spec)


def _source_and_backend(reference: Any, backend: str, device: str | torch.device, compute: str):
    """The reference as a :class:`ReferenceSource` and the backend for it."""
    ref = ReferenceSource(reference, name="reference")
    return ref, _make_backend(backend, device, compute, ref.dim)


def _prepare_resident(be, raw_cpu: torch.Tensor, rb: int, image_shape: tuple | None = None) -> ResidentReference:
    raw = raw_cpu.to(be.device)
    rows = be.operand(raw)
    blocks = [be.prepare_block(off, raw[off:off + rb], rows[off:off + rb]) for off in range(0, raw.shape[0], rb)]
    norms = torch.cat([b.norms for b in blocks]) if blocks else torch.zeros(0, dtype=torch.int64, device=be.device)
    return ResidentReference(be, raw, norms, blocks, rows, image_shape)


def _positive_block(value: int | None, name: str) -> int | None:
    """``value`` when None or a positive integer; a clear error otherwise (0 is not "the default")."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DiffauditError(f"{name} must be a positive integer (rows per block) or None for the default, got {value!r}")
    return int(value)


def _check_not_empty(size: int | None) -> None:
    if size == 0:
        raise DiffauditError("the reference set is empty: nearest neighbours need at least one reference image")


def prepare_reference(
    reference: Any,
    *,
    backend: str = "torch",
    device: str | torch.device = "auto",
    compute: str = "auto",
    ref_block: int | None = None,
) -> ResidentReference:
    """Prepare a random-access uint8 reference (N, H, W, C)/(N, D) (N ≥ 1) once for repeated searches."""
    ref_block = _positive_block(ref_block, "ref_block")
    ref, be = _source_and_backend(reference, backend, device, compute)
    if ref.random_access is None:
        raise DiffauditError("prepare_reference needs an array or dataset, not a stream of blocks")
    _check_not_empty(ref.size)
    rb = ref_block or _default_blocks(be.device, ref.size)[1]
    return _prepare_resident(be, ref.random_access, rb, ref.image_shape)


def default_cache_bytes(device: torch.device) -> int:
    """Largest prepared reference kept resident: 4 GiB on CUDA, 1 GiB on the CPU."""
    return (4 << 30) if device.type == "cuda" else (1 << 30)


def prepare_reference_if_fits(
    reference: Any,
    *,
    backend: str = "torch",
    device: str | torch.device = "auto",
    compute: str = "auto",
    ref_cache_bytes: int | None = None,
) -> Any:
    """:func:`prepare_reference` when the reference is an array whose prepared form (uint8 + GEMM
    operand) fits ``ref_cache_bytes``; otherwise ``reference`` unchanged (it is then streamed)."""
    ref, be = _source_and_backend(reference, backend, device, compute)
    if not _fits(be, ref, ref_cache_bytes):
        return reference
    return _prepare_resident(be, ref.random_access, _default_blocks(be.device, ref.size)[1], ref.image_shape)


def _fits(be, ref: ReferenceSource, ref_cache_bytes: int | None) -> bool:
    """Whether the prepared reference (uint8 rows + the backend's GEMM operand) fits the cache budget;
    decided from its known size, before anything is read."""
    nbytes = ref.known_bytes
    if not nbytes:
        return False
    budget = default_cache_bytes(be.device) if ref_cache_bytes is None else ref_cache_bytes
    return nbytes * _prepared_itemsize(be) <= budget


def _prepared_itemsize(be) -> int:
    """Bytes per value of prepared rows: the uint8 value and the backend's GEMM operand."""
    return 1 + torch.empty((), dtype=be.spec.input_dtype).element_size()


#: Bytes of one streamed reference block, prepared (uint8 rows and GEMM operand), at most.
_STREAM_BLOCK_BYTES = {"cuda": 1 << 30, "cpu": 256 << 20}


def _stream_block_rows(be, rows: int, dim: int | None) -> int:
    """Rows per block of a streamed reference: ``rows`` (the default block), fewer where a block's
    prepared bytes would pass :data:`_STREAM_BLOCK_BYTES` (about 682 images of 512x512x3 on CUDA
    with the int8 GEMM, 170 on the CPU, against 65,536 and 8,192 CIFAR-sized ones)."""
    if not dim:
        return rows
    budget = _STREAM_BLOCK_BYTES["cuda" if be.device.type == "cuda" else "cpu"]
    return max(1, min(rows, budget // (dim * _prepared_itemsize(be))))


def _too_few(k: int, n_ref: int, exclude_self: bool) -> DiffauditError:
    if exclude_self:
        return DiffauditError(f"k = {k} nearest neighbours requested but the reference set has only {max(n_ref - 1, 0)} "
                              f"other images ({n_ref} in all, each query's own row excluded)")
    return DiffauditError(f"k = {k} nearest neighbours requested but the reference set has only {n_ref} images")


def iter_knn(
    queries: Any,
    reference: Any,
    k: int,
    *,
    backend: str = "torch",
    device: str | torch.device = "auto",
    compute: str = "auto",
    extra: int | None = None,
    query_block: int | None = None,
    ref_block: int | None = None,
    exclude_self: bool = False,
    query_offset: int = 0,
    ref_cache_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
    pipeline: bool | None = None,
    query_group_bytes: int | None = None,
) -> Iterator[tuple[int, KnnResult]]:
    """Yield ``(query_offset, KnnResult)`` per query block (none for empty queries); see
    :func:`knn_search` for arguments."""
    yield from _iter_knn(queries, reference, k, backend=backend, device=device, compute=compute, extra=extra,
                         query_block=query_block, ref_block=ref_block, exclude_self=exclude_self,
                         query_offset=query_offset, ref_cache_bytes=ref_cache_bytes, progress=progress,
                         pipeline=pipeline, query_group_bytes=query_group_bytes)


def _iter_knn(queries, reference, k, *, backend, device, compute, extra, query_block, ref_block, exclude_self,
              query_offset, ref_cache_bytes, progress, pipeline=None, query_group_bytes=None,
              meta: dict | None = None):
    """:func:`iter_knn`; ``meta`` receives ``dim`` (values per image, when known) and ``stats``, also
    when no query block is yielded (empty queries)."""
    meta = {} if meta is None else meta
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DiffauditError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if extra is not None and (isinstance(extra, (bool, np.bool_)) or not isinstance(extra, (int, np.integer)) or extra < 0):
        raise DiffauditError(f"extra must be a non-negative integer (candidates beyond k per block) or None, got {extra!r}")
    query_block = _positive_block(query_block, "query_block")
    ref_block = _positive_block(ref_block, "ref_block")
    if query_group_bytes is not None and (isinstance(query_group_bytes, (bool, np.bool_))
                                          or not isinstance(query_group_bytes, (int, np.integer)) or query_group_bytes < 0):
        raise DiffauditError(f"query_group_bytes must be a non-negative integer (bytes) or None, got {query_group_bytes!r}")
    resident: ResidentReference | None = None
    ref: ReferenceSource | None = None
    if isinstance(reference, ResidentReference):
        resident, be = reference, reference.backend
        size: int | None = resident.size
    else:
        ref, be = _source_and_backend(reference, backend, device, compute)
        size = ref.size
    _check_not_empty(size)
    meta["stats"] = {"backend": be.name, "compute": be.spec.kind}
    ref_dim = int(resident.raw.shape[1]) if resident is not None else ref.dim
    q_dim, queries = peek_dim(queries, name="queries")
    meta["dim"] = q_dim if q_dim is not None else ref_dim
    if ref_dim is not None and q_dim is not None and q_dim != ref_dim:
        raise DiffauditError(
            f"queries have {q_dim} values per image but the reference has {ref_dim}: image shapes differ"
        )
    # the query block is capped by the image size: the reference's, else the queries' own
    qb_default, rb_default = _default_blocks(be.device, size, ref_dim if ref_dim is not None else q_dim)
    qb, rb = query_block or qb_default, ref_block or rb_default
    c = k + (default_extra(k) if extra is None else int(extra))
    if size is not None and size - (1 if exclude_self else 0) < k:
        raise _too_few(k, size, exclude_self)
    if resident is None and ref is not None and _fits(be, ref, ref_cache_bytes):
        resident = _prepare_resident(be, ref.random_access, rb, ref.image_shape)  # one exact re-rank per query
    q_shape: dict = {}
    if resident is None and ref_block is None:  # a streamed block is read and prepared whole
        rb = _stream_block_rows(be, rb, ref_dim if ref_dim is not None else q_dim)
    group_bytes = default_cache_bytes(be.device) if query_group_bytes is None else int(query_group_bytes)

    def ref_shape():
        return resident.image_shape if resident is not None else ref.image_shape

    def streamed_blocks() -> Iterator[PreparedBlock]:
        # on CUDA the next reference block is read, and pinned, while the GPU searches this one
        blocks = prefetch(ref.blocks(rb), be.device)
        try:
            for off, t in blocks:
                check_same_image_shape(q_shape.get("shape"), ref.image_shape)
                yield be.prepare_block(off, t)
        finally:
            blocks.close()

    # A resident search on CUDA runs one query block ahead of its results: block i + 1 is queued on the
    # GPU before block i's results are read back, and no step inside a block waits on the device
    # (:class:`_Caps`), so the GPU is never idle while the host reads, converts or hands out results.
    pipelined = (be.device.type == "cuda") if pipeline is None else bool(pipeline)
    caps = resident.caps if pipelined and resident is not None else None
    ahead = 1 if caps is not None else 0

    def prepare(q_off: int, q_raw: torch.Tensor) -> PreparedQueries:
        q_off += int(query_offset)
        check_same_image_shape(q_shape.get("shape"), ref_shape())
        ref_dim = int(resident.raw.shape[1]) if resident is not None else ref.dim
        if ref_dim is not None and q_raw.shape[1] != ref_dim:
            raise DiffauditError(
                f"queries have {q_raw.shape[1]} values per image but the reference has {ref_dim}: image shapes differ"
            )
        return be.prepare_queries(q_off, q_raw)

    def grouped(items: Iterator[tuple[int, torch.Tensor]]) -> Iterator[list[PreparedQueries]]:
        """The query blocks, prepared, in the groups searched together: one block each against a
        cached reference; against a streamed one, as many as ``group_bytes`` holds (at least one), so
        that the reference is read once per group. After an error reading or preparing a block, the
        blocks before it come out as a last group, then the error is raised."""
        group: list[PreparedQueries] = []
        held, itemsize = 0, _prepared_itemsize(be)
        try:
            for item in items:
                group.append(prepare(*item))
                held += group[-1].raw.numel() * itemsize
                if resident is not None or held >= group_bytes:
                    yield group
                    group, held = [], 0
        except Exception:
            if group:
                yield group
            raise
        if group:
            yield group

    def search(group: list[PreparedQueries]) -> list[tuple[PreparedQueries, _Readback]]:
        if resident is not None:
            return [(q, _Readback(resident_search(q, caps))) for q in group]
        found = _search_streamed(be, group, streamed_blocks(), k, c, exclude_self)
        return [(q, _Readback(f)) for q, f in zip(group, found)]

    def resident_search(q: PreparedQueries, caps: _Caps | None) -> _Found:
        return _search_resident(be, q, resident.blocks, resident.raw, resident.rows, resident.norms, k, c,
                                exclude_self, caps)

    def finish(q: PreparedQueries, back: _Readback) -> tuple[int, KnnResult]:
        sq, idx, (too_few, overflow, fallback, recomputed, need) = back.host()
        if overflow:  # more rows needed recomputing than the caps allowed: again, waiting on the counts
            sq, idx, (too_few, _, fallback, recomputed, need) = _Readback(resident_search(q, None)).host()
        if caps is not None:
            caps.fit(need, fallback)
        if too_few:
            n_ref = resident.size if resident is not None else ref.size
            _check_not_empty(n_ref)
            raise _too_few(k, n_ref, exclude_self)
        dim = int(q.raw.shape[1])
        dist = np.sqrt(sq.astype(np.float64) / (dim * PIXEL_SQ))
        stats = dict(meta["stats"])
        if overflow:
            stats["pipeline_redone_blocks"] = 1
        if recomputed >= 0:  # the int8 backend's fused kernel ran (:mod:`.knn_fused`)
            stats["fused"] = True
            stats["fused_recomputed_rows"] = recomputed
            be.recomputed_rows += recomputed
        if progress is not None:
            progress(int(q.raw.shape[0]))
        return q.offset, KnnResult(dist, idx, sq, dim, fallback, stats)

    # on CUDA the next query block is read, and pinned, while the GPU searches the current one
    blocks = prefetch(iter_blocks(queries, qb, name="queries", shape=q_shape), be.device)
    groups = grouped(blocks)
    queued: deque = deque()
    try:
        while True:
            try:
                group = next(groups, None)
                if group is not None:
                    queued.extend(search(group))
            except Exception:
                while queued:  # the blocks already searched are handed out before the error
                    yield finish(*queued.popleft())
                raise
            while queued and (group is None or len(queued) > ahead):
                yield finish(*queued.popleft())
            if group is None:
                return
    finally:
        groups.close()
        blocks.close()


class _Readback:
    """A query block's results (:class:`_Found`) on their way to the host. On CUDA they are copied
    into pinned memory without waiting, behind an event, so the host can queue the next block first;
    elsewhere they are copied at once. :meth:`host` waits for them."""

    def __init__(self, found: _Found):
        dev = found.sq.device
        counts = (found.overflow, found.fallback, -1 if found.recomputed is None else found.recomputed, found.need)
        flags = torch.stack([(found.sq == _SENTINEL).any().to(torch.int64)] + [_scalar(x, dev) for x in counts])
        self.event = torch.cuda.Event() if dev.type == "cuda" else None
        if self.event is None:
            self.parts = [found.sq.cpu(), found.idx.cpu(), flags.cpu()]
            return
        self.parts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                      for t in (found.sq, found.idx, flags)]
        self.event.record()

    def host(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """sq int64 (Bq, k), idx int64 (Bq, k) as numpy (never pinned memory), and the flags: any
        query short of k neighbours, overflow, fallback, recomputed (−1: not counted), need."""
        if self.event is not None:
            self.event.synchronize()
        sq, idx, flags = self.parts
        copy = self.event is not None  # results kept by the caller must not hold pinned memory
        return (sq.numpy().copy() if copy else sq.numpy()), (idx.numpy().copy() if copy else idx.numpy()), \
            [int(x) for x in flags.tolist()]


def _scalar(x: Any, dev: torch.device) -> torch.Tensor:
    """A count or flag as a 0-d int64 tensor on ``dev``: a device tensor converted, a host int filled
    in (no copy from the host, which would wait on the device)."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.int64).reshape(())
    return torch.full((), int(x), dtype=torch.int64, device=dev)


def knn_search(
    queries: Any,
    reference: Any,
    k: int,
    **kwargs: Any,
) -> KnnResult:
    """Exact k nearest reference images of every query image, by ℓ2 (RMS on [0, 1] pixels).

    Args:
        queries: uint8 images (Q, H, W, C) or rows (Q, D) (numpy, memory map, torch, ImageDataset) or
            an iterable of such blocks (read once); Q may be 0 (an empty result).
        reference: uint8 (N, H, W, C)/(N, D) array or ImageDataset, a list of blocks, a callable
            returning a fresh iterator of blocks (re-read per group of query blocks when not cached), or a
            :class:`ResidentReference` from :func:`prepare_reference` (then backend/device/compute
            are those it was prepared with); N ≥ 1. Images must match the queries' shape (H, W, C)
            (channels-last, at most 4 channels) where both are given as images.
        k: neighbours per query, 1 ≤ k ≤ N (≤ N − 1 with ``exclude_self``; the paper uses n = 50; up
            to ~100 is cheap).
        backend: ``torch`` (blocked GEMM) or ``faiss`` (IndexFlatL2, CPU, fp32 only: compute "auto"
            or "float32"); see :mod:`.knn_backends`.
        device: ``auto``, ``cpu``, ``cuda``... (faiss always runs on the CPU).
        compute: GEMM precision: ``auto`` (the exact int8 GEMM on shifted pixels, on CUDA and the CPU,
            for any image size, wherever the device's int8 GEMM passes the exactness probe; else bf16
            with exact re-ranking on CUDA and float64, exact, on the CPU), ``int8``, ``bf16``,
            ``float32``, ``float64``. Every kind gives the same exact result: the fp32 kinds' candidates
            are certified with a deterministic rounding bound and re-ranked exactly.
        extra: candidates fetched beyond k per block, an integer ≥ 0 (default max(8, k // 4)); only
            speed depends on it.
        query_block, ref_block: rows per block, positive (defaults bound the (query x ref) block to
            1 GiB on CUDA, 64 MiB on the CPU, and the query operand alike, from the reference's image
            size or, for a streamed reference, the queries').
        exclude_self: queries and reference are the same set; a query never returns its own row.
        query_offset: global index of the first query (for ``exclude_self`` on a slice of the set);
            yielded offsets include it.
        ref_cache_bytes: cache the prepared reference when it fits (default 4 GiB CUDA, 1 GiB CPU).
        progress: called with the number of queries finished after every block.
        pipeline: search a cached reference one query block ahead of reading results back, with no
            host wait inside a block (default: on CUDA); only speed depends on it.
        query_group_bytes: against a reference that is not cached, the query blocks held prepared
            together (uint8 and GEMM operand), ≥ 0; the reference is read once per such group
            (default: the cache's budget, 4 GiB CUDA, 1 GiB CPU; 0 reads it once per query block).

    Returns:
        :class:`KnnResult` with exact ascending distances (Q, k) and indices; equal for every backend,
        compute kind and device (ties broken by the smaller index).
    """
    meta: dict = {}
    kw = dict(backend="torch", device="auto", compute="auto", extra=None, query_block=None, ref_block=None,
              exclude_self=False, query_offset=0, ref_cache_bytes=None, progress=None, pipeline=None,
              query_group_bytes=None)
    unknown = set(kwargs) - set(kw)
    if unknown:
        raise TypeError(f"knn_search() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    kw.update(kwargs)
    parts = list(_iter_knn(queries, reference, k, meta=meta, **kw))
    if not parts:
        kk = int(k)
        return KnnResult(np.zeros((0, kk)), np.zeros((0, kk), dtype=np.int64), np.zeros((0, kk), dtype=np.int64),
                         int(meta.get("dim") or 0), 0, dict(meta.get("stats", {})))
    return KnnResult(
        np.concatenate([p.distances for _, p in parts]),
        np.concatenate([p.indices for _, p in parts]),
        np.concatenate([p.sq for _, p in parts]),
        parts[0][1].dim,
        sum(p.fallback_rows for _, p in parts),
        merged_stats([p.stats for _, p in parts]),
    )


def merged_stats(per_block: list[dict]) -> dict:
    """The search's stats from its query blocks': the first block's, with counts summed."""
    stats = dict(per_block[0])
    for count in ("fused_recomputed_rows", "pipeline_redone_blocks"):
        total = sum(s.get(count, 0) for s in per_block)
        if total or count in stats:
            stats[count] = total
    return stats
