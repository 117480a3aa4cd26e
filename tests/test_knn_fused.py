"""The int8 kNN's fused product-and-selection kernel (:mod:`diffaudit.distances.knn_fused`).

On the CPU the kernel runs through Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py
where there is no CUDA), with small tiles so that sizes of a few hundred rows cover many tiles; the
``gpu`` tests run the compiled kernel with its default tiles on CUDA.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffaudit.distances import knn_backends, knn_fused
from diffaudit.distances.compute import INT8_MAX_DIM, ComputeSpec, resolve_compute
from diffaudit.distances.knn import default_extra, knn_search, prepare_reference
from diffaudit.distances.knn_backends import TorchInt8Backend

pytest.importorskip("triton", reason="the fused kernel is written in Triton (a test dependency)")

#: Tiles small enough for the interpreter: 16 queries x 16 reference rows, 32 values per step.
SMALL = knn_fused.FusedConfig(block_m=16, block_n=16, block_k=32, group_m=2, keep=2, num_warps=1, num_stages=1)
#: The same keeping 4 per tile: few queries are recomputed.
SMALL4 = dataclasses.replace(SMALL, keep=4)


def scores(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """int64 (M, N) ‖r'‖² − 2 q'·r' of int8 rows, in int64."""
    return (r.long() ** 2).sum(1)[None] - 2 * (q.long() @ r.long().T)


def shifted(x: np.ndarray) -> torch.Tensor:
    """uint8 images -> the int8 operand rows x − 128."""
    return torch.from_numpy(x.reshape(len(x), -1).astype(np.int16) - 128).to(torch.int8)


