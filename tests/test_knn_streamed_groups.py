"""A reference that is not cached is read once per group of query blocks, in blocks bounded by bytes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.distances import knn_search
from diffaudit.distances.knn import _make_backend, _stream_block_rows, iter_knn
from diffaudit.distances.knn_backends import TorchGemmBackend

QUERY_BLOCK = 32


class CountingReference:
    """A reference given as a callable (streamed): counts the passes over it and the rows of the
    blocks the search prepares from it."""

    def __init__(self, images: np.ndarray, part: int = 100):
        self.images, self.part, self.passes = images, part, 0

    def __call__(self):
        self.passes += 1
        return (self.images[lo:lo + self.part] for lo in range(0, len(self.images), self.part))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (500, 4, 4, 3), dtype=np.uint8)
    q = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    q[:30] = ref[200:230]  # exact copies
    return q, ref


def query_bytes(rows: int, dim: int = 48, compute: str = "float64") -> int:
    """Prepared bytes of ``rows`` queries: uint8 values and the GEMM operand."""
    be = _make_backend("torch", "cpu", compute, dim)
    return rows * dim * (1 + torch.empty((), dtype=be.spec.input_dtype).element_size())


@pytest.mark.parametrize("compute", ["float64", "int8", "float32"])
def test_reference_read_once_for_all_query_blocks(data, compute):
    """300 queries in ten blocks of 32: the streamed reference is read once (ten times before), and
    the result is the cached search's."""
    q, ref = data
    counted = CountingReference(ref)
    streamed = knn_search(q, counted, 7, device="cpu", compute=compute, query_block=QUERY_BLOCK, ref_block=128)
    cached = knn_search(q, ref, 7, device="cpu", compute=compute, query_block=QUERY_BLOCK, ref_block=128)
    assert counted.passes == 1
    np.testing.assert_array_equal(streamed.indices, cached.indices)
    np.testing.assert_array_equal(streamed.sq, cached.sq)
    np.testing.assert_array_equal(streamed.indices[:30, 0], np.arange(200, 230))


@pytest.mark.parametrize("blocks_per_group,passes", [(3, 4), (1, 10), (10, 1)])
def test_group_budget_sets_the_passes(data, blocks_per_group, passes):
    """A budget of three query blocks' prepared bytes: ten blocks in four groups, four passes; the
    blocks come out in order with the same neighbours whatever the grouping."""
    q, ref = data
    counted = CountingReference(ref)
    budget = query_bytes(QUERY_BLOCK * blocks_per_group)
    parts = list(iter_knn(q, counted, 5, device="cpu", compute="float64", query_block=QUERY_BLOCK,
                          query_group_bytes=budget, exclude_self=False))
    assert counted.passes == passes
    assert [off for off, _ in parts] == list(range(0, 300, QUERY_BLOCK))
    whole = knn_search(q, ref, 5, device="cpu", compute="float64")
    np.testing.assert_array_equal(np.concatenate([p.indices for _, p in parts]), whole.indices)


def test_zero_budget_reads_the_reference_per_query_block(data):
    q, ref = data
    counted = CountingReference(ref)
    res = knn_search(q, counted, 5, device="cpu", query_block=QUERY_BLOCK, query_group_bytes=0)
    assert counted.passes == 10
    np.testing.assert_array_equal(res.indices, knn_search(q, ref, 5, device="cpu").indices)


def test_groups_with_self_exclusion_and_an_uncached_array(data):
    """The reference given as an array too large for the cache (``ref_cache_bytes=0``) is streamed in
    groups; each group's query offsets still exclude their own rows."""
    _, ref = data
    res = knn_search(ref, ref, 4, device="cpu", exclude_self=True, ref_cache_bytes=0, query_block=48,
                     query_group_bytes=query_bytes(100, compute="int8"), query_offset=0)
    cached = knn_search(ref, ref, 4, device="cpu", exclude_self=True, query_block=48)
    np.testing.assert_array_equal(res.indices, cached.indices)
    assert not np.any(res.indices == np.arange(len(ref))[:, None])


