"""Exact nearest-neighbour search: brute force, backends, streaming, self-exclusion, radius."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.distances import knn_search, radius_neighbors
from diffaudit.distances.compute import INT8_MAX_DIM, SPLIT_CHUNK, exact_dots, int8_dots, resolve_compute, shifted_sq_norms, to_compute
from diffaudit.distances.knn import ResidentReference, prepare_reference, prepare_reference_if_fits
from diffaudit.distances.knn_backends import get_backend


def brute(q, r, k, exclude_self=False):
    """Exact integer squared distances, sorted by (distance, index)."""
    qf = q.reshape(len(q), -1).astype(np.int64)
    rf = r.reshape(len(r), -1).astype(np.int64)
    d = (qf ** 2).sum(1)[:, None] + (rf ** 2).sum(1)[None] - 2 * qf @ rf.T
    if exclude_self:
        np.fill_diagonal(d, np.iinfo(np.int64).max)
    order = np.lexsort((np.broadcast_to(np.arange(len(r)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (1500, 6, 6, 3), dtype=np.uint8)
    ref[700:710] = ref[3]  # exact duplicates: ties broken by the smaller index
    q = rng.integers(0, 256, (300, 6, 6, 3), dtype=np.uint8)
    q[:20] = ref[:20]
    q[20:40] = np.clip(ref[100:120].astype(int) + rng.integers(-3, 4, (20, 6, 6, 3)), 0, 255)
    return q, ref


@pytest.mark.parametrize("backend,compute", [("torch", "float32"), ("torch", "float64"), ("torch", "int8"), ("torch", "auto"),
                                             ("faiss", "auto")])
def test_exact_equals_brute_force(data, backend, compute):
    q, ref = data
    res = knn_search(q, ref, 12, backend=backend, compute=compute, query_block=64, ref_block=400)
    sq, idx = brute(q, ref, 12)
    np.testing.assert_array_equal(res.sq, sq)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.distances, np.sqrt(sq / (6 * 6 * 3 * 255.0 ** 2)))
    assert np.all(np.diff(res.distances, axis=1) >= 0)
    assert res.distances[0, 0] == 0 and res.indices[3, :1].tolist() == [3]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16, torch.float64])
def test_exact_dots_exact_where_plain_fp32_rounds(dtype):
    """Bright images with more values than one split chunk: the split re-rank is exact for every
    operand dtype, while a plain fp32 dot product of the same rows rounds (so the test can fail)."""
    rng = np.random.default_rng(1)
    d = 2 * SPLIT_CHUNK + 37
    q = rng.integers(200, 256, (6, d), dtype=np.uint8)
    q[0] = 255
    cand = rng.integers(200, 256, (6, 9, d), dtype=np.uint8)
    cand[0, 0] = 255
    want = np.einsum("bcd,bd->bc", cand.astype(np.int64), q.astype(np.int64))
    got = exact_dots(torch.from_numpy(q), torch.from_numpy(cand).to(dtype))
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy().astype(np.int64), want)
    plain = torch.bmm(torch.from_numpy(cand).float(), torch.from_numpy(q).float().unsqueeze(2)).squeeze(2)
    assert (plain.double().numpy() != want).any()


@pytest.mark.parametrize("cache", [None, 0])
def test_float32_rerank_exact_on_large_images(cache):
    """The fp32 GEMM + split re-rank on 48x48x3 images (more values than one split chunk), with the
    reference resident (gathered from its fp32 operand) or streamed block by block."""
    rng = np.random.default_rng(2)
    ref = rng.integers(150, 256, (120, 48, 48, 3), dtype=np.uint8)
    q = np.clip(ref[:30].astype(int) + rng.integers(-20, 21, (30, 48, 48, 3)), 0, 255).astype(np.uint8)
    res = knn_search(q, ref, 6, compute="float32", ref_block=50, ref_cache_bytes=cache)
    sq, idx = brute(q, ref, 6)
    np.testing.assert_array_equal(res.sq, sq)
    np.testing.assert_array_equal(res.indices, idx)


def test_faiss_and_torch_agree(data):
    q, ref = data
    a = knn_search(q, ref, 50, backend="torch")
    b = knn_search(q, ref, 50, backend="faiss")
    np.testing.assert_array_equal(a.distances, b.distances)
    np.testing.assert_array_equal(a.indices, b.indices)  # same tie-break: smaller index first


@pytest.mark.parametrize("compute", ["float32", "int8"])
def test_certificate_fallback_keeps_results_exact(data, compute):
    """With no extra candidates and tiny blocks, many rows need the exact fallback (for the exact
    int8 GEMM: the 11 copies of ref[3] tie at the k-th distance); still exact."""
    q, ref = data
    res = knn_search(q, ref, 5, extra=0, ref_block=37, query_block=50, compute=compute)
    assert res.fallback_rows > 0  # the fallback path did run
    sq, idx = brute(q, ref, 5)
    np.testing.assert_array_equal(res.sq, sq)
    np.testing.assert_array_equal(res.indices, idx)


def _cublas_like_int_mm(a, b):
    """An exact int8 GEMM with cuBLAS's shape rules (M > 16, N % 8 = 0, K % 8 = 0), so that the splits
    of int8_dots are tested on any CPU, also one whose own int8 GEMM fails the probe."""
    if a.shape[0] <= 16 or b.shape[1] % 8 or a.shape[1] % 8:
        raise AssertionError(f"cuBLAS refuses int8 shapes {tuple(a.shape)} x {tuple(b.shape)}")
    return (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)


@pytest.mark.parametrize("gemm", ["torch", "cublas-like"])
@pytest.mark.parametrize("m,n,d", [(1, 5, 3), (16, 8, 8), (17, 8, 9), (40, 43, 147), (300, 1000, 64), (20, 7, 16),
                                   (17, 141, 24), (1, 300, 16)])
def test_int8_dots_exact_on_every_branch(m, n, d, gemm, monkeypatch):
    """Shifted pixels x − 128 and int32 accumulation: exact for every split of int8_dots (≤ 16 rows
    padded, N % 8 rows padded (N < 8·M) or multiplied in float64 (the last two cases), K padded to a
    multiple of 8), with this machine's GEMM and with one that enforces cuBLAS's shape rules."""
    if gemm == "cublas-like":
        import diffaudit.distances.compute as compute

        monkeypatch.setattr(torch, "_int_mm", _cublas_like_int_mm)
        monkeypatch.setattr(compute, "_INT_MM_OK", {"cpu": True})
    rng = np.random.default_rng(m * 1000 + n + d)
    a, b = rng.integers(0, 256, (m, d), dtype=np.uint8), rng.integers(0, 256, (n, d), dtype=np.uint8)
    spec = resolve_compute("int8", torch.device("cpu"), allow_int8=True)
    ta, tb = to_compute(torch.from_numpy(a), spec), to_compute(torch.from_numpy(b), spec)
    assert ta.dtype == torch.int8 and ta.shape == (m, d + (-d) % 8)
    np.testing.assert_array_equal(ta[:, :d].numpy().astype(np.int64), a.astype(np.int64) - 128)
    assert not ta[:, d:].any()
    got = int8_dots(ta, tb)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got.numpy(), (a.astype(np.int64) - 128) @ (b.astype(np.int64) - 128).T)
    np.testing.assert_array_equal(shifted_sq_norms(torch.from_numpy(a)).numpy(), ((a.astype(np.int64) - 128) ** 2).sum(1))


def test_int8_tail_rows_are_padded_where_that_copies_less(monkeypatch):
    """b's last N % 8 rows: zero-padded (one int8 GEMM, no float64 copy of a) when N < 8·M, as for the
    filter's 500 generations per prompt; in float64 when a is the smaller side."""
    import diffaudit.distances.compute as compute

    shapes, f64 = [], []
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: shapes.append(tuple(b.shape)) or _cublas_like_int_mm(a, b))
    monkeypatch.setattr(compute, "_INT_MM_OK", {"cpu": True})
    real_f64 = compute._float64_dots
    monkeypatch.setattr(compute, "_float64_dots", lambda a, b: f64.append(tuple(b.shape)) or real_f64(a, b))
    x = to_compute(torch.from_numpy(np.random.default_rng(1).integers(0, 256, (500, 24), dtype=np.uint8)),
                   resolve_compute("int8", torch.device("cpu"), allow_int8=True))
    assert int8_dots(x, x).shape == (500, 500) and shapes == [(24, 504)] and not f64
    shapes.clear()
    assert int8_dots(x[:20], x).shape == (20, 500) and shapes == [(24, 496)] and f64 == [(4, 24)]


