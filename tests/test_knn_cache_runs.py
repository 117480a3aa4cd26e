"""The resumable kNN search computes consecutive chunks in one search, cut into chunk files as the
results come out (:func:`diffaudit.attacks.extraction.knn_cache.iter_cached_knn`): a reference too large
to cache is read once per group of queries, not once per chunk, and nothing finished is lost."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.attacks.extraction import knn_cache
from diffaudit.attacks.extraction.knn_cache import cached_knn, chunk_path, iter_cached_knn
from diffaudit.distances import knn_search


class CountingReference:
    """A reference given as a callable (never cached): counts the passes over it."""

    def __init__(self, images: np.ndarray):
        self.images, self.passes = images, 0

    def __call__(self):
        self.passes += 1
        return (self.images[lo:lo + 100] for lo in range(0, len(self.images), 100))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    ref = rng.integers(0, 256, (400, 4, 4, 3), dtype=np.uint8)
    q = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    q[::7] = ref[:43]  # exact copies among the queries
    return q, ref


def saved(folder, lo, hi, k):
    return knn_cache._load_chunk(chunk_path(folder, lo, hi), hi - lo, k)


def test_a_streamed_reference_is_read_once_for_all_chunks(data, tmp_path):
    """Five chunks of 64 queries in blocks of 32: one pass over the reference (ten before: a search
    per chunk, a pass per query block), and every chunk file holds the whole search's rows."""
    q, ref = data
    counted = CountingReference(ref)
    got = list(iter_cached_knn(q, counted, 5, tmp_path, chunk=64, device="cpu", query_block=32))
    assert counted.passes == 1
    whole = knn_search(q, ref, 5, device="cpu")
    assert [lo for lo, _ in got] == [0, 64, 128, 192, 256]
    for lo, res in got:
        hi = min(300, lo + 64)
        np.testing.assert_array_equal(res.indices, whole.indices[lo:hi])
        np.testing.assert_array_equal(saved(tmp_path, lo, hi, 5).sq, whole.sq[lo:hi])


def test_a_resumed_search_computes_the_missing_runs_only(data, tmp_path, monkeypatch):
    """Chunk 2 already on disk: chunks 0-1 and 3-4 are searched, one pass each, and chunk 2 is read."""
    q, ref = data
    first = list(iter_cached_knn(q, ref, 5, tmp_path, chunk=64, device="cpu"))
    for lo in (0, 64, 192, 256):
        chunk_path(tmp_path, lo, min(300, lo + 64)).unlink()
    runs = []
    real = knn_cache._search_run
    monkeypatch.setattr(knn_cache, "_search_run", lambda q, p, k, chunks, **kw: runs.append(list(chunks))
                        or real(q, p, k, chunks, **kw))
    counted = CountingReference(ref)
    again = list(iter_cached_knn(q, counted, 5, tmp_path, chunk=64, device="cpu", query_block=32))
    assert runs == [[(0, 64), (64, 128)], [(192, 256), (256, 300)]]
    assert counted.passes == 2
    for (lo, a), (_, b) in zip(first, again):
        np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("streamed", [False, True])
def test_query_blocks_straddling_chunks_are_cut_exactly(data, tmp_path, streamed):
    """Chunks of 50 in blocks of 32 (blocks straddle chunk boundaries), self-matches excluded: the
    chunks equal the whole search's rows, and the fallbacks add up to its count."""
    _, ref = data
    reference = CountingReference(ref) if streamed else ref
    res = cached_knn(ref, reference, 4, tmp_path, chunk=50, exclude_self=True, device="cpu", query_block=32,
                     compute="float32")
    whole = knn_search(ref, ref, 4, exclude_self=True, device="cpu", query_block=32, compute="float32")
    np.testing.assert_array_equal(res.indices, whole.indices)
    np.testing.assert_array_equal(res.distances, whole.distances)
    assert res.fallback_rows == whole.fallback_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == [chunk_path(tmp_path, lo, min(400, lo + 50)).name
                                                          for lo in range(0, 400, 50)]


class FailingQueries:
    """Queries whose read of rows 128 onwards fails (a corrupt shard)."""

    def __init__(self, images: np.ndarray):
        self.images, self.shape = images, images.shape

    def __len__(self):
        return len(self.images)

    def __getitem__(self, s):
        if s.start >= 128:
            raise OSError("shard 3 is unreadable")
        return self.images[s]


@pytest.mark.parametrize("streamed", [False, True])
def test_chunks_finished_before_a_read_error_are_saved(data, tmp_path, streamed):
    q, ref = data
    reference = CountingReference(ref) if streamed else ref
    seen = []
    with pytest.raises(OSError, match="shard 3"):
        for lo, _ in iter_cached_knn(FailingQueries(q), reference, 5, tmp_path, chunk=64, device="cpu", query_block=32):
            seen.append(lo)
    assert seen == [0, 64]
    whole = knn_search(q[:128], ref, 5, device="cpu")
    for lo in (0, 64):
        np.testing.assert_array_equal(saved(tmp_path, lo, lo + 64, 5).indices, whole.indices[lo:lo + 64])
    assert sorted(p.name for p in tmp_path.iterdir()) == [chunk_path(tmp_path, 0, 64).name, chunk_path(tmp_path, 64, 128).name]
