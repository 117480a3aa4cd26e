"""Exactness of the kNN and radius searches where it used to break, and their input checks.

- large images (512 x 512 x 3 = 786,432 values, the paper's Stable Diffusion resolution) with flat
  regions, where fp32 rounding is systematic and the old probabilistic margin missed the nearest
  neighbour; every kind that claims an exact result is checked there;
- the int8 GEMM beyond the int32 range (streamed references used to wrap), at any D;
- the certificate's fallback with a cached reference works one block at a time;
- mixed layouts, empty inputs and bad arguments give clear errors (or empty results);
- a hypothesis differential test against brute force, every kind, backend, block size and source.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import diffaudit.distances.compute as compute
import diffaudit.distances.knn as knn_mod
from diffaudit.core.errors import DiffauditError
from diffaudit.distances import knn_search, radius_neighbors
from diffaudit.distances.compute import (
    INT8_CHUNK,
    INT8_CROSS_MAX_DIM,
    INT8_MAX_DIM,
    ComputeSpec,
    cross,
    error_margin,
    gemm_error_factor,
    int8_dots,
    resolve_compute,
    sq_norms,
    to_compute,
)
from diffaudit.distances.knn import prepare_reference

SD_DIM = 512 * 512 * 3


def brute(q, r, k, exclude_self=False):
    """Exact int64 squared distances sorted by (distance, index), and the indices."""
    qf = q.reshape(len(q), r[0].size).astype(np.int64)
    rf = r.reshape(len(r), r[0].size).astype(np.int64)
    d = (qf ** 2).sum(1)[:, None] + (rf ** 2).sum(1)[None] - 2 * qf @ rf.T
    if exclude_self:
        for i in range(min(len(q), len(r))):
            d[i, i] = np.iinfo(np.int64).max
    order = np.lexsort((np.broadcast_to(np.arange(len(r)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


def flat_vs_noisy(nq=2, seed=0):
    """A bright flat query (254), a flat reference row at 224 and 12 noisy rows around 224 that are
    *nearer* than the flat one in exact arithmetic (by about 1.3% of the distance) but that fp32
    rounds the other way; the exact nearest neighbour is row 1."""
    rng = np.random.default_rng(seed)
    q = np.full((nq, SD_DIM), 254, np.uint8)
    rows = [np.full(SD_DIM, 224, np.uint8)]
    for p in np.linspace(0.0, 0.08, 12):
        r = np.full(SD_DIM, 224, np.uint8)
        m = rng.random(SD_DIM)
        r[m < 0.5 + p / 2] = 223
        r[m < 0.5 - p / 2] = 225
        r[rng.random(SD_DIM) < 0.5] = 224
        rows.append(r)
    return q, np.stack(rows)


@pytest.fixture(scope="module")
def sd_case():
    q, ref = flat_vs_noisy()
    sq, idx = brute(q, ref, 3)
    assert idx[0, 0] == 1  # the construction: a noisy row is the true nearest, not the flat row 0
    return q, ref, sq, idx


@pytest.mark.parametrize("backend,compute_kind", [("torch", "auto"), ("torch", "int8"), ("torch", "float64"),
                                                  ("torch", "float32"), ("torch", "bf16"), ("faiss", "auto")])
def test_exact_at_stable_diffusion_resolution(sd_case, backend, compute_kind):
    """D = 786,432 with flat images: every kind that claims an exact top k returns it, with the
    reference cached, streamed from the array, or a list of blocks (fp32 used to return row 4)."""
    q, ref, sq, idx = sd_case
    for reference, kw in ((ref, {}), (ref, {"ref_cache_bytes": 0, "ref_block": 5}), ([ref[:6], ref[6:]], {})):
        res = knn_search(q, reference, 3, backend=backend, compute=compute_kind, device="cpu", **kw)
        np.testing.assert_array_equal(res.indices, idx)
        np.testing.assert_array_equal(res.sq, sq)
        assert res.dim == SD_DIM


def test_fp32_margin_is_a_real_bound_where_the_probabilistic_one_failed(sd_case):
    """The fp32 kinds' computed distances (the chunked GEMM of cross) lie within error_margin of the
    exact ones on the flat images, while the old λ·sqrt(D)·u bound (λ = 8) is exceeded there."""
    q, ref, _, _ = sd_case
    spec = resolve_compute("float32", torch.device("cpu"))
    tq, tr = torch.from_numpy(q[:1]), torch.from_numpy(ref)
    qn, rn = sq_norms(tq), sq_norms(tr)
    approx = (cross(to_compute(tq, spec), to_compute(tr, spec), spec).double() * -2 + rn.double() + qn.double())[0]
    exact = torch.from_numpy(((q[:1].astype(np.int64) - ref.astype(np.int64)) ** 2).sum(1)).double()
    err = (approx - exact).abs()
    margin = error_margin(spec, SD_DIM, qn + rn)
    assert bool((err <= margin).all())
    old = (8.0 * np.sqrt(SD_DIM) + 3.0) * 2.0 ** -24 * (qn + rn).double()
    plain = (to_compute(tq, spec) @ to_compute(tr, spec).T).double()[0] * -2 + rn.double() + qn.double()
    assert bool(((plain - exact).abs() > old).any())  # an unchunked fp32 GEMM exceeds the old bound here


def test_gemm_error_factor_models():
    """Round-to-nearest (CPU) and the any-rounding model (CUDA): deterministic, growing with the
    chunk, and fp32 norms (faiss) add about D more."""
    assert gemm_error_factor(3072, chunk=4096, rounding="nearest") == pytest.approx(1.01 * (3072 + 1 + 2))
    assert gemm_error_factor(3072, chunk=1024, rounding="any") == pytest.approx(1.01 * (6 * 1024 + 2 * 3 + 4))
    assert gemm_error_factor(SD_DIM, chunk=4096, rounding="nearest") < gemm_error_factor(SD_DIM, chunk=SD_DIM, rounding="nearest")
    assert gemm_error_factor(100, chunk=100, fp32_norms=True, rounding="nearest") > 2 * 100
    with pytest.raises(ValueError):
        gemm_error_factor(10, rounding="stochastic")
    assert float(error_margin(ComputeSpec("int8", torch.device("cpu")), SD_DIM, torch.tensor([1e12]))[0]) == 0.0


@pytest.mark.parametrize("d", [INT8_MAX_DIM + 1, 43920, 128 * 128 * 3, INT8_CROSS_MAX_DIM + 9])
def test_int8_exact_beyond_int32_with_streamed_references(d):
    """compute="int8" with a list or callable reference (image size unknown when the kind is chosen):
    no size limit, no wrap-around (int32 used to wrap from D = 43,920: negative squared sums)."""
    q = np.stack([np.full(d, 255, np.uint8), np.zeros(d, np.uint8)])
    ref = np.stack([np.zeros(d, np.uint8), np.full(d, 255, np.uint8), np.full(d, 128, np.uint8), np.full(d, 254, np.uint8)])
    sq, idx = brute(q, ref, 4)
    for reference in (ref, [ref[:2], ref[2:]], lambda: iter([ref]), prepare_reference(ref, compute="int8", device="cpu")):
        res = knn_search(q, reference, 4, compute="int8", device="cpu")
        assert res.stats["compute"] == "int8"
        np.testing.assert_array_equal(res.sq, sq)
        np.testing.assert_array_equal(res.indices, idx)
        assert (res.distances >= 0).all() and np.isfinite(res.distances).all()
    hits = radius_neighbors(q, [ref], 0.01, compute="int8", device="cpu")
    assert hits[0][0].tolist() == [1, 3] and hits[1][0].tolist() == [0]


def _cublas_like_int_mm(a, b):
    if a.shape[0] <= 16 or b.shape[1] % 8 or a.shape[1] % 8:
        raise AssertionError(f"cuBLAS refuses int8 shapes {tuple(a.shape)} x {tuple(b.shape)}")
    assert a.shape[1] <= INT8_CHUNK  # int8_dots never asks one GEMM for more than a chunk
    return (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)


@pytest.mark.parametrize("gemm", ["torch", "cublas-like"])
@pytest.mark.parametrize("d", [INT8_CHUNK + 5, INT8_CROSS_MAX_DIM + 1])
def test_int8_dots_chunks_are_exact(d, gemm, monkeypatch):
    """Rows longer than one int8 GEMM: int32 chunk products, int32 totals while they fit and int64
    beyond INT8_CROSS_MAX_DIM, exact on the extreme values (every product ±16,384 or 127²)."""
    if gemm == "cublas-like":
        monkeypatch.setattr(torch, "_int_mm", _cublas_like_int_mm)
        monkeypatch.setattr(compute, "_INT_MM_OK", {"cpu": True})
    a = np.zeros((17, d), np.uint8)  # shifted: −128 everywhere
    a[1], a[2] = 255, np.arange(d) % 256
    b = np.zeros((9, d), np.uint8)
    b[1], b[2] = 255, (np.arange(d) * 7) % 256
    spec = resolve_compute("int8", torch.device("cpu"), allow_int8=True)
    got = int8_dots(to_compute(torch.from_numpy(a), spec), to_compute(torch.from_numpy(b), spec))
    assert got.dtype == (torch.int32 if d <= INT8_CROSS_MAX_DIM else torch.int64)
    want = (a.astype(np.int64) - 128) @ (b.astype(np.int64) - 128).T
    np.testing.assert_array_equal(got.numpy(), want)
    assert want[0, 0] == 16384 * d


def test_int8_probe_checks_the_longest_gemm(monkeypatch):
    """A GEMM exact on short rows but wrong on long ones (here: it drops columns beyond 8,192) fails
    the probe, which multiplies rows as long as one chunk of int8_dots."""
    def short_only(a, b):
        return (a[:, :8192].to(torch.int64) @ b[:8192].to(torch.int64)).to(torch.int32)

    monkeypatch.setattr(torch, "_int_mm", short_only)
    monkeypatch.setattr(compute, "_INT_MM_OK", {})
    assert not compute.int8_gemm_exact("cpu")
    assert resolve_compute("auto", torch.device("cpu"), allow_int8=True).kind == "float64"


def test_fallback_with_a_cached_reference_works_block_by_block(monkeypatch):
    """Exact ties at the k-th distance (duplicated all-black images) make every query's certificate
    fail: the fallback must walk the cached reference one block at a time, never the whole set."""
    seen = []
    orig = knn_mod._exact_block_topk

    def spy(q_raw, q_global, r, k):
        seen.append(int(r.raw.shape[0]))
        return orig(q_raw, q_global, r, k)

    monkeypatch.setattr(knn_mod, "_exact_block_topk", spy)
    rng = np.random.default_rng(0)
    ref = np.zeros((300, 12), np.uint8)
    ref[::2] = rng.integers(0, 256, (150, 12), dtype=np.uint8)
    q = np.zeros((20, 12), np.uint8)
    res = knn_search(q, ref, 10, device="cpu", ref_block=64, compute="float64")
    assert res.fallback_rows > 0 and seen
    assert max(seen) <= 64  # one block, not 300 rows
    sq, idx = brute(q, ref, 10)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_array_equal(res.sq, sq)
    seen.clear()
    excl = knn_search(ref[:100], ref[:100], 5, device="cpu", ref_block=16, exclude_self=True, extra=0, compute="float64")
    assert max(seen) <= 16
    sq, idx = brute(ref[:100], ref[:100], 5, exclude_self=True)
    np.testing.assert_array_equal(excl.indices, idx)


def test_mixed_layouts_are_refused():
    """Channel-first arrays (last axis > 4) and images of another (H, W, C) with the same D are not
    searched as scrambled pixels, whatever the reference's form."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    nchw = np.ascontiguousarray(train[:4].transpose(0, 3, 1, 2))  # (4, 3, 8, 8)
    with pytest.raises(DiffauditError, match="channels-last"):
        knn_search(nchw, train, 1, device="cpu")
    with pytest.raises(DiffauditError, match="channels-last"):
        knn_search(train[:4], np.ascontiguousarray(train.transpose(0, 3, 1, 2)), 1, device="cpu")
    small = rng.integers(0, 256, (10, 4, 6, 3), dtype=np.uint8)
    other = np.ascontiguousarray(small.transpose(0, 2, 1, 3))  # (10, 6, 4, 3): the same D = 72
    for reference in (small, [small[:5], small[5:]], lambda: iter([small]), prepare_reference(small, device="cpu")):
        with pytest.raises(DiffauditError, match="image shapes differ"):
            knn_search(other, reference, 2, device="cpu", ref_cache_bytes=0)
    with pytest.raises(DiffauditError, match="image shapes differ"):
        radius_neighbors(other, small, 0.1, device="cpu")
    with pytest.raises(DiffauditError, match="image shapes differ"):
        knn_search((x for x in [other[:3], other[3:]]), small, 2, device="cpu")
    with pytest.raises(DiffauditError, match="mixed image shapes"):
        knn_search([small[:3], other[3:]], small, 2, device="cpu")
    # flattened rows (N, D) carry no image shape: accepted against images of the same D
    rows = small.reshape(10, -1)
    np.testing.assert_array_equal(knn_search(rows, small, 2, device="cpu").indices, knn_search(small, small, 2, device="cpu").indices)