def test_int8_falls_back_to_exact_float64_without_int8_gemms(data, monkeypatch):
    import diffaudit.distances.compute as compute

    def missing(*_a, **_k):
        raise RuntimeError("_int_mm_out: not implemented for this build")

    monkeypatch.setattr(torch, "_int_mm", missing)
    monkeypatch.setattr(compute, "_INT_MM_OK", {})
    q, ref = data
    res = knn_search(q, ref, 12, compute="int8", device="cpu")
    sq, idx = brute(q, ref, 12)
    np.testing.assert_array_equal(res.sq, sq)
    np.testing.assert_array_equal(res.indices, idx)
    assert compute._INT_MM_OK == {"cpu": False}


def _saturating_int_mm(a, b):
    """What oneDNN's s8 x s8 GEMM does on x86 CPUs without VNNI: pairs of products summed in int16
    with saturation (vpmaddubsw), silently wrong for large values."""
    a64, b64 = a.to(torch.int64), b.to(torch.int64)
    k = a64.shape[1] - a64.shape[1] % 2
    pairs = a64[:, 0:k:2, None] * b64[None, 0:k:2] + a64[:, 1:k:2, None] * b64[None, 1:k:2]
    return pairs.clamp(-32768, 32767).sum(1).to(torch.int32)


def test_an_inexact_int8_gemm_is_detected_and_never_used(data, monkeypatch):
    """A GEMM that returns wrong int8 products without raising fails the one-time probe: "auto" then
    picks float64, an explicit int8 search multiplies in float64, and every result stays exact."""
    import diffaudit.distances.compute as compute
    from diffaudit.distances.pairwise import pairwise_tile_mean_squares

    monkeypatch.setattr(torch, "_int_mm", _saturating_int_mm)
    monkeypatch.setattr(compute, "_INT_MM_OK", {})
    assert not compute.int8_gemm_exact("cpu") and compute._INT_MM_OK == {"cpu": False}
    assert resolve_compute("auto", torch.device("cpu"), dim=3072, allow_int8=True).kind == "float64"
    q, ref = data
    extreme = np.where(ref > 127, 255, 0).astype(np.uint8)  # where saturation would show
    for kind in ("auto", "int8"):
        res = knn_search(extreme[:50], extreme, 7, compute=kind, device="cpu")
        sq, idx = brute(extreme[:50], extreme, 7)
        np.testing.assert_array_equal(res.sq, sq)
        np.testing.assert_array_equal(res.indices, idx)
    x = extreme[:20]
    assert torch.equal(pairwise_tile_mean_squares(x, None, compute="int8").ms,
                       pairwise_tile_mean_squares(x, None, compute="float64").ms)
    monkeypatch.setattr(compute, "_INT_MM_OK", {})
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32))
    assert compute.int8_gemm_exact("cpu")  # an exact GEMM passes the same probe


