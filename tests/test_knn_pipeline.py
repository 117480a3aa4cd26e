"""The kNN search without host waits inside a query block, one block ahead of its results
(:class:`diffaudit.distances.knn._Caps`, :func:`diffaudit.distances.knn_backends.static_rows`).

On the CPU nothing waits on a device, so these tests check what would: every Python-level read of a
tensor's values back to the host (``bool()``, ``nonzero``, ``.cpu()``, boolean-mask indexing...) made
by diffaudit's own code inside a block's search, recorded with a torch function mode. The ``gpu``
test checks the same with CUDA's own sync detector.
"""

from __future__ import annotations

import collections
import os
import traceback

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from diffaudit.distances import knn, knn_fused
from diffaudit.distances.compute import resolve_compute
from diffaudit.distances.knn import iter_knn, knn_search, prepare_reference
from diffaudit.distances.knn_backends import TorchInt8Backend, mask_rows, static_rows

#: Tiles small enough for Triton's interpreter (as in test_knn_fused.py).
SMALL = knn_fused.FusedConfig(block_m=16, block_n=16, block_k=32, group_m=2, keep=2, num_warps=1, num_stages=1)

#: Tensor methods that read values back to the host (on CUDA: wait for the device).
_READS = {"__bool__", "item", "nonzero", "tolist", "cpu", "numpy", "__int__", "__index__", "__float__",
          "unique", "masked_select", "argwhere"}


class HostReads(TorchFunctionMode):
    """Records reads of tensor values back to the host made directly by diffaudit's code (not by
    libraries it calls, e.g. Triton's interpreter), as (method, file, function) → count."""

    def __init__(self):
        super().__init__()
        self.found: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        read = name in _READS
        if name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            read = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if read:
            caller = [f for f in traceback.extract_stack() if f"{os.sep}torch{os.sep}" not in f.filename][-2]
            if f"{os.sep}diffaudit{os.sep}" in caller.filename:
                self.found[(name, os.path.basename(caller.filename), caller.name)] += 1
        return func(*args, **(kwargs or {}))


def record_caps(monkeypatch) -> list:
    """Per call of the resident block search from here on: the caps it was given as (incomplete,
    fallback), or None for a search that waits on its counts (the redo of an overflowed block)."""
    calls: list = []
    search = knn._search_resident

    def spy(*a, **kw):
        caps = a[9] if len(a) > 9 else kw.get("caps")
        calls.append(None if caps is None else (caps.incomplete, caps.fallback))
        return search(*a, **kw)

    monkeypatch.setattr(knn, "_search_resident", spy)
    return calls


def _int8_exact_here() -> bool:
    return resolve_compute("auto", torch.device("cpu"), dim=48, allow_int8=True).kind == "int8"


def test_host_reads_sees_the_waiting_search_reading_back():
    """The detector itself: the search without caps reads its masks back (what the caps remove)."""
    rng = np.random.default_rng(0)
    r = rng.integers(0, 256, (300, 48), dtype=np.uint8)
    ref = prepare_reference(r, device="cpu", compute="float64", ref_block=100)
    q = ref.backend.prepare_queries(0, torch.from_numpy(r[:40]))
    with HostReads() as reads:
        knn._search_resident(ref.backend, q, ref.blocks, ref.raw, ref.rows, ref.norms, 5, 13, True)
    assert reads.found[("__bool__", "knn.py", "_search_resident")] == 1


@pytest.mark.parametrize("compute,fused,exclude_self", [
    ("int8", True, False), ("int8", True, True), ("int8", False, True), ("float32", None, True), ("float64", None, False),
])
def test_search_with_caps_reads_nothing_back_and_equals_the_waiting_search(compute, fused, exclude_self):
    """A block's search with caps makes no host read (fused kernel and its recomputed queries, the
    exact fallback, self-exclusion, the fp32 re-rank) and finds exactly what the waiting search finds."""
    if compute == "int8" and not _int8_exact_here():
        pytest.skip("this CPU's int8 GEMM is not exact: the search never uses int8 here")
    rng = np.random.default_rng(1)
    r = rng.integers(0, 256, (480, 48), dtype=np.uint8)
    r[200:210] = r[5]  # ten copies of row 5: ties at the k-th distance send queries to the exact fallback
    block = 480 if fused else 160
    ref = prepare_reference(r, device="cpu", compute=compute, ref_block=block)
    if fused is not None:
        ref.backend.fused, ref.backend.fused_config = fused, SMALL
    be = ref.backend
    with HostReads() as reads:
        q = be.prepare_queries(0, torch.from_numpy(r[:64].copy()))
        got = knn._search_resident(be, q, ref.blocks, ref.raw, ref.rows, ref.norms, 4, 8, exclude_self, knn._Caps())
    assert not reads.found, dict(reads.found)
    want = knn._search_resident(be, q, ref.blocks, ref.raw, ref.rows, ref.norms, 4, 8, exclude_self)
    assert torch.equal(got.sq, want.sq) and torch.equal(got.idx, want.idx)
    assert int(got.fallback) == want.fallback >= 1 and not bool(got.overflow)
    if fused:
        assert int(got.recomputed) == want.recomputed >= 1
    else:
        assert got.recomputed is None and want.recomputed is None