def test_empty_inputs():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (20, 2, 2, 3), dtype=np.uint8)
    res = knn_search(ref[:0], ref, 3, device="cpu")
    assert res.indices.shape == (0, 3) and res.distances.shape == (0, 3) and res.sq.shape == (0, 3)
    assert res.dim == 12 and res.stats["backend"] == "torch"
    assert knn_search(iter([]), ref, 3, device="cpu").indices.shape == (0, 3)
    assert radius_neighbors(ref[:0], ref, 0.1, device="cpu") == []
    for empty in (ref[:0], [], [ref[:0]], lambda: iter([])):
        with pytest.raises(DiffauditError, match="reference set is empty"):
            knn_search(ref[:4], empty, 1, device="cpu", ref_cache_bytes=0)
        with pytest.raises(DiffauditError, match="reference set is empty"):
            radius_neighbors(ref[:4], empty, 0.1, device="cpu")
    with pytest.raises(DiffauditError, match="reference set is empty"):
        prepare_reference(ref[:0], device="cpu")


def test_bad_arguments_are_refused_clearly():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (20, 2, 2, 3), dtype=np.uint8)
    q = ref[:4]
    for bad in (-1, -5, 1.5, True):
        with pytest.raises(DiffauditError, match="extra must be a non-negative integer"):
            knn_search(q, ref, 5, extra=bad, device="cpu")
    for name in ("query_block", "ref_block"):
        for bad in (0, -3, True):
            with pytest.raises(DiffauditError, match=f"{name} must be a positive integer"):
                knn_search(q, ref, 5, device="cpu", **{name: bad})
        with pytest.raises(DiffauditError, match=f"{name} must be a positive integer"):
            radius_neighbors(q, ref, 0.1, device="cpu", **{name: 0})
    with pytest.raises(DiffauditError, match="ref_block must be a positive integer"):
        prepare_reference(ref, ref_block=0, device="cpu")
    for bad in (True, np.bool_(True), 2.0, 0):
        with pytest.raises(DiffauditError, match="k must be a positive integer"):
            knn_search(q, ref, bad, device="cpu")
    assert knn_search(q, ref, 5, extra=0, device="cpu").indices.shape == (4, 5)  # 0 extra is allowed
    for reference in (ref, [ref], lambda: iter([ref[:7], ref[7:]])):
        with pytest.raises(DiffauditError, match="only 19 other images"):
            knn_search(ref, reference, 20, exclude_self=True, device="cpu", ref_cache_bytes=0)
        with pytest.raises(DiffauditError, match="only 20 images"):
            knn_search(q, reference, 21, device="cpu", ref_cache_bytes=0)
    for kind in ("int8", "float64", "bf16"):
        with pytest.raises(DiffauditError, match="faiss backend computes in float32"):
            knn_search(q, ref, 5, backend="faiss", compute=kind, device="cpu")
    assert knn_search(q, ref, 5, backend="faiss", compute="float32", device="cpu").indices.shape == (4, 5)


