"""The resumable kNN search saves each chunk in a background thread while it searches the next
(:func:`diffaudit.attacks.extraction.knn_cache.iter_cached_knn`)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from diffaudit.attacks.extraction import knn_cache
from diffaudit.attacks.extraction.knn_cache import chunk_path, iter_cached_knn
from diffaudit.core.errors import DiffauditError


def _data(n_queries: int = 90, n_ref: int = 120):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n_queries, 4, 4, 3), dtype=np.uint8),
            rng.integers(0, 256, (n_ref, 4, 4, 3), dtype=np.uint8))


def test_a_chunk_is_saved_while_the_next_is_searched(tmp_path, monkeypatch):
    """The save of chunk 0 waits until the search of chunk 1 has begun (a query block past it came
    out): saved in the calling thread, it would wait in vain (and the search would never begin)."""
    q, r = _data()
    next_search_began = threading.Event()
    saver_threads = []
    search, save = knn_cache.iter_knn, knn_cache._save_chunk

    def spy_search(*a, **kw):
        for off, part in search(*a, **kw):
            if off > 0:
                next_search_began.set()
            yield off, part

    def slow_save(path, res, fault_name):
        saver_threads.append(threading.current_thread().name)
        if not saver_threads[1:]:  # the first chunk's save
            assert next_search_began.wait(20), "the next chunk was not searched while this one was saved"
        save(path, res, fault_name)

    monkeypatch.setattr(knn_cache, "iter_knn", spy_search)
    monkeypatch.setattr(knn_cache, "_save_chunk", slow_save)
    got = list(iter_cached_knn(q, r, 3, tmp_path, chunk=30, device="cpu", query_block=30))
    assert [lo for lo, _ in got] == [0, 30, 60]
    assert len(saver_threads) == 3 and all(t.startswith("diffaudit-knn-save") for t in saver_threads)
    for lo, res in got:  # every chunk on disk when the iteration ends, and read back as computed
        again = knn_cache._load_chunk(chunk_path(tmp_path, lo, lo + 30), 30, 3)
        assert np.array_equal(again.indices, res.indices) and np.array_equal(again.sq, res.sq)


def test_a_failed_save_is_raised_at_the_next_chunk(tmp_path, monkeypatch):
    q, r = _data()
    save = knn_cache._save_chunk

    def failing_save(path, res, fault_name):
        if path == chunk_path(tmp_path, 0, 30):
            raise DiffauditError(f"{path}: no space left on device")
        save(path, res, fault_name)

    monkeypatch.setattr(knn_cache, "_save_chunk", failing_save)
    seen = []
    with pytest.raises(DiffauditError, match="no space left"):
        for lo, _ in iter_cached_knn(q, r, 3, tmp_path, chunk=30, device="cpu"):
            seen.append(lo)
    assert seen == [0]  # chunk 1 was searched, then its submission met chunk 0's failure
    assert not chunk_path(tmp_path, 0, 30).exists() and not chunk_path(tmp_path, 30, 60).exists()


def test_a_failed_last_save_is_raised_at_the_end(tmp_path, monkeypatch):
    q, r = _data()
    monkeypatch.setattr(knn_cache, "_save_chunk", lambda path, res, name: (_ for _ in ()).throw(
        DiffauditError(f"{path}: read-only file system")))
    with pytest.raises(DiffauditError, match="read-only"):
        list(iter_cached_knn(q[:30], r, 3, tmp_path, chunk=30, device="cpu"))


def test_stopping_early_still_leaves_the_chunks_handed_out_on_disk(tmp_path):
    q, r = _data()
    chunks = iter_cached_knn(q, r, 3, tmp_path, chunk=30, device="cpu")
    lo, first = next(chunks)
    chunks.close()
    saved = knn_cache._load_chunk(chunk_path(tmp_path, 0, 30), 30, 3)
    assert lo == 0 and saved is not None and np.array_equal(saved.indices, first.indices)
    assert not chunk_path(tmp_path, 30, 60).exists()
