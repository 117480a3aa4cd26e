"""Reading query blocks ahead (distances.prefetch), on the CPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.distances import knn, knn_search
from diffaudit.distances.prefetch import prefetch


def _blocks(n, fail_at=None, log=None):
    for i in range(n):
        if i == fail_at:
            raise DiffauditError(f"block {i} is unreadable")
        if log is not None:
            log.append(i)
        yield i * 4, torch.full((4, 3), i, dtype=torch.uint8)


def _reader_threads():
    return [t for t in threading.enumerate() if t.name == "diffaudit-prefetch"]


@pytest.mark.parametrize("depth", [1, 3])
def test_blocks_come_out_in_order_and_unchanged(depth):
    got = list(prefetch(_blocks(7), "cpu", depth=depth, thread=True))
    assert [off for off, _ in got] == [4 * i for i in range(7)]
    assert all(torch.equal(t, torch.full((4, 3), i, dtype=torch.uint8)) for i, (_, t) in enumerate(got))
    assert not _reader_threads()


def test_without_a_thread_blocks_pass_through():
    src = list(_blocks(3))
    got = list(prefetch(iter(src), "cpu"))  # the CPU default: no thread
    assert all(a[1] is b[1] for a, b in zip(src, got))


def test_a_read_error_is_raised_where_its_block_would_come():
    it = prefetch(_blocks(5, fail_at=3), "cpu", thread=True)
    assert [next(it)[0] for _ in range(3)] == [0, 4, 8]
    with pytest.raises(DiffauditError, match="block 3 is unreadable"):
        next(it)
    assert not _reader_threads()


def test_closing_early_stops_the_reader_within_a_block_or_two():
    log: list[int] = []
    it = prefetch(_blocks(1000, log=log), "cpu", depth=1, thread=True)
    next(it)
    it.close()
    assert not _reader_threads()
    assert len(log) <= 3  # the block handed out, the one queued, the one being read


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(_blocks(1), "cpu", depth=0, thread=True))


def test_search_with_blocks_read_ahead_equals_the_search_without(monkeypatch):
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (700, 5, 5, 3), dtype=np.uint8)
    q = rng.integers(0, 256, (500, 5, 5, 3), dtype=np.uint8)
    plain = knn_search(q, ref, 7, device="cpu", query_block=64)
    used = []

    def threaded(blocks, device, **kw):
        used.append(device)
        return prefetch(blocks, device, thread=True)

    monkeypatch.setattr(knn, "prefetch", threaded)
    ahead = knn_search(q, ref, 7, device="cpu", query_block=64)
    assert used and np.array_equal(plain.indices, ahead.indices) and np.array_equal(plain.sq, ahead.sq)