def test_static_rows_lists_masked_rows_first_and_counts_them():
    mask = torch.tensor([False, True, False, True, True, False])
    rows, count = static_rows(mask, 4)
    assert rows.tolist()[:3] == [1, 3, 4] and len(set(rows.tolist())) == 4 and not bool(mask[rows[3]])
    assert int(count) == 3
    rows, count = static_rows(mask, 2)  # too few: the count says so
    assert rows.tolist() == [1, 3] and int(count) == 3
    rows, count = static_rows(torch.zeros(3, dtype=torch.bool), 8)
    assert sorted(rows.tolist()) == [0, 1, 2] and int(count) == 0


def test_mask_rows_sets_only_rows_whose_index_lies_in_the_block():
    approx = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    mask_rows(approx, torch.tensor([12, 9, 14]), 10, -1)  # row 0 → column 2, row 1 outside, row 2 outside
    assert approx.tolist() == [[0, 1, -1, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    empty = torch.zeros((2, 0), dtype=torch.int64)
    mask_rows(empty, torch.tensor([0, 1]), 0, -1)
    assert empty.shape == (2, 0)


def test_caps_grow_to_twice_the_need_as_a_power_of_two():
    caps = knn._Caps()
    assert (caps.incomplete, caps.fallback) == (knn._CAP_INCOMPLETE, knn._CAP_FALLBACK)
    caps.fit(100, 5)
    assert (caps.incomplete, caps.fallback) == (256, 16)
    caps.fit(0, 0)
    assert (caps.incomplete, caps.fallback) == (128, knn._CAP_FALLBACK)
    caps.fit(0, 0)
    assert (caps.incomplete, caps.fallback) == (knn._CAP_INCOMPLETE, knn._CAP_FALLBACK)
    assert [knn._pow2(n) for n in (0, 1, 2, 3, 64, 65)] == [1, 1, 2, 4, 64, 128]


def test_caps_hold_needs_that_alternate():
    """Needs of 100 and 10 rows per block in turn (blocks of mixed difficulty): once grown, the caps
    cover every later block, so none is searched again (with caps that fell back to the need of
    the last block, every large one would overflow)."""
    caps = knn._Caps()
    needs = [(100, 20), (10, 1)] * 4
    caps.fit(*needs[0])
    overflows = 0
    for need_incomplete, need_fallback in needs[1:]:
        overflows += need_incomplete > caps.incomplete or need_fallback > caps.fallback
        caps.fit(need_incomplete, need_fallback)
    assert overflows == 0
    assert caps.incomplete <= 256 and caps.fallback <= 64


@pytest.mark.skipif(not _int8_exact_here(), reason="this CPU's int8 GEMM is not exact: the search never uses int8 here")
def test_pipelined_search_overflowing_its_caps_equals_the_waiting_search(monkeypatch):
    """Caps of one row: blocks needing more are searched again the waiting way, caps then grow, and
    the result, its fallback count and the recomputed queries equal the waiting search's."""
    monkeypatch.setattr(knn, "_CAP_INCOMPLETE", 1)
    monkeypatch.setattr(knn, "_CAP_FALLBACK", 1)
    rng = np.random.default_rng(2)
    r = rng.integers(0, 256, (400, 4, 4, 3), dtype=np.uint8)
    r[100:116] = r[3]  # 17 copies, more than the 11 candidates: their ties reach the exact fallback
    q = np.concatenate([r[:120], rng.integers(0, 256, (60, 4, 4, 3), dtype=np.uint8)])
    results, calls = {}, record_caps(monkeypatch)
    for pipeline in (True, False):
        ref = prepare_reference(r, device="cpu", compute="int8")
        ref.backend.fused, ref.backend.fused_config = True, SMALL
        results[pipeline] = (knn_search(q, ref, 3, query_block=45, exclude_self=False, pipeline=pipeline), ref.backend)
    (fast, be_fast), (slow, be_slow) = results[True], results[False]
    assert np.array_equal(fast.indices, slow.indices) and np.array_equal(fast.sq, slow.sq)
    assert fast.fallback_rows == slow.fallback_rows >= 1
    assert fast.stats["fused_recomputed_rows"] == slow.stats["fused_recomputed_rows"] == be_fast.recomputed_rows >= 1
    assert be_slow.recomputed_rows == be_fast.recomputed_rows
    assert fast.stats["pipeline_redone_blocks"] >= 1 and "pipeline_redone_blocks" not in slow.stats
    redone = [caps is None for caps in calls]
    fast_calls = redone[:len(redone) - 4]  # the waiting search's 4 blocks come last
    assert fast_calls.count(False) == 4 and 1 <= fast_calls.count(True) < 4  # some redone, caps grew
    assert fast.stats["pipeline_redone_blocks"] == fast_calls.count(True)


@pytest.mark.skipif(not _int8_exact_here(), reason="this CPU's int8 GEMM is not exact: the search never uses int8 here")
def test_a_prepared_reference_keeps_the_caps_its_searches_learned(monkeypatch):
    """Searches of successive chunks against one prepared reference (as the resumable verification
    runs them): the first learns caps from its blocks' needs, and the next starts from them rather
    than from the defaults."""
    monkeypatch.setattr(knn, "_CAP_INCOMPLETE", 1)
    monkeypatch.setattr(knn, "_CAP_FALLBACK", 1)
    rng = np.random.default_rng(7)
    r = rng.integers(0, 256, (400, 4, 4, 3), dtype=np.uint8)
    r[100:116] = r[3]
    ref = prepare_reference(r, device="cpu", compute="int8")
    ref.backend.fused, ref.backend.fused_config = True, SMALL
    caps_used = record_caps(monkeypatch)
    first = knn_search(r[:120], ref, 3, query_block=40, pipeline=True)
    assert caps_used[0] == (1, 1) and None in caps_used  # a block needed more than one row: searched again
    learned = (ref.caps.incomplete, ref.caps.fallback)
    assert learned != (1, 1)
    caps_used.clear()
    second = knn_search(r[:120], ref, 3, query_block=40, pipeline=True)
    assert caps_used[0] == learned
    assert np.array_equal(first.indices, second.indices) and np.array_equal(first.sq, second.sq)


@pytest.mark.skipif(not _int8_exact_here(), reason="this CPU's int8 GEMM is not exact: the search never uses int8 here")
def test_pipelined_search_excluding_self_equals_the_waiting_one_and_brute_force():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (500, 3, 3, 3), dtype=np.uint8)
    x[300] = x[10]
    got = {p: knn_search(x, x, 5, device="cpu", compute="int8", exclude_self=True, query_block=64, pipeline=p)
           for p in (True, False)}
    assert np.array_equal(got[True].indices, got[False].indices) and np.array_equal(got[True].sq, got[False].sq)
    flat = x.reshape(len(x), -1).astype(np.int64)
    d = (flat ** 2).sum(1)[:, None] + (flat ** 2).sum(1)[None] - 2 * flat @ flat.T
    np.fill_diagonal(d, np.iinfo(np.int64).max)
    want = np.sort(d, axis=1, kind="stable")[:, :5]
    assert np.array_equal(got[True].sq, want) and got[True].indices[10, 0] == 300


def test_pipelined_search_hands_out_searched_blocks_before_a_reading_error():
    """A query stream failing at its third block: the two blocks searched before are yielded first."""
    rng = np.random.default_rng(4)
    r = rng.integers(0, 256, (200, 12), dtype=np.uint8)

    def blocks():
        yield r[:50]
        yield r[50:100]
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for off, res in iter_knn(blocks(), r, 2, device="cpu", query_block=50, pipeline=True):
            seen.append((off, len(res.indices)))
    assert seen == [(0, 50), (50, 50)]


def test_pipelined_search_reports_progress_per_block_in_order():
    rng = np.random.default_rng(5)
    r = rng.integers(0, 256, (300, 12), dtype=np.uint8)
    done: list[int] = []
    offsets = [off for off, _ in iter_knn(r, r, 3, device="cpu", query_block=128, pipeline=True, progress=done.append)]
    assert offsets == [0, 128, 256] and done == [128, 128, 44]


@pytest.mark.gpu
def test_cuda_block_search_never_waits_on_the_gpu():
    """On CUDA, a resident block's search with caps and the start of its read-back run under
    ``torch.cuda.set_sync_debug_mode("error")``: the fused kernel, its recomputed queries and the
    certificate's fallback (70 copies of one image tie at the k-th distance for each other and for
    the queries near them, past the 62 candidates; 88 queries on the CPU). The pipelined search
    (the default there) equals the waiting one over several query blocks."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = np.random.default_rng(6)
    r = rng.integers(0, 256, (20_000, 32, 32, 3), dtype=np.uint8)
    r[1000:1070] = r[7]
    ref = prepare_reference(r, device="cuda")
    be = ref.backend
    assert isinstance(be, TorchInt8Backend)
    q = be.prepare_queries(0, torch.from_numpy(r[:4096].reshape(4096, -1).copy()).cuda())

    def search():
        return knn._search_resident(be, q, ref.blocks, ref.raw, ref.rows, ref.norms, 50, 62, True, knn._Caps(4096, 128))

    knn._Readback(search()).host()  # first use: the kernel's probe and compilation, pinned buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        back = knn._Readback(search())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    sq, idx, (too_few, overflow, fallback, recomputed, _) = back.host()
    assert be.fused and not too_few and not overflow and 71 <= fallback <= 128 and recomputed >= 1
    fast = knn_search(r[:4096], ref, 50, exclude_self=True, query_block=1024)
    slow = knn_search(r[:4096], ref, 50, exclude_self=True, query_block=1024, pipeline=False)
    assert np.array_equal(fast.indices, slow.indices) and np.array_equal(fast.sq, slow.sq)
    assert np.array_equal(fast.sq, sq) and np.array_equal(fast.indices, idx)
    assert fast.fallback_rows == slow.fallback_rows == fallback
    assert fast.stats["fused_recomputed_rows"] == slow.stats["fused_recomputed_rows"] >= 1