def test_an_error_reading_queries_hands_out_the_group_read_before_it(data):
    """A query stream that fails at its third block: the two blocks read before it are searched (one
    pass) and handed out, then the error is raised."""
    q, ref = data
    counted = CountingReference(ref)

    def failing():
        yield q[:QUERY_BLOCK]
        yield q[QUERY_BLOCK:2 * QUERY_BLOCK]
        raise OSError("shard 3 is unreadable")

    got = []
    with pytest.raises(OSError, match="shard 3"):
        for off, part in iter_knn(failing(), counted, 5, device="cpu", query_block=QUERY_BLOCK):
            got.append((off, part.indices))
    assert [off for off, _ in got] == [0, QUERY_BLOCK]
    assert counted.passes == 1
    whole = knn_search(q[:2 * QUERY_BLOCK], ref, 5, device="cpu")
    np.testing.assert_array_equal(np.concatenate([i for _, i in got]), whole.indices)


def test_queries_of_another_size_are_refused_before_a_pass(data):
    q, ref = data
    counted = CountingReference(ref)
    with pytest.raises(DiffauditError, match="values per image"):
        knn_search(q.reshape(len(q), -1)[:, :40], counted, 5, device="cpu")


@pytest.mark.parametrize("dtype", [torch.int8, torch.bfloat16, torch.float32])
def test_stream_block_rows_bounded_by_bytes(dtype):
    """512x512x3 reference blocks prepared whole would take 65,536 x 786,432 x 2 bytes (103 GB) on
    CUDA with the defaults (int8): they are cut to the 1 GiB budget (256 MiB on the CPU), counting the
    GEMM operand's bytes; CIFAR-sized ones keep their rows where those fit."""
    spec = SimpleNamespace(input_dtype=dtype)
    cuda = SimpleNamespace(device=torch.device("cuda"), spec=spec)
    cpu = SimpleNamespace(device=torch.device("cpu"), spec=spec)
    item = 1 + torch.empty((), dtype=dtype).element_size()
    big = 512 * 512 * 3
    assert _stream_block_rows(cuda, 65536, big) == (1 << 30) // (big * item) < 1000
    assert _stream_block_rows(cpu, 8192, big) == (256 << 20) // (big * item) < 200
    assert _stream_block_rows(cuda, 65536, 3072) == min(65536, (1 << 30) // (3072 * item))
    assert _stream_block_rows(cpu, 8192, 3072) == min(8192, (256 << 20) // (3072 * item))
    assert _stream_block_rows(cpu, 8192, None) == 8192
    assert _stream_block_rows(cpu, 8192, 10**12) == 1


def test_streamed_blocks_of_large_images_stay_within_the_budget(monkeypatch):
    """End to end on the CPU with a budget of 100 KiB: 64x64x3 images (12,288 values, 24 KiB
    prepared with int8) come in blocks of at most 4 rows, and the result is the cached search's."""
    import diffaudit.distances.knn as knn

    monkeypatch.setitem(knn._STREAM_BLOCK_BYTES, "cpu", 100 << 10)
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    q = np.concatenate([ref[[5, 17]], rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)])
    seen = []
    real = TorchGemmBackend.prepare_block

    def spy(self, offset, raw, operand=None):
        seen.append(int(raw.shape[0]))
        return real(self, offset, raw, operand)

    monkeypatch.setattr(TorchGemmBackend, "prepare_block", spy)
    res = knn_search(q, [ref[:25], ref[25:]], 3, device="cpu", compute="int8")
    assert max(seen) == 4 and sum(seen) == 40
    seen.clear()
    cached = knn_search(q, ref, 3, device="cpu", compute="int8")
    np.testing.assert_array_equal(res.indices, cached.indices)
    assert res.indices[:2, 0].tolist() == [5, 17]
