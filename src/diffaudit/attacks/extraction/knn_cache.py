"""Resumable nearest-neighbour search: one atomic ``.npz`` per chunk of queries.

A command that is killed keeps every finished chunk; a re-run loads them and computes only the rest.
Chunk files are named by their query range, so a partial file is never read as complete (atomic
rename) and chunks computed on another device are reused (the search is exact, hence identical).
:func:`iter_cached_knn` saves each chunk in a background thread while it searches the next one: the
file of 16,384 queries' 50 neighbours took 30 ms to write and flush on a 2-core machine, and
an H100 searches those queries among CIFAR-10's 50,000 images in about 34 ms (2.16 s per 2^20). A
chunk handed out may therefore not be on disk yet; it is searched again if the process dies first.
Callers must not change a chunk's arrays (they are being written).

Consecutive chunks to compute are searched in one call (:func:`_search_run`), cut into chunks as the
results come out: on CUDA the search stays one query block ahead across chunk boundaries, and a
reference too large to cache is read once per group of queries the search's memory holds
(:func:`~diffaudit.distances.knn.knn_search`'s ``query_group_bytes``), not once per chunk.
"""

from __future__ import annotations

import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.faults import fault_point
from diffaudit.core.io import save_npz_atomic
from diffaudit.distances.knn import KnnResult, iter_knn, knn_search, merged_stats, prepare_reference_if_fits

#: Queries per cached chunk, at most.
DEFAULT_CHUNK = 16384
#: Bytes of query pixels per chunk, at most (bounds memory for large images: 682 rows at 512x512x3).
CHUNK_BYTES = 512 << 20