def test_cpu_without_vnni_gets_exact_results():
    """The real case, in a fresh process: oneDNN limited to AVX2 (no VNNI) computes s8 x s8 with
    saturating int16 sums; the probe sees it and every search stays exact."""
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from diffaudit.distances import knn_search\n"
        "from diffaudit.distances.compute import int8_gemm_exact\n"
        "x = np.where(np.random.default_rng(0).random((60, 192)) < 0.5, 0, 255).astype(np.uint8)\n"
        "a = knn_search(x, x, 5, device='cpu')\n"
        "b = knn_search(x, x, 5, device='cpu', compute='float64')\n"
        "c = knn_search(x, x, 5, device='cpu', compute='int8')\n"
        "assert (a.sq == b.sq).all() and (a.indices == b.indices).all()\n"
        "assert (c.sq == b.sq).all() and (c.indices == b.indices).all()\n"
        "print(int8_gemm_exact('cpu'), a.stats['compute'])\n"
    )
    env = {**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    exact, kind = proc.stdout.split()
    assert (exact, kind) in (("False", "float64"), ("True", "int8"))  # int8 only where its products are exact


def test_int8_is_exact_at_its_largest_image_size():
    """At D = INT8_MAX_DIM the extreme rows (0 against 255, and equal rows) still fit int32."""
    d = INT8_MAX_DIM
    rows = np.stack([np.zeros(d, np.uint8), np.full(d, 255, np.uint8), np.full(d, 128, np.uint8)] * 6)
    res = knn_search(rows, rows, 18, compute="int8", device="cpu")
    sq, idx = brute(rows, rows, 18)
    np.testing.assert_array_equal(res.sq, sq)
    np.testing.assert_array_equal(res.indices, idx)
    assert res.sq.max() == d * 255 ** 2


def test_compute_auto_picks_int8_where_it_is_exact(monkeypatch):
    import diffaudit.distances.compute as compute

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    this_cpu = "int8" if compute.int8_gemm_exact(cpu) else "float64"
    ref = np.zeros((10, 4, 4, 3), np.uint8)
    assert knn_search(ref, ref, 2, device="cpu").stats["compute"] == this_cpu
    monkeypatch.setattr(compute, "_INT_MM_OK", {"cpu": False, "cuda": False})  # probes failed: never int8
    assert resolve_compute("auto", cpu, dim=3072, allow_int8=True).kind == "float64"
    assert resolve_compute("auto", cuda, dim=3072, allow_int8=True).kind == "bf16"
    monkeypatch.setattr(compute, "_INT_MM_OK", {"cpu": True, "cuda": True})  # probes passed
    assert resolve_compute("auto", cpu, dim=3072, allow_int8=True).kind == "int8"
    assert resolve_compute("auto", cuda, dim=3072, allow_int8=True).kind == "int8"
    # int8 is exact for any image size (chunked products), so "auto" picks it whatever D, also for a
    # stream whose size is unknown when the kind is chosen
    for d in (INT8_MAX_DIM + 1, 512 * 512 * 3, None):
        assert resolve_compute("auto", cpu, dim=d, allow_int8=True).kind == "int8"
        assert resolve_compute("auto", cuda, dim=d, allow_int8=True).kind == "int8"
        assert resolve_compute("int8", cpu, dim=d, allow_int8=True).kind == "int8"
    assert resolve_compute("auto", cpu, dim=3072).kind == "float64"  # other users of the GEMM keep their kinds
    from diffaudit.distances.pairwise import pairwise_tile_mean_squares

    with pytest.raises(DiffauditError, match="int8 needs uint8"):  # the tiled distances use int8 on uint8 only
        pairwise_tile_mean_squares(np.zeros((2, 8, 8, 3), np.float32), None, compute="int8")
    assert knn_search(ref, ref, 2, device="cpu").stats["compute"] == "int8"
    streamed = knn_search(ref, lambda: iter([ref]), 2, device="cpu", ref_cache_bytes=0)
    assert streamed.stats["compute"] == "int8"


def test_streaming_both_sides(data):
    q, ref = data
    queries = (q[i:i + 33] for i in range(0, len(q), 33))  # a one-shot generator, odd sizes
    reference = lambda: (ref[i:i + 101] for i in range(0, len(ref), 101))  # noqa: E731  re-iterable
    res = knn_search(queries, reference, 7, query_block=50, ref_block=200, ref_cache_bytes=0)
    sq, idx = brute(q, ref, 7)
    np.testing.assert_array_equal(res.sq, sq)
    np.testing.assert_array_equal(res.indices, idx)


def test_exclude_self(data):
    _, ref = data
    sub = ref[:400]
    for backend in ("torch", "faiss"):
        res = knn_search(sub, sub, 4, exclude_self=True, backend=backend, query_block=90, ref_block=150)
        sq, idx = brute(sub, sub, 4, exclude_self=True)
        np.testing.assert_array_equal(res.indices, idx)
        np.testing.assert_array_equal(res.sq, sq)
        assert not np.any(res.indices == np.arange(400)[:, None])
    # a slice of the queries with its global offset
    part = knn_search(sub[100:200], sub, 4, exclude_self=True, query_offset=100)
    np.testing.assert_array_equal(part.indices, idx[100:200])


def test_prepared_reference_is_reused(data):
    q, ref = data
    prep = prepare_reference(ref, ref_block=500)
    assert isinstance(prep, ResidentReference) and prep.size == len(ref)
    parts = [knn_search(q[:100], prep, 6), knn_search(q[100:], prep, 6, query_offset=100)]
    full = knn_search(q, ref, 6)
    np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), full.indices)
    np.testing.assert_array_equal(np.concatenate([p.sq for p in parts]), full.sq)
    assert prepare_reference_if_fits(ref, ref_cache_bytes=10) is ref  # too large: streamed instead
    assert isinstance(prepare_reference_if_fits(ref), ResidentReference)