def test_query_block_is_capped_by_the_queries_size_when_the_reference_does_not_tell(monkeypatch):
    """A streamed reference (callable) says nothing of its image size: the default query block is
    then capped by the queries' own (16,384 values: 512 rows of 64 MiB as float64, not 1,024)."""
    rng = np.random.default_rng(0)
    d = 16384
    ref = rng.integers(0, 256, (6, d), dtype=np.uint8)
    q = rng.integers(0, 256, (600, d), dtype=np.uint8)
    blocks = []
    res = knn_search(q, lambda: iter([ref]), 2, device="cpu", progress=blocks.append)
    assert blocks == [512, 88]
    np.testing.assert_array_equal(res.indices, brute(q, ref, 2)[1])
    one_shot = []  # queries from a one-shot generator: its first block tells the size, and is kept
    res2 = knn_search((x for x in (q[:300], q[300:])), lambda: iter([ref]), 2, device="cpu", progress=one_shot.append)
    assert one_shot == [512, 88]
    np.testing.assert_array_equal(res2.indices, res.indices)


@st.composite
def _case(draw):
    h, w, c = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.sampled_from([1, 3]))
    n, nq = draw(st.integers(1, 40)), draw(st.integers(0, 30))
    vals = {"full": None, "few": [0, 1, 2], "binary": [0, 255], "extreme": [0, 1, 254, 255]}[
        draw(st.sampled_from(["full", "few", "binary", "extreme"]))]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31 - 1)))

    def gen(m):
        if vals is None:
            return rng.integers(0, 256, (m, h, w, c), dtype=np.uint8)
        return np.array(vals, np.uint8)[rng.integers(0, len(vals), (m, h, w, c))]

    ref = gen(n)
    if draw(st.booleans()) and n > 1:  # exact duplicates: ties broken by the smaller index
        ref[rng.integers(0, n, n // 2)] = ref[rng.integers(0, n, n // 2)]
    self_mode = draw(st.booleans())
    q = ref.copy() if self_mode else gen(nq)
    if not self_mode and draw(st.booleans()):
        q[: min(nq, n) // 2] = ref[: min(nq, n) // 2]
    return dict(q=q, ref=ref, k=draw(st.integers(1, n + 2)),
                kind=draw(st.sampled_from(["int8", "float64", "float32", "bf16", "auto", "faiss"])),
                qb=draw(st.integers(1, 33)), rb=draw(st.integers(1, 41)), extra=draw(st.sampled_from([None, 0, 1, 3])),
                source=draw(st.sampled_from(["array", "list", "callable", "resident", "torch"])),
                cache=draw(st.sampled_from([None, 0])), excl=self_mode and draw(st.booleans()))


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(_case())
def test_equals_brute_force_for_every_kind_backend_block_and_source(cs):
    ref, kind = cs["ref"], cs["kind"]
    note({key: v for key, v in cs.items() if key not in ("q", "ref")})
    backend, compute_kind = ("faiss", "auto") if kind == "faiss" else ("torch", kind)
    kw = dict(backend=backend, compute=compute_kind, device="cpu", query_block=cs["qb"], ref_block=cs["rb"],
              extra=cs["extra"], exclude_self=cs["excl"], ref_cache_bytes=cs["cache"])
    reference = {
        "list": lambda: [ref[i:i + 7] for i in range(0, len(ref), 7)],
        "callable": lambda: (lambda: iter([ref[i:i + 5] for i in range(0, len(ref), 5)])),
        "resident": lambda: prepare_reference(ref, backend=backend, device="cpu", compute=compute_kind, ref_block=cs["rb"]),
        "torch": lambda: torch.from_numpy(ref),
        "array": lambda: ref,
    }[cs["source"]]()
    k = cs["k"]
    if k > len(ref) - (1 if cs["excl"] else 0):
        if len(cs["q"]) or cs["source"] not in ("list", "callable"):  # known sizes are checked up front
            with pytest.raises(DiffauditError, match="nearest neighbours requested"):
                knn_search(cs["q"], reference, k, **kw)
        return
    res = knn_search(cs["q"], reference, k, **kw)
    sq, idx = brute(cs["q"], ref, k, cs["excl"])
    assert res.sq.shape == (len(cs["q"]), k)
    np.testing.assert_array_equal(res.sq, sq)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.distances, np.sqrt(sq / (ref[0].size * 255.0 ** 2)), rtol=0, atol=1e-15)


@pytest.mark.gpu
def test_cuda_exact_at_stable_diffusion_resolution(sd_case):
    """The same flat 512 x 512 x 3 case on CUDA: int8 (chunked, int64 totals) and bf16 + re-rank."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    q, ref, sq, idx = sd_case
    for kind in ("auto", "int8", "bf16", "float32"):
        for kw in ({}, {"ref_cache_bytes": 0, "ref_block": 5}):
            res = knn_search(q, ref, 3, device="cuda", compute=kind, **kw)
            np.testing.assert_array_equal(res.indices, idx)
            np.testing.assert_array_equal(res.sq, sq)
