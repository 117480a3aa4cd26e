"""Candidate generators of the exact kNN search, behind one interface, chosen by name.

A backend proposes, per query, the ``c`` reference rows of one block with the smallest *approximate*
squared distance; :mod:`diffaudit.distances.knn` then re-ranks them with exact integer arithmetic and
certifies that no row outside the candidates can belong to the top k. Backends:

- ``torch``: blocked GEMM ‖q‖² + ‖r‖² − 2·q·r on integer pixels and ``torch.topk``: exact int8 with
  int32 accumulation on shifted pixels (any image size: int32 per chunk of columns, int64 totals above
  :data:`.compute.INT8_MAX_DIM`) wherever the device's int8 GEMM is exact, else bf16 in / fp32
  accumulate on CUDA, float64 (exact) or fp32 on the CPU (:mod:`.compute`).
- ``faiss``: ``faiss.IndexFlatL2`` (exhaustive, fp32; it returns squared sums Σ(q − r)² on the values
  it was given, here 0..255, so the RMS is sqrt(D / (d·255²))); CPU only (faiss-cpu), fp32 only (the
  search refuses other compute kinds with it).

The margin of the fp32 kinds is a deterministic bound (:func:`.compute.error_margin`), so the
certificate of :mod:`.knn` holds for every input, not only with high probability.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.distances import knn_fused
from diffaudit.distances.compute import (
    INT8_MAX_DIM,
    U_FP32,
    ComputeSpec,
    cross,
    error_margin,
    extreme_int8,
    fp32_chunk,
    gemm_error_factor,
    int8_acc_dtype,
    rounding_model,
    shifted_sq_norms,
    sq_norms,
    to_compute,
)


@dataclass
class PreparedBlock:
    """One reference block, ready for candidate search and exact re-ranking.

    raw: uint8 (n, D) on the backend's device; norms: int64 (n,) exact ‖r‖²; offset: global index of
    row 0; max_norm: the largest norm the backend's margin is relative to (‖r‖², for faiss the shifted
    ‖r − 128‖²); handle: the backend's own form (GEMM operand or faiss index); rows: (n, D) the rows the
    exact re-rank gathers candidates from (:func:`.compute.exact_dots`): the GEMM operand where it
    holds the integers exactly (bf16 or fp32 on the device, no conversion pass), else ``raw``.
    """

    offset: int
    raw: torch.Tensor
    norms: torch.Tensor
    max_norm: int
    handle: Any
    rows: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = self.raw


@dataclass
class PreparedQueries:
    offset: int
    raw: torch.Tensor
    norms: torch.Tensor
    handle: Any


@dataclass
class Candidates:
    """Per query: ``local`` (Bq, c) int64 candidate rows of the block; ``approx`` (Bq, c) float64
    scores of the candidates (+inf marks an excluded self match): approximate squared distances, or
    lower bounds on them; ``cutoff`` (Bq,) float64: every non-candidate row's score is ≥ cutoff;
    ``margin`` (Bq,) float64: every row's exact squared distance is ≥ its score − margin (a bound on
    |approximate − exact|, or 0 where the scores are exact or lower bounds).

    ``recomputed``: queries whose candidates a backend had to compute a second way (the int8
    backend's fused kernel, :class:`TorchInt8Backend`): an int, or with a ``cap`` a 0-d int64 tensor
    on the device; None where the backend never does. ``overflow``: with a ``cap``, a 0-d bool
    tensor, True where more queries needed it than the cap allowed (the candidates of the others are
    then not the block's c best: the caller must search the block again without a cap)."""

    local: torch.Tensor
    approx: torch.Tensor
    cutoff: torch.Tensor
    margin: torch.Tensor
    recomputed: Any = None
    overflow: torch.Tensor | None = None


def static_rows(mask: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows where ``mask`` holds, listed without reading the mask back to the host (no GPU wait).

    Args:
        mask: bool (B,), on any device; cap: rows to list, ≥ 1.

    Returns:
        ``rows`` int64 (min(cap, B),), distinct: the masked rows in ascending order, then unmasked
        ones to fill the list (callers work on every listed row and keep the result only where
        ``mask[rows]``: rows are distinct, so writing back ``torch.where(mask[rows], new, old)`` has
        no conflicting writes); ``count`` int64 0-d on the device, how many rows the mask holds. The
        list misses masked rows exactly where ``count > cap``.
    """
    order = torch.argsort((~mask).to(torch.uint8), stable=True)
    return order[:min(int(cap), mask.shape[0])], mask.sum()


class TorchGemmBackend:
    """Blocked GEMM on ``spec.device`` with torch.topk (see module docstring).

    For the fp32 kinds the score of row r is a *lower bound* on its exact squared distance: the GEMM
    adds ‖r‖²·(1 − f·u) instead of ‖r‖², and ‖q‖²·(1 − f·u) is added to the candidates, with f
    :func:`.compute.gemm_error_factor` (deterministic), so score ≤ exact − (rounding error bound) +
    |rounding error| ≤ exact for every row. Each row carries its own bound (from its own norm, not the
    block's largest), and the certificate needs no margin: a non-candidate's exact distance is ≥ its
    score ≥ the cutoff.
    """

    name = "torch"

    def __init__(self, spec: ComputeSpec):
        self.spec = spec
        self.device = spec.device

    def _slack(self, dim: int) -> float:
        """f·u: the relative rounding bound of the fp32 kinds for images of ``dim`` values (0 if exact)."""
        if self.spec.exact:
            return 0.0
        return gemm_error_factor(dim, chunk=fp32_chunk(self.device), rounding=rounding_model(self.device)) * U_FP32

    def operand(self, raw: torch.Tensor) -> torch.Tensor:
        """The GEMM operand of uint8 rows (n, D): their values 0..255 in the compute dtype, on the device."""
        return to_compute(raw, self.spec)

    def prepare_block(self, offset: int, raw: torch.Tensor, operand: torch.Tensor | None = None) -> PreparedBlock:
        """``operand``: :meth:`operand` of ``raw`` when already made (e.g. a slice of a whole reference's)."""
        raw = raw.to(self.device)
        norms = sq_norms(raw)
        op = self.operand(raw) if operand is None else operand
        return PreparedBlock(offset, raw, norms, int(norms.max()) if len(norms) else 0,
                             (op, self.gemm_norms(raw, norms).to(self.acc_dtype(raw.shape[1]))), rows=op)

    def gemm_norms(self, raw: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """The norms the GEMM's distance formula adds: ‖r‖² (int64 ``norms``) for float64, lowered
        by their rounding bound, ‖r‖²·(1 − f·u) (float64), for the fp32 kinds (class docstring)."""
        slack = self._slack(raw.shape[1])
        return norms if slack == 0.0 else norms.to(torch.float64) * (1.0 - slack)

    def acc_dtype(self, dim: int) -> torch.dtype:
        """The dtype of the (query x block) distance matrix for images of ``dim`` values."""
        return self.spec.output_dtype

    def prepare_queries(self, offset: int, raw: torch.Tensor) -> PreparedQueries:
        raw = raw.to(self.device, non_blocking=raw.is_pinned())  # asynchronous from pinned blocks (.prefetch)
        norms = sq_norms(raw)
        # −2·q folded into the operand (−510..0 are exact in bf16), saving a pass over the (Bq, Br) block
        return PreparedQueries(offset, raw, norms, to_compute(raw, self.spec).mul_(-2))

    def candidates(self, q: PreparedQueries, r: PreparedBlock, c: int, exclude_self: bool,
                   cap: int | None = None) -> Candidates:
        """The c best rows of block ``r`` per query (``cap``: unused, nothing is recomputed here)."""
        rc, rn = r.handle
        approx = cross(q.handle, rc, self.spec).add_(rn.unsqueeze(0))  # ‖r‖² − 2 q·r (‖q‖² added to the candidates)
        if exclude_self:
            _mask_self(approx, q.offset, r.offset)
        vals, local = torch.topk(approx, c, dim=1, largest=False, sorted=False)
        slack = self._slack(q.raw.shape[1])  # fp32 kinds: scores are lower bounds (class docstring)
        vals = vals.to(torch.float64) + (q.norms.to(torch.float64) * (1.0 - slack)).unsqueeze(1)
        finite = torch.where(torch.isfinite(vals), vals, torch.full_like(vals, -np.inf))
        cutoff = finite.amax(1)
        return Candidates(local, vals, cutoff, torch.zeros(vals.shape[0], dtype=torch.float64, device=vals.device))


class TorchInt8Backend(TorchGemmBackend):
    """The ``torch`` backend with the exact int8 GEMM (``spec.kind == "int8"``, :mod:`.compute`).

    The operands are the pixels shifted by −128, so the squared distance is
    ‖q'‖² + ‖r'‖² − 2·q'·r' with the shifted norms; ‖r'‖² − 2·q'·r' is formed exactly, in int32 for
    images of at most :data:`.compute.INT8_MAX_DIM` values and in int64 above
    (:func:`.compute.int8_acc_dtype`; the cross term itself is exact for any D, :func:`.compute.int8_dots`),
    and ranked there. Candidates' distances are exact: no re-ranking (so nothing is ever gathered
    from the shifted ``rows``), margin 0; ties at the k-th distance fall back to the exact block
    search, as for float64.

    On CUDA, for blocks that give each query at least :data:`FUSED_KEPT_PER_CANDIDATE` kept scores
    per candidate, the product and the selection run fused in one Triton kernel (:mod:`.knn_fused`):
    no (queries x block) matrix is written. The few queries whose kept scores cannot vouch for their
    c best (:func:`.knn_fused.select`) are recomputed with the unfused product, so the candidates
    and their cutoff are the same as the unfused path's. ``fused``: None decides by :func:`.knn_fused.available` and a probe of the kernel
    on the device; True forces it (also on the CPU, where only Triton's interpreter runs it: tests);
    False never uses it. ``recomputed_rows`` counts the queries recomputed by the searches that
    used this backend (a diagnostic, added to by :mod:`.knn` as each query block's results come back).
    """

    def __init__(self, spec: ComputeSpec, fused: bool | None = None,
                 fused_config: knn_fused.FusedConfig = knn_fused.DEFAULT_CONFIG):
        super().__init__(spec)
        self.fused = fused
        self.fused_config = fused_config
        self.recomputed_rows = 0

    def gemm_norms(self, raw: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """‖r − 128‖², the shifted operand's norms (at most 16,384·D; int32 in the handle up to
        :data:`.compute.INT8_MAX_DIM` values, int64 above)."""
        return shifted_sq_norms(raw, norms)

    def acc_dtype(self, dim: int) -> torch.dtype:
        return int8_acc_dtype(dim)

    def prepare_queries(self, offset: int, raw: torch.Tensor) -> PreparedQueries:
        raw = raw.to(self.device, non_blocking=raw.is_pinned())  # asynchronous from pinned blocks (.prefetch)
        norms = sq_norms(raw)
        return PreparedQueries(offset, raw, norms, (to_compute(raw, self.spec), self.gemm_norms(raw, norms)))

    def uses_fused(self, n: int, dim: int, c: int) -> bool:
        """Whether a block of ``n`` rows of ``dim`` values, ``c`` candidates, goes through the fused kernel."""
        cfg = self.fused_config
        if self.fused is False or dim > INT8_MAX_DIM:
            return False
        if -(-n // cfg.block_n) * cfg.keep < FUSED_KEPT_PER_CANDIDATE * c:
            return False  # a small block: many queries would be recomputed, and the product is cheap
        if self.fused is None:
            self.fused = knn_fused.available(self.device) and _fused_probe(self.device, cfg)
        return self.fused

    def candidates(self, q: PreparedQueries, r: PreparedBlock, c: int, exclude_self: bool,
                   cap: int | None = None) -> Candidates:
        """The c best rows of block ``r`` per query, exactly scored.

        With the fused kernel, the queries :func:`.knn_fused.select` marks incomplete get the unfused
        product's candidates, listed by :func:`static_rows`: as many as need it, counted on the host
        (``cap`` None), or ``cap`` rows without any host wait, all recomputed (``overflow`` in the
        result says whether more needed it). ``recomputed`` counts them either way.
        """
        q_op, q_norms = q.handle
        keys = self._fused_keys(q, r, c, exclude_self) if self.uses_fused(r.raw.shape[0], q.raw.shape[1], c) else None
        recomputed, overflow = None, None
        if keys is not None:
            scores, local, incomplete = knn_fused.select(keys, c)
            listed = int(incomplete.sum()) if cap is None else cap  # the waiting way reads the count back
            rows, count = static_rows(incomplete, listed)
            if rows.numel():
                again, again_local = self._gemm_topk(q_op[rows], rows + q.offset, r, c, exclude_self)
                redo = incomplete[rows].unsqueeze(1)
                scores[rows] = torch.where(redo, again.to(scores.dtype), scores[rows])
                local[rows] = torch.where(redo, again_local, local[rows])
            recomputed, overflow = (listed, None) if cap is None else (count, count > rows.shape[0])
            excluded = scores == knn_fused.EXCLUDED
            local = torch.where(excluded, torch.zeros_like(local), local)  # padding columns lie past the block
        else:
            global_rows = torch.arange(q.offset, q.offset + q.raw.shape[0], device=q_op.device) if exclude_self else None
            scores, local = self._gemm_topk(q_op, global_rows, r, c, exclude_self)
            excluded = scores == torch.iinfo(scores.dtype).max
        vals = scores.to(torch.float64) + q_norms.to(torch.float64).unsqueeze(1)
        vals.masked_fill_(excluded, np.inf)
        finite = torch.where(excluded, torch.full_like(vals, -np.inf), vals)
        return Candidates(local, vals, finite.amax(1), torch.zeros(vals.shape[0], dtype=torch.float64, device=vals.device),
                          recomputed, overflow)

    def _fused_keys(self, q: PreparedQueries, r: PreparedBlock, c: int, exclude_self: bool) -> torch.Tensor | None:
        """The fused kernel's keys for this block (:func:`.knn_fused.tile_keys`), or None, with a
        warning and the fusion off from here on, where the kernel fails at these sizes although it
        passed the probe (the search goes on unfused; running out of memory is raised)."""
        rc, rn = r.handle
        try:
            return knn_fused.tile_keys(q.handle[0], rc, rn, q_offset=q.offset, r_offset=r.offset,
                                       exclude_self=exclude_self, config=self.fused_config)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a compilation or launch failure of this specialisation
            warnings.warn(f"the fused kNN kernel failed ({exc}); the search goes on with the unfused product",
                          RuntimeWarning, stacklevel=4)
            self.fused = False
            return None

    def _gemm_topk(self, q_op: torch.Tensor, q_global: torch.Tensor | None, r: PreparedBlock, c: int,
                   exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The unfused product: scores ‖r'‖² − 2 q'·r' (exact, rn's dtype) of the c smallest rows of
        ``r`` per query and their local rows; a query's own row (global ids ``q_global``) scores the
        dtype's maximum."""
        rc, rn = r.handle
        dots = cross(q_op, rc, self.spec)  # exact: int32, or int64 for D > INT8_CROSS_MAX_DIM
        if dots.dtype != rn.dtype:
            dots = dots.to(rn.dtype)
        approx = torch.add(rn.unsqueeze(0), dots, alpha=-2)  # ‖r'‖² − 2 q'·r', exact in rn's dtype
        if exclude_self:
            mask_rows(approx, q_global, r.offset, torch.iinfo(approx.dtype).max)  # above every real value (≤ 49,152·D)
        vals, local = torch.topk(approx, c, dim=1, largest=False, sorted=False)
        return vals, local


#: Kept scores per query and candidate a block must give before the fused kernel is used
#: (:meth:`TorchInt8Backend.uses_fused`): 4·62 = 248 for the paper's k = 50 (c = 62), i.e. blocks of at
#: least 62 tiles of 128 rows (7,936) with 4 kept per tile. Fewer, and a tile more often holds all
#: its kept scores among the c best, which sends the query to the unfused product.
FUSED_KEPT_PER_CANDIDATE = 4


def _fused_probe(device: torch.device, config: knn_fused.FusedConfig) -> bool:
    """Whether the fused kernel compiles on ``device`` and keeps, for seeded blocks built from the
    extreme values (:func:`.compute.extreme_int8`), exactly the scores and columns of the unfused
    product (compared in int64): once with rows a multiple of ``block_k`` long and once not (the
    kernel's two loops), each with a ragged last tile."""
    gen = torch.Generator().manual_seed(0)
    for width in (4 * config.block_k, 4 * config.block_k + 8):
        q = extreme_int8(70, width, gen).to(device)
        r = extreme_int8(3 * config.block_n + 5, width, gen)
        r[config.block_n + 1] = -128  # beside rows 0-2: the largest and most negative products in a second tile
        r = r.to(device)
        rn = (r.to(torch.int64) ** 2).sum(1)
        try:
            keys = knn_fused.tile_keys(q, r, rn.to(torch.int32), config=config)
        except Exception as exc:  # a Triton or driver without this kernel: the unfused product is used
            warnings.warn(f"the fused kNN kernel is not used on {device}: {exc}", RuntimeWarning, stacklevel=3)
            return False
        scores = rn.unsqueeze(0) - 2 * (q.to(torch.float64) @ r.to(torch.float64).T).to(torch.int64)
        want = knn_fused.reference_keys(scores, config.block_n, config.keep)
        real = (want >> 32) < knn_fused.EXCLUDED  # padding keys: compared by score only
        if not (torch.equal(keys[real], want[real]) and bool(((keys[~real] >> 32) == knn_fused.EXCLUDED).all())):
            warnings.warn(f"the fused kNN kernel gave wrong scores on {device}; the unfused product is used",
                          RuntimeWarning, stacklevel=3)
            return False
    return True


class FaissFlatBackend:
    """``faiss.IndexFlatL2`` per reference block, on the CPU (see module docstring).

    faiss is given the pixels shifted to x − 128 (distances are unchanged by a shift, and the shifted
    norms, which its fp32 rounding is relative to, are about 4x smaller on natural images). The
    block's ``max_norm`` is the largest *shifted* norm ‖r − 128‖², for the margin
    (:func:`.compute.error_margin` with faiss's one fp32 accumulation over all D values and fp32 norms).
    """

    name = "faiss"

    def __init__(self, spec: ComputeSpec):
        try:
            import faiss  # noqa: F401
        except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
            raise DiffauditError("the faiss backend needs faiss-cpu (pip install faiss-cpu)") from exc
        # faiss-cpu computes on the CPU in fp32 whatever device was asked for.
        self.spec = ComputeSpec("float32", torch.device("cpu"))
        self.device = self.spec.device

    def operand(self, raw: torch.Tensor) -> torch.Tensor:
        """Rows for the exact re-rank: the uint8 rows themselves (faiss keeps its own copy)."""
        return raw.cpu()

    def prepare_block(self, offset: int, raw: torch.Tensor, operand: torch.Tensor | None = None) -> PreparedBlock:
        import faiss

        raw = raw.cpu()
        index = faiss.IndexFlatL2(raw.shape[1])
        index.add(_shifted_f32(raw))
        norms = sq_norms(raw)
        shifted = shifted_sq_norms(raw, norms)
        return PreparedBlock(offset, raw, norms, int(shifted.max()) if len(shifted) else 0, index)

    def prepare_queries(self, offset: int, raw: torch.Tensor) -> PreparedQueries:
        raw = raw.cpu()
        norms = sq_norms(raw)
        return PreparedQueries(offset, raw, norms, (_shifted_f32(raw), shifted_sq_norms(raw, norms)))

    def candidates(self, q: PreparedQueries, r: PreparedBlock, c: int, exclude_self: bool,
                   cap: int | None = None) -> Candidates:
        """The c best rows of block ``r`` per query by faiss's fp32 distances (``cap``: unused)."""
        n = r.raw.shape[0]
        want = min(n, c + (1 if exclude_self else 0))
        q_op, q_shifted_norms = q.handle
        dist, idx = r.handle.search(q_op, want)
        approx = torch.from_numpy(dist.astype(np.float64))
        local = torch.from_numpy(idx.astype(np.int64))
        approx[local < 0] = np.inf
        local = local.clamp_(min=0)
        if exclude_self:
            rows = torch.arange(local.shape[0]) + q.offset
            approx[(local + r.offset) == rows.unsqueeze(1)] = np.inf
            # keep the c best (faiss lists ascending; a masked self may sit anywhere)
            order = torch.sort(approx, dim=1, stable=True).indices[:, :c]
            approx, local = approx.gather(1, order), local.gather(1, order)
        finite = torch.where(torch.isfinite(approx), approx, torch.full_like(approx, -np.inf))
        cutoff = finite.amax(1)
        # faiss sums all D values in one fp32 accumulation (its norms too): no chunking to count on
        d = q.raw.shape[1]
        margin = error_margin(self.spec, d, q_shifted_norms + r.max_norm, chunk=d, fp32_norms=True)
        return Candidates(local, approx, cutoff, margin)


def _shifted_f32(raw: torch.Tensor) -> np.ndarray:
    """uint8 rows (n, D) -> float32 x − 128 (exact), C-contiguous, for faiss."""
    return np.ascontiguousarray(raw.numpy().astype(np.float32) - np.float32(128.0))


def mask_rows(approx: torch.Tensor, q_global: torch.Tensor, r_offset: int, value: int) -> None:
    """Set approx[i, j] = ``value`` where query i's global index ``q_global[i]`` is reference row
    r_offset + j (no host wait: rows whose index lies outside the block write their own value back)."""
    if approx.shape[1] == 0:
        return
    local = q_global - r_offset
    inside = ((local >= 0) & (local < approx.shape[1])).unsqueeze(1)
    col = local.clamp(0, approx.shape[1] - 1).unsqueeze(1)
    approx.scatter_(1, col, torch.where(inside, torch.full_like(col, value, dtype=approx.dtype), approx.gather(1, col)))


def _mask_self(approx: torch.Tensor, q_offset: int, r_offset: int, value: float = np.inf) -> None:
    """Set approx[i, j] = ``value`` (+inf) where query q_offset + i is reference row r_offset + j."""
    bq, br = approx.shape
    lo, hi = max(q_offset, r_offset), min(q_offset + bq, r_offset + br)
    if lo < hi:
        i = torch.arange(lo - q_offset, hi - q_offset, device=approx.device)
        j = torch.arange(lo - r_offset, hi - r_offset, device=approx.device)
        approx[i, j] = value


def _torch_backend(spec: ComputeSpec) -> TorchGemmBackend:
    return TorchInt8Backend(spec) if spec.kind == "int8" else TorchGemmBackend(spec)


KNN_BACKENDS: dict[str, Callable[[ComputeSpec], Any]] = {
    "torch": _torch_backend,
    "faiss": FaissFlatBackend,
}


def get_backend(name: str, spec: ComputeSpec):
    """The backend registered as ``name``; :class:`DiffauditError` listing the choices otherwise."""
    try:
        factory = KNN_BACKENDS[name]
    except KeyError:
        raise DiffauditError(f"unknown nearest-neighbour backend {name!r}; choose one of: {', '.join(sorted(KNN_BACKENDS))}") from None
    return factory(spec)