def test_errors_are_clear(data):
    q, ref = data
    with pytest.raises(DiffauditError, match="unknown nearest-neighbour backend 'annoy'"):
        knn_search(q, ref, 3, backend="annoy")
    with pytest.raises(DiffauditError, match="unknown nearest-neighbour backend"):
        get_backend("nope", None)
    with pytest.raises(DiffauditError, match="only 4 other images"):
        knn_search(ref[:5], ref[:5], 5, exclude_self=True)
    with pytest.raises(DiffauditError, match="image shapes differ"):
        knn_search(q[:, :5], ref, 3)
    with pytest.raises(DiffauditError, match="uint8"):
        knn_search(q.astype(np.float32), ref, 3)
    with pytest.raises(DiffauditError, match="positive integer"):
        knn_search(q, ref, 0)
    with pytest.raises(DiffauditError, match="one-shot generator"):
        knn_search(q, (r for r in [ref]), 3)


@pytest.mark.parametrize("compute", ["auto", "int8", "float32", "float64"])
def test_radius_neighbors_exact(data, compute):
    q, ref = data
    sq, idx = brute(q[:60], ref, len(ref))
    for radius in (0.02, 0.4):
        hits = radius_neighbors(q[:60], ref, radius, query_block=16, ref_block=500, compute=compute)
        limit = radius ** 2 * 6 * 6 * 3 * 255.0 ** 2
        for i, (ix, d) in enumerate(hits):
            keep = sq[i] <= limit
            np.testing.assert_array_equal(ix, np.sort(idx[i][keep]))
            exact_sq = np.empty(len(ref), np.int64)
            exact_sq[idx[i]] = sq[i]
            np.testing.assert_array_equal(d, np.sqrt(exact_sq[ix] / (6 * 6 * 3 * 255.0 ** 2)))
        if radius == 0.02:
            assert len(hits[3][0]) == 11 and hits[3][0][0] == 3  # ref[3] and its 10 duplicates