@pytest.mark.parametrize("dim,exclude", [(75, True), (64, False)])
def test_tile_keys_keep_each_tiles_smallest_scores_and_columns(dim, exclude):
    """Every tile's ``keep`` smallest scores and their columns, ties by column, with a ragged last
    tile (101 rows in tiles of 16), queries not a multiple of 16, rows not a multiple of 32 (75) or a
    multiple (64, the unmasked loop), and self-exclusion at offsets that overlap part of the block."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (37, dim), generator=g, dtype=torch.int8)
    r = torch.randint(-128, 128, (101, dim), generator=g, dtype=torch.int8)
    r[50] = r[20]  # equal scores in two tiles
    r[21] = r[20]  # and inside one: the smaller column comes first
    want = scores(q, r)
    q_off, r_off = 90, 70
    if exclude:
        for i in range(len(q)):
            j = i + q_off - r_off
            if 0 <= j < len(r):
                want[i, j] = knn_fused.EXCLUDED
    keys = knn_fused.tile_keys(q, r, (r.long() ** 2).sum(1).int(), q_offset=q_off, r_offset=r_off,
                               exclude_self=exclude, config=SMALL)
    assert keys.shape == (7, 2, 37) and keys.dtype == torch.int64
    got, cols = knn_fused.decode(keys)
    for t in range(7):
        tile = want[:, 16 * t:16 * (t + 1)]
        order = torch.sort(tile, dim=1, stable=True)
        kept = min(2, tile.shape[1])
        assert torch.equal(got[t, :kept].T, order.values[:, :kept])
        assert torch.equal(cols[t, :kept].T, order.indices[:, :kept] + 16 * t)
    assert torch.equal(knn_fused.reference_keys(want, 16, 2), keys)  # the plain-torch statement of the kernel
    assert not bool((got == knn_fused.EXCLUDED).any())  # 2 kept of ≥ 5 rows: a query's own row never among them
    if exclude:  # queries 0..19 are rows 20..39 of the block
        own = torch.arange(20).unsqueeze(1) + q_off - r_off
        assert not bool((cols.permute(2, 0, 1).reshape(37, -1)[:20] == own).any())


def test_tile_keys_pads_a_tile_shorter_than_keep_and_rejects_bad_operands():
    q = torch.zeros((3, 32), dtype=torch.int8)
    r = torch.ones((17, 32), dtype=torch.int8)  # the second tile holds one row
    keys = knn_fused.tile_keys(q, r, (r.long() ** 2).sum(1).int(), config=SMALL)
    got, cols = knn_fused.decode(keys)
    assert bool((got[1, 0] == 32).all()) and bool((cols[1, 0] == 16).all())
    assert bool((got[1, 1] == knn_fused.EXCLUDED).all())
    with pytest.raises(ValueError, match="int8"):
        knn_fused.tile_keys(q.float(), r, r.sum(1).int(), config=SMALL)
    with pytest.raises(ValueError, match="empty"):
        knn_fused.tile_keys(q, r[:0], r[:0].sum(1).int(), config=SMALL)
    assert knn_fused.tile_keys(q[:0], r, r.sum(1).int(), config=SMALL).shape == (2, 2, 0)


def test_select_vouches_for_unflagged_queries_and_flags_crowded_tiles():
    """Where a query is not flagged, its c candidates are c smallest scores of the whole block
    (every other row scores ≥ the largest of them); a query whose near rows crowd into one tile is
    flagged."""
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-128, 128, (40, 48), generator=g, dtype=torch.int8)
    r = torch.randint(-128, 128, (320, 48), generator=g, dtype=torch.int8)
    r[:6] = q[0]  # six copies of query 0 in tile 0: more than the 2 kept there
    c = 5
    keys = knn_fused.tile_keys(q, r, (r.long() ** 2).sum(1).int(), config=SMALL)
    got, cols, incomplete = knn_fused.select(keys, c)
    assert got.shape == cols.shape == (40, c)
    assert bool(incomplete[0]) and int(incomplete.sum()) < 20
    want = scores(q, r)
    assert torch.equal(torch.gather(want, 1, cols), got)  # the columns hold the scores
    for i in (~incomplete).nonzero().squeeze(1).tolist():
        others = torch.ones(320, dtype=torch.bool)
        others[cols[i]] = False
        assert int(want[i, others].min()) >= int(got[i].max())
        assert sorted(got[i].tolist()) == sorted(want[i].topk(c, largest=False).values.tolist())


def _search_pair(q, r, k, *, config=SMALL, exclude_self=False):
    """(fused result, unfused result, backend) of the same search, the fused one forced on the CPU."""
    ref = prepare_reference(r, device="cpu", compute="int8")
    assert isinstance(ref.backend, TorchInt8Backend)
    ref.backend.fused, ref.backend.fused_config = True, config
    fused = knn_search(q, ref, k, exclude_self=exclude_self)
    unfused = knn_search(q, r, k, device="cpu", compute="int8", exclude_self=exclude_self)
    return fused, unfused, ref.backend


def _int8_exact_here():
    return resolve_compute("auto", torch.device("cpu"), dim=48, allow_int8=True).kind == "int8"


@pytest.mark.skipif(not _int8_exact_here(), reason="this CPU's int8 GEMM is not exact: the search never uses int8 here")
def test_fused_search_equals_the_unfused_one_with_recomputed_queries_counted():
    """Random rows, plus near copies crowded into one tile (those queries are recomputed unfused):
    the same indices and exact distances, and the stats say how many queries were recomputed."""
    rng = np.random.default_rng(0)
    r = rng.integers(0, 256, (700, 4, 4, 3), dtype=np.uint8)
    q = rng.integers(0, 256, (90, 4, 4, 3), dtype=np.uint8)
    r[32:40] = np.clip(q[5].astype(int) + rng.integers(-2, 3, (8, 4, 4, 3)), 0, 255)  # 8 near copies, tile 2
    fused, unfused, backend = _search_pair(q, r, 3, config=SMALL4)
    assert np.array_equal(fused.indices, unfused.indices) and np.array_equal(fused.sq, unfused.sq)
    assert set(fused.indices[5]) <= set(range(32, 40))
    assert fused.stats["fused"] is True and unfused.stats.get("fused") is None
    assert 1 <= fused.stats["fused_recomputed_rows"] == backend.recomputed_rows < len(q)
    assert fused.fallback_rows == unfused.fallback_rows == 0


@pytest.mark.skipif(not _int8_exact_here(), reason="this CPU's int8 GEMM is not exact: the search never uses int8 here")
def test_fused_search_excludes_each_querys_own_row_across_query_blocks():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (600, 3, 3, 3), dtype=np.uint8)
    x[300] = x[10]  # a duplicate: its twin, not itself, is its nearest
    ref = prepare_reference(x, device="cpu", compute="int8")
    ref.backend.fused, ref.backend.fused_config = True, SMALL
    fused = knn_search(x[:64], ref, 4, exclude_self=True, query_block=40)
    unfused = knn_search(x[:64], x, 4, device="cpu", compute="int8", exclude_self=True)
    assert np.array_equal(fused.indices, unfused.indices) and np.array_equal(fused.sq, unfused.sq)
    assert fused.indices[10, 0] == 300 and fused.sq[10, 0] == 0
    assert not bool((fused.indices == np.arange(64)[:, None]).any())


@pytest.mark.skipif(not _int8_exact_here(), reason="this CPU's int8 GEMM is not exact: the search never uses int8 here")
def test_a_kernel_failing_mid_search_warns_and_the_search_goes_on_unfused(monkeypatch):
    rng = np.random.default_rng(5)
    r = rng.integers(0, 256, (500, 4, 4, 3), dtype=np.uint8)
    q = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    ref = prepare_reference(r, device="cpu", compute="int8")
    ref.backend.fused, ref.backend.fused_config = True, SMALL

    def broken(*args, **kwargs):
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(knn_fused, "tile_keys", broken)
    with pytest.warns(RuntimeWarning, match="shared memory"):
        got = knn_search(q, ref, 3)
    want = knn_search(q, r, 3, device="cpu", compute="int8")
    assert np.array_equal(got.indices, want.indices) and np.array_equal(got.sq, want.sq)
    assert ref.backend.fused is False and "fused" not in got.stats


def test_uses_fused_only_for_large_int8_blocks_and_decides_auto_by_the_device(monkeypatch):
    spec = ComputeSpec("int8", torch.device("cpu"))
    be = TorchInt8Backend(spec, fused=True, fused_config=knn_fused.FusedConfig(block_n=128, keep=4))
    assert be.uses_fused(50_000, 3072, 62)  # 391 tiles x 4 kept ≥ 4 x 62
    assert not be.uses_fused(7_000, 3072, 62)  # 55 tiles x 4 < 248: the unfused product
    assert not be.uses_fused(50_000, INT8_MAX_DIM + 1, 62)  # scores need int64
    assert not TorchInt8Backend(spec, fused=False).uses_fused(50_000, 3072, 62)
    auto = TorchInt8Backend(spec)  # None: decided on first use by the device (the CPU: never)
    assert not auto.uses_fused(50_000, 3072, 62) and auto.fused is False
    probed = []
    monkeypatch.setattr(knn_fused, "available", lambda dev: True)
    monkeypatch.setattr(knn_backends, "_fused_probe", lambda dev, cfg: probed.append(dev) or True)
    auto = TorchInt8Backend(spec)
    assert auto.uses_fused(50_000, 3072, 62) and auto.uses_fused(60_000, 3072, 62) and len(probed) == 1


def test_a_gpu_with_triton_interpret_set_keeps_the_unfused_product(monkeypatch):
    """TRITON_INTERPRET left set on a GPU machine would run the kernel through the interpreter on the host,
    thousands of times slower: the fusion is then off, with a warning that says why."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (9, 0))
    cuda = torch.device("cuda")
    for value in ("1", "true", "ON"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        with pytest.warns(RuntimeWarning, match="TRITON_INTERPRET is set"):
            assert not knn_fused.available(cuda)
    has_triton = importlib.util.find_spec("triton") is not None  # the test extra installs it on Linux x86-64
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert knn_fused.available(cuda) == has_triton
    monkeypatch.delenv("TRITON_INTERPRET")
    assert knn_fused.available(cuda) == has_triton and not knn_fused.available(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (7, 5))
    assert not knn_fused.available(cuda)  # no int8 tensor cores for it


def test_the_probe_accepts_the_kernel_and_refuses_a_failing_or_wrong_one(monkeypatch):
    cpu = torch.device("cpu")
    assert knn_backends._fused_probe(cpu, SMALL) is True
    real = knn_fused.tile_keys

    def off_by_one(*args, **kwargs):
        keys = real(*args, **kwargs)
        keys[1, 0, 3] += 1 << 32  # one kept score one too large
        return keys

    monkeypatch.setattr(knn_fused, "tile_keys", off_by_one)
    with pytest.warns(RuntimeWarning, match="wrong scores"):
        assert knn_backends._fused_probe(cpu, SMALL) is False

    def broken(*args, **kwargs):
        raise RuntimeError("no int8 dot on this device")

    monkeypatch.setattr(knn_fused, "tile_keys", broken)
    with pytest.warns(RuntimeWarning, match="no int8 dot"):
        assert knn_backends._fused_probe(cpu, SMALL) is False


def test_kernel_compiles_for_hopper_to_int8_tensor_cores_without_spilling():
    """The compiled path, which the interpreter does not exercise: Triton compiles the kernel for
    sm_90 (no GPU needed) to int8 wgmma instructions, without spilling registers, within one
    multiprocessor's registers and shared memory. (How many programs share one depends on Triton's
    version: two with Triton 3.6, the GPU image's, one with 3.9's 156 registers.) In a process of
    its own: the interpreter, chosen here before triton's import, replaces the compiler."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json; from diffaudit.distances import knn_fused; print(json.dumps(knn_fused.compile_report()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["tensor_core_ops"] and all(op.startswith("wgmma.mma_async") and op.endswith(".s32.s8.s8")
                                             for op in report["tensor_core_ops"])
    assert report["spill_bytes"] == 0 and report["programs_per_sm"] >= 1


@pytest.mark.gpu
def test_cuda_fused_search_equals_unfused_at_default_tiles():
    """On CUDA the default search of CIFAR-sized rows uses the compiled kernel (default tiles) and
    gives the unfused search's result, with and without self-exclusion, recomputing about as many
    queries as neighbours in random order would flag (c = 62 best among 157 tiles of 128 rows: about
    10% of queries see a tile holding 4 of them; the first GPU run recomputed 300 of 3,000)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = np.random.default_rng(0)
    r = rng.integers(0, 256, (20_000, 32, 32, 3), dtype=np.uint8)
    cfg, c = knn_fused.DEFAULT_CONFIG, 50 + default_extra(50)
    random_order = torch.from_numpy(rng.integers(0, 2 ** 30, (1000, len(r)))).cuda()  # scores in random order
    random_rate = float(knn_fused.select(knn_fused.reference_keys(random_order, cfg.block_n, cfg.keep), c)[2].float().mean())
    assert 0.05 < random_rate < 0.2
    q = np.clip(r[rng.integers(0, len(r), 3000)].astype(int) + rng.integers(-20, 21, (3000, 32, 32, 3)), 0, 255).astype(np.uint8)
    q[:20] = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    for kw in ({}, {"exclude_self": True}):
        qq = r[:3000] if kw else q
        fused = knn_search(qq, r, 50, device="cuda", **kw)
        assert fused.stats.get("fused") is True and fused.stats["compute"] == "int8"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(TorchInt8Backend, "uses_fused", lambda self, *a: False)
            unfused = knn_search(qq, r, 50, device="cuda", **kw)
        assert unfused.stats.get("fused") is None
        assert np.array_equal(fused.indices, unfused.indices) and np.array_equal(fused.sq, unfused.sq)
        assert fused.stats["fused_recomputed_rows"] <= (1.5 * random_rate + 0.01) * len(qq)