def _load_chunk(path: Path, n: int, k: int) -> KnnResult | None:
    """The cached chunk at ``path`` (``n`` queries, ``k`` neighbours), or None when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            idx, sq, dist, dim = z["indices"], z["sq"], z["distances"], int(z["dim"])
    except (OSError, ValueError, KeyError):
        return None  # unreadable: recompute (atomic writes make this a foreign file, not ours)
    if idx.shape != (n, k) or sq.shape != (n, k):
        return None
    return KnnResult(dist, idx, sq, dim)


def chunk_ranges(queries: Any, chunk: int = DEFAULT_CHUNK) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` query ranges of the cached chunks: at most ``chunk`` rows and
    :data:`CHUNK_BYTES` bytes of query pixels each (the same for every process that asks)."""
    n = len(queries)
    if n == 0:
        raise DiffauditError("no queries: the sample set is empty")
    row_bytes = int(np.prod(queries.shape[1:])) if getattr(queries, "shape", None) is not None else 1
    chunk = max(1, min(chunk, CHUNK_BYTES // max(1, row_bytes)))
    return [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]


def chunk_path(cache_dir: str | Path, lo: int, hi: int) -> Path:
    """Where the chunk of queries ``lo:hi`` is cached."""
    return Path(cache_dir) / f"knn-{lo:010d}-{hi:010d}.npz"


def pending_chunks(queries: Any, k: int, cache_dir: str | Path, chunk: int = DEFAULT_CHUNK) -> list[tuple[int, int]]:
    """The query ranges of :func:`chunk_ranges` whose cached ``k``-NN file is missing or unreadable."""
    return [(lo, hi) for lo, hi in chunk_ranges(queries, chunk) if not is_cached(cache_dir, lo, hi, k)]


def split_chunks(chunks: list[tuple[int, int]], rows: int) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Each chunk ``(lo, hi)`` cut into spans of at most ``rows`` queries (parts small enough to share
    among workers); a chunk of at most ``rows`` is its own one span."""
    return {(lo, hi): [(a, min(hi, a + rows)) for a in range(lo, hi, max(1, rows))] for lo, hi in chunks}


def merge_spans(cache_dir: str | Path, chunk: tuple[int, int], spans: list[tuple[int, int]], k: int) -> None:
    """Write the chunk file of ``chunk`` from the files of its ``spans`` (cached like chunks, by
    :func:`compute_chunk`), then remove them. Each query's neighbours do not depend on the others
    searched beside it (the search is exact), so the file is the one a search of the whole chunk
    writes. Raises when a span's file is missing."""
    if spans == [chunk]:
        return
    parts = [_load_chunk(chunk_path(cache_dir, a, b), b - a, k) for a, b in spans]
    if any(part is None for part in parts):
        missing = next(span for span, part in zip(spans, parts) if part is None)
        raise DiffauditError(f"{chunk_path(cache_dir, *missing)} is missing or unreadable; re-run to compute it")
    save_npz_atomic(chunk_path(cache_dir, *chunk), indices=np.concatenate([q.indices for q in parts]),
                    sq=np.concatenate([q.sq for q in parts]), distances=np.concatenate([q.distances for q in parts]),
                    dim=np.int64(parts[0].dim))
    for a, b in spans:
        chunk_path(cache_dir, a, b).unlink(missing_ok=True)


_FILE = re.compile(r"^knn-(\d{10})-(\d{10})\.npz$")


def _spans_within(cache_dir: Path, lo: int, hi: int) -> list[tuple[int, int]]:
    """The cached spans strictly inside chunk ``lo:hi`` (left by workers of a ``--ray`` run stopped
    before it merged them), in order."""
    found = (_FILE.match(f.name) for f in cache_dir.glob("knn-*.npz")) if cache_dir.is_dir() else ()
    spans = sorted((int(m.group(1)), int(m.group(2))) for m in found if m)
    return [(a, b) for a, b in spans if lo <= a < b <= hi and (a, b) != (lo, hi)]


def _from_spans(cache_dir: Path, lo: int, hi: int, k: int) -> KnnResult | None:
    """Chunk ``lo:hi`` from the spans that tile it, merged into its file (:func:`merge_spans`); None
    when they do not tile it. Spans that do not are removed (the chunk is computed whole)."""
    spans = _spans_within(cache_dir, lo, hi)
    tiles = bool(spans) and spans[0][0] == lo and spans[-1][1] == hi and all(
        b == c for (_, b), (c, _) in zip(spans, spans[1:]))
    if tiles and all(is_cached(cache_dir, a, b, k) for a, b in spans):
        merge_spans(cache_dir, (lo, hi), spans, k)
        return _load_chunk(chunk_path(cache_dir, lo, hi), hi - lo, k)
    for a, b in spans:
        chunk_path(cache_dir, a, b).unlink(missing_ok=True)
    return None


def is_cached(cache_dir: str | Path, lo: int, hi: int, k: int) -> bool:
    """Whether the ``k``-NN of queries ``lo:hi`` is cached (readable, of the right shape)."""
    return _load_chunk(chunk_path(cache_dir, lo, hi), hi - lo, k) is not None


def compute_chunk(queries: Any, prepared: Any, k: int, lo: int, hi: int, path: Path | None, *, exclude_self: bool = False,
                  fault_name: str = "knn-chunk", **knn_kwargs: Any) -> KnnResult:
    """The exact ``k``-NN of ``queries[lo:hi]`` among ``prepared`` (a reference, prepared or not),
    saved atomically to ``path`` when one is given."""
    res = knn_search(queries[lo:hi], prepared, k, exclude_self=exclude_self, query_offset=lo, **knn_kwargs)
    if path is not None:
        _save_chunk(path, res, fault_name)
    return res


def _save_chunk(path: Path, res: KnnResult, fault_name: str) -> None:
    save_npz_atomic(path, indices=res.indices, sq=res.sq, distances=res.distances, dim=np.int64(res.dim))
    fault_point(fault_name)


class _ChunkWriter:
    """Saves chunks (:func:`_save_chunk`) in one background thread, one at a time: :meth:`submit`
    first waits for the chunk before (so at most one result waits in memory, and a failure to save
    it is raised there, in order), :meth:`close` for the last."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, path: Path, res: KnnResult, fault_name: str) -> None:
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="diffaudit-knn-save")
        self._pending = self._pool.submit(_save_chunk, path, res, fault_name)

    def wait(self) -> None:
        """Wait for the chunk being saved; its failure, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, raise_failure: bool) -> None:
        """Wait for the last chunk (raising its failure only with ``raise_failure``: not over an error
        already on its way) and stop the thread."""
        try:
            if raise_failure:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()  # waits; the error already raised matters more
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _search_run(queries: Any, prepared: Any, k: int, run: list[tuple[int, int]], *, exclude_self: bool,
                **knn_kwargs: Any) -> Iterator[tuple[int, int, KnnResult]]:
    """``(lo, hi, KnnResult)`` for each chunk of ``run`` (consecutive ranges, in order), from one
    search of all their queries, read one chunk at a time; each chunk comes out as soon as the query
    blocks holding its rows have (a block may straddle two chunks). A chunk's ``fallback_rows`` and
    ``stats`` are those of the blocks that start in it."""
    chunks = deque(run)
    source = (queries[lo:hi] for lo, hi in run)
    pieces: list[tuple[int, KnnResult]] = []  # block results holding rows of chunks not yet handed out
    for off, part in iter_knn(source, prepared, k, exclude_self=exclude_self, query_offset=run[0][0], **knn_kwargs):
        pieces.append((off, part))
        while chunks and chunks[0][1] <= off + len(part.indices):
            lo, hi = chunks.popleft()
            yield lo, hi, _cut(pieces, lo, hi)


def _cut(pieces: list[tuple[int, KnnResult]], lo: int, hi: int) -> KnnResult:
    """Rows ``lo:hi`` of the block results ``pieces`` (offset, KnnResult), which cover them; the
    pieces with rows past ``hi`` are kept in ``pieces``, the others removed."""
    rows = [(p, max(lo, off) - off, min(hi, off + len(p.indices)) - off) for off, p in pieces]
    rows = [(p, a, b) for p, a, b in rows if a < b]
    starting = [p for off, p in pieces if lo <= off < hi]
    pieces[:] = [(off, p) for off, p in pieces if off + len(p.indices) > hi]
    return KnnResult(np.concatenate([p.distances[a:b] for p, a, b in rows]),
                     np.concatenate([p.indices[a:b] for p, a, b in rows]),
                     np.concatenate([p.sq[a:b] for p, a, b in rows]), rows[0][0].dim,
                     sum(p.fallback_rows for p in starting), merged_stats([p.stats for p in starting]) if starting else {})


def _may_be_cached(cache_dir: str | Path | None, lo: int, hi: int) -> bool:
    """Whether chunk ``lo:hi`` has a file, or spans, that a run may read instead of searching it."""
    if cache_dir is None:
        return False
    return chunk_path(cache_dir, lo, hi).exists() or bool(_spans_within(Path(cache_dir), lo, hi))


def prepare_reference(reference: Any, knn_kwargs: dict[str, Any]) -> Any:
    """``reference`` prepared on the search's device once, when it fits (else as given, streamed)."""
    return prepare_reference_if_fits(reference, **{a: knn_kwargs[a] for a in ("backend", "device", "compute", "ref_cache_bytes")
                                                   if a in knn_kwargs})


def iter_cached_knn(
    queries: Any,
    reference: Any,
    k: int,
    cache_dir: str | Path | None,
    *,
    chunk: int = DEFAULT_CHUNK,
    exclude_self: bool = False,
    fault_name: str = "knn-chunk",
    progress: Callable[[int], None] | None = None,
    **knn_kwargs: Any,
) -> Iterator[tuple[int, KnnResult]]:
    """(first query index, KnnResult) per chunk: :func:`~diffaudit.distances.knn.knn_search` of
    ``queries`` (a random-access uint8 array (N, ...), e.g. a memory-mapped ShardedImages) against
    ``reference`` (prepared on the device once when it fits, else streamed) in the chunks of
    :func:`chunk_ranges`, each saved to ``cache_dir/knn-<lo>-<hi>.npz`` (chunks already there, from
    an earlier run or from workers, are read instead). Each chunk is saved in a background thread
    while the next is searched (:class:`_ChunkWriter`); the last is on disk when the iteration ends,
    also when the caller stops early. Consecutive chunks to compute are searched in one call
    (:func:`_search_run`): one chunk of queries is read at a time, and the results of the query
    blocks the search holds (a group of them against a streamed reference) wait in memory until
    their chunks are complete, besides at most two chunks' results unless the caller keeps them."""
    prepared = None  # the reference, prepared on the device at the first chunk that needs computing
    writer = _ChunkWriter()
    finished = False
    ranges = chunk_ranges(queries, chunk)
    try:
        i = 0
        while i < len(ranges):
            lo, hi = ranges[i]
            path = None if cache_dir is None else chunk_path(cache_dir, lo, hi)
            res = _load_chunk(path, hi - lo, k) if path is not None else None
            if res is None and path is not None:  # a stopped --ray run may have left the chunk in spans
                res = _from_spans(Path(cache_dir), lo, hi, k)
            if res is not None:
                if progress is not None:
                    progress(hi - lo)
                yield lo, res
                i += 1
                continue
            j = i + 1  # this chunk and the following ones that have nothing cached: one search
            while j < len(ranges) and not _may_be_cached(cache_dir, *ranges[j]):
                j += 1
            if prepared is None:
                prepared = prepare_reference(reference, knn_kwargs)
            for lo, hi, res in _search_run(queries, prepared, k, ranges[i:j], exclude_self=exclude_self, **knn_kwargs):
                if cache_dir is not None:
                    writer.submit(chunk_path(cache_dir, lo, hi), res, fault_name)
                if progress is not None:
                    progress(hi - lo)
                yield lo, res
            i = j
        finished = True
    finally:
        writer.close(raise_failure=finished)


def cached_knn(queries: Any, reference: Any, k: int, cache_dir: str | Path | None, **kwargs: Any) -> KnnResult:
    """All chunks of :func:`iter_cached_knn` as one KnnResult (N, k)."""
    parts = [res for _, res in iter_cached_knn(queries, reference, k, cache_dir, **kwargs)]
    return KnnResult(
        np.concatenate([p.distances for p in parts]),
        np.concatenate([p.indices for p in parts]),
        np.concatenate([p.sq for p in parts]),
        parts[0].dim,
        sum(p.fallback_rows for p in parts),
    )