@pytest.mark.gpu
def test_cuda_equals_cpu_when_present(data):
    """The int8 GEMM, and bf16 + exact re-ranking, on CUDA give the CPU's exact answer, resident or streamed."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    q, ref = data
    a = knn_search(q, ref, 20, device="cpu")
    for compute in ("auto", "bf16"):  # auto: the int8 GEMM (cuBLAS int8 paths: 300 queries, 1,500 refs)
        for kw in ({}, {"ref_cache_bytes": 0, "ref_block": 300}, {"extra": 0}, {"query_block": 10, "ref_block": 333}):
            b = knn_search(q, ref, 20, device="cuda", compute=compute, **kw)
            assert b.stats["compute"] == ("int8" if compute == "auto" else "bf16")
            np.testing.assert_array_equal(a.sq, b.sq)
            np.testing.assert_array_equal(a.indices, b.indices)
    sub = ref[:400]
    for compute in ("auto", "bf16"):
        c = knn_search(sub, sub, 4, exclude_self=True, device="cuda", compute=compute)
        np.testing.assert_array_equal(c.indices, knn_search(sub, sub, 4, exclude_self=True, device="cpu").indices)
    for m, n, d in ((1, 5, 3), (17, 8, 9), (40, 43, 147), (300, 1000, 64)):
        rng = np.random.default_rng(m + n + d)
        x, y = rng.integers(0, 256, (m, d), dtype=np.uint8), rng.integers(0, 256, (n, d), dtype=np.uint8)
        spec = resolve_compute("int8", torch.device("cuda"), allow_int8=True)
        got = int8_dots(to_compute(torch.from_numpy(x), spec), to_compute(torch.from_numpy(y), spec)).cpu().numpy()
        np.testing.assert_array_equal(got, (x.astype(np.int64) - 128) @ (y.astype(np.int64) - 128).T)
    hits_cpu = radius_neighbors(q[:60], ref, 0.02, device="cpu")
    hits_gpu = radius_neighbors(q[:60], ref, 0.02, device="cuda")
    for (i1, d1), (i2, d2) in zip(hits_cpu, hits_gpu):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(d1, d2)


@pytest.mark.gpu
def test_cuda_split_rerank_exact_on_large_bright_images():
    """On CUDA the re-rank gathers bf16 operand rows: exact past one split chunk, resident or streamed."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    rng = np.random.default_rng(3)
    d = 2 * SPLIT_CHUNK + 37
    q = rng.integers(200, 256, (64, d), dtype=np.uint8)
    cand = rng.integers(200, 256, (64, 9, d), dtype=np.uint8)
    want = np.einsum("bcd,bd->bc", cand.astype(np.int64), q.astype(np.int64))
    got = exact_dots(torch.from_numpy(q).cuda(), torch.from_numpy(cand).cuda().to(torch.bfloat16))
    np.testing.assert_array_equal(got.cpu().numpy().astype(np.int64), want)
    ref = rng.integers(150, 256, (300, 48, 48, 3), dtype=np.uint8)
    qi = np.clip(ref[:80].astype(int) + rng.integers(-20, 21, (80, 48, 48, 3)), 0, 255).astype(np.uint8)
    sq, idx = brute(qi, ref, 6)
    for kw in ({}, {"ref_cache_bytes": 0, "ref_block": 128}):
        res = knn_search(qi, ref, 6, device="cuda", compute="bf16", **kw)
        assert res.stats["compute"] == "bf16"
        np.testing.assert_array_equal(res.sq, sq)
        np.testing.assert_array_equal(res.indices, idx)
