"""ℓ2, tiled ℓ2, pairwise GEMM distances and the normalised distance on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.distances import (
    l2,
    nearest_ratio,
    neighborhood_size,
    normalized_distance,
    pairwise_l2,
    pairwise_tile_mean_squares,
    pairwise_tiled_l2,
    tile_edges,
    tile_l2,
    tiled_l2,
)
from diffaudit.distances.compute import int8_gemm_exact
from diffaudit.distances.pixel import tile_weights

#: What "auto" picks for uint8 images on this CPU: int8 where its GEMM passes the exactness probe.
CPU_AUTO = "int8" if int8_gemm_exact("cpu") else "float64"


def test_l2_is_rms_on_unit_pixels():
    a = np.zeros((4, 4, 1), np.uint8)
    b = np.full((4, 4, 1), 255, np.uint8)
    assert float(l2(a, b)) == pytest.approx(1.0)
    b2 = np.zeros((4, 4, 1), np.uint8)
    b2[0, 0, 0] = 255  # one pixel of 16 differs by 1.0 -> sqrt(1/16)
    assert float(l2(a, b2)) == pytest.approx(0.25)
    # floats in [0, 1] give the same answer as the uint8 they encode
    assert float(l2(a.astype(np.float32), b2.astype(np.float32) / 255)) == pytest.approx(0.25)


def test_tile_edges_uneven_and_errors():
    assert tile_edges(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert tile_edges(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]  # as numpy.array_split
    assert [len(x) for x in np.array_split(np.arange(10), 4)] == [b - a for a, b in tile_edges(10, 4)]
    np.testing.assert_allclose(tile_weights(10, 7, 3).sum(), 1.0)
    with pytest.raises(DiffauditError, match="finer than the image"):
        tile_edges(3, 4)
    with pytest.raises(DiffauditError, match="at least 1"):
        tile_edges(3, 0)


def test_tiled_l2_is_the_worst_tile():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0:2, 6:8] = 255  # tile (0, 3) of a 4x4 grid differs completely
    t = tile_l2(a, b, grid=4)
    assert t.shape == (4, 4)
    assert float(t[0, 3]) == pytest.approx(1.0)
    assert float(t.sum()) == pytest.approx(1.0)
    assert float(tiled_l2(a, b)) == pytest.approx(1.0)
    assert float(l2(a, b)) == pytest.approx(0.25)  # 4 of 64 pixels


def test_flat_background_plain_small_tiled_large():
    """The paper's motivation for the tiled ℓ2: a shared flat background hides a local difference."""
    a = np.full((32, 32, 3), 128, np.uint8)
    b = a.copy()
    a[2:8, 2:8] = 100
    b[2:8, 2:8] = 202  # a 6x6 patch differing by 0.4: ℓ2 = 0.4 * 6/32 = 0.075, worst 8x8 tile 0.4 * 6/8 = 0.3
    assert float(l2(a, b)) == pytest.approx(0.075)
    assert float(tiled_l2(a, b)) == pytest.approx(0.3)


def test_pairwise_matches_paired_and_is_exact_on_cpu():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 10, 9, 3), dtype=np.uint8)  # uneven 4x4 tiles
    b = rng.integers(0, 256, (5, 10, 9, 3), dtype=np.uint8)
    for grid in (1, 3, 4):
        pw = pairwise_tiled_l2(a, b, grid=grid).numpy()
        ref = np.array([[float(tiled_l2(a[i], b[j], grid=grid)) for j in range(5)] for i in range(7)])
        np.testing.assert_allclose(pw, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pairwise_l2(a, b).numpy(), pairwise_tiled_l2(a, b, grid=1).numpy())
    res = pairwise_tile_mean_squares(a, b, grid=4)
    assert res.spec.kind == CPU_AUTO and res.margin == 0.0  # the default on uint8 images: exact
    assert pairwise_tile_mean_squares(a / 255.0, b / 255.0, grid=4).spec.kind == "float64"  # floats: exact float64


@pytest.mark.parametrize("na,nb,h,w,c,grid", [
    (7, 5, 10, 9, 3, 4),  # uneven tiles, tile lengths not a multiple of 8, at most 16 rows
    (40, 23, 8, 8, 1, 1),  # more than 16 rows, columns not a multiple of 8
    (33, None, 12, 12, 3, 4),  # one set (b = a): the symmetric path
])
def test_pairwise_int8_equals_float64_bit_for_bit(na, nb, h, w, c, grid):
    """The int8 GEMM (x − 128, int32 cross terms, float64 norms) gives the float64 GEMM's exact mean
    squares, value for value, on every branch of the int8 product (row padding, N % 8 columns, K padding)."""
    rng = np.random.default_rng(na)
    a = rng.integers(0, 256, (na, h, w, c), dtype=np.uint8)
    b = None if nb is None else rng.integers(0, 256, (nb, h, w, c), dtype=np.uint8)
    i8 = pairwise_tile_mean_squares(a, b, grid=grid, compute="int8")
    f64 = pairwise_tile_mean_squares(a, b, grid=grid, compute="float64")
    assert i8.spec.kind == "int8" and i8.margin == 0.0 and i8.ms.dtype == torch.float64
    assert torch.equal(i8.ms, f64.ms)
    blocked = pairwise_tile_mean_squares(a, b, grid=grid, compute="int8", block_bytes=900)  # many small blocks
    assert torch.equal(blocked.ms, f64.ms)


def test_pairwise_int8_exact_at_a_stable_diffusion_tile_size():
    """A 128 x 128 RGB tile (a 512 x 512 image under the 4 x 4 grid: 49,152 values, above the kNN's
    fused int8 limit) with the extreme pixels 0 and 255, where the cross terms are largest: exact."""
    from diffaudit.distances.compute import INT8_CROSS_MAX_DIM

    x = np.zeros((3, 128, 128, 3), dtype=np.uint8)
    x[1] = 255
    x[2, ::2] = 255  # half the rows
    assert 128 * 128 * 3 <= INT8_CROSS_MAX_DIM
    res = pairwise_tile_mean_squares(x, None, grid=1)
    assert res.spec.kind == CPU_AUTO
    want = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(res.ms.numpy(), want)
    # above the int32 range of one cross term (131,071 values; here 132,300, and a whole 512 x 512
    # image): int8 products in exact chunks, int64 totals; "auto" still picks int8 where it is exact
    for side in (210, 512):
        y = np.zeros((3, side, side, 3), dtype=np.uint8)
        y[1] = 255
        y[2, ::2] = 255
        big = pairwise_tile_mean_squares(y, None, grid=1, compute="int8")
        assert big.spec.kind == "int8" and big.margin == 0.0
        np.testing.assert_array_equal(big.ms.numpy(), want)
        assert pairwise_tile_mean_squares(y, None, grid=1).spec.kind == CPU_AUTO


def test_pairwise_mixes_uint8_and_unit_floats():
    """One side uint8 0..255, the other the same images as [0, 1] floats: the distances of equal images are 0."""
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    mixed = pairwise_l2(a, a / 255.0).numpy()
    np.testing.assert_allclose(np.diag(mixed), 0.0, atol=1e-7)
    np.testing.assert_allclose(mixed, pairwise_l2(a, a).numpy(), atol=1e-7)
    np.testing.assert_allclose(pairwise_tiled_l2(a / 255.0, a).numpy(), pairwise_tiled_l2(a, a).numpy(), atol=1e-7)


def test_pairwise_within_a_set_symmetric_zero_diagonal_and_blocked():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (23, 12, 12, 1), dtype=np.uint8)
    full = pairwise_tiled_l2(x).numpy()
    tiny = pairwise_tiled_l2(x, block_bytes=600).numpy()  # forces many small blocks
    np.testing.assert_array_equal(full, full.T)
    assert np.all(np.diag(full) == 0)
    np.testing.assert_allclose(tiny, full, atol=1e-12)


def test_pairwise_float32_within_its_margin():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    exact = pairwise_tile_mean_squares(x, grid=4, compute="float64").ms.numpy()
    approx = pairwise_tile_mean_squares(x, grid=4, compute="float32")
    assert approx.margin > 0
    assert np.abs(approx.ms.numpy().astype(np.float64) - exact).max() <= approx.margin


def test_pairwise_float32_within_its_margin_on_large_flat_images():
    """512 x 512 x 3 images (several fp32 GEMM chunks) with flat regions, where fp32 rounding is
    systematic: the float32 mean squares stay within the (deterministic) margin of the exact ones."""
    rng = np.random.default_rng(5)
    x = np.full((4, 512, 512, 3), 224, np.uint8)
    x[0] = 254
    x[2][rng.random((512, 512, 3)) < 0.5] = 223
    x[3][rng.random((512, 512, 3)) < 0.3] = 225
    exact = pairwise_tile_mean_squares(x, grid=1, compute="float64").ms.numpy()
    approx = pairwise_tile_mean_squares(x, grid=1, compute="float32")
    assert approx.spec.kind == "float32" and approx.margin > 0
    assert np.abs(approx.ms.numpy().astype(np.float64) - exact).max() <= approx.margin


def test_shape_and_dtype_errors_name_the_input():
    with pytest.raises(DiffauditError, match="different image shapes"):
        l2(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 5, 3), np.uint8))
    with pytest.raises(DiffauditError, match="equal counts"):
        l2(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((3, 4, 4, 3), np.uint8))
    with pytest.raises(DiffauditError, match="uint8 pixels"):
        l2(np.zeros((2, 4, 4, 3), np.int32), np.zeros((2, 4, 4, 3), np.int32))
    with pytest.raises(DiffauditError, match="compute precision"):
        pairwise_l2(np.zeros((2, 4, 4, 3), np.uint8), compute="fp8")


@pytest.mark.parametrize("f", [l2, tiled_l2, lambda a, b: pairwise_tiled_l2(a, b)])
def test_layouts_and_float_ranges_that_would_give_wrong_numbers_are_refused(f):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)  # a greyscale batch without its channel axis
    with pytest.raises(DiffauditError, match="channel axis"):
        f(grey, grey)
    chw = torch.rand(2, 3, 8, 8)  # channel-first
    with pytest.raises(DiffauditError, match="channels-last"):
        f(chw, chw)
    unit = rng.random((2, 8, 8, 3))
    for bad in (unit * 2 - 1, unit * 255, np.full_like(unit, np.nan)):  # [-1, 1], 0..255 as floats, NaN
        with pytest.raises(DiffauditError, match=r"must lie in \[0, 1\]"):
            f(bad, unit)
    # the accepted forms still work, and agree: uint8, its [0, 1] floats, and the greyscale batch with its axis
    u8 = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert np.allclose(np.asarray(f(u8, u8[::-1])), np.asarray(f(u8 / 255.0, u8[::-1] / 255.0)), atol=1e-6)
    assert np.asarray(f(grey[..., None], grey[..., None])).shape[0] == 5


def test_normalized_distance_hand_computed():
    # nearest at 0.02, neighbourhood mean (0.02 + 0.30 + 0.40) / 3 = 0.24 -> 0.02 / (0.5 * 0.24) = 1/6
    d = np.array([[0.02, 0.30, 0.40], [0.20, 0.22, 0.24]])
    r = nearest_ratio(d, n=3, alpha=0.5)
    np.testing.assert_allclose(r, [0.02 / 0.12, 0.20 / 0.11])
    assert r[0] <= 1 < r[1]
    # α scales the ratio inversely; n restricts the neighbourhood
    np.testing.assert_allclose(nearest_ratio(d, n=3, alpha=1.0), r / 2)
    np.testing.assert_allclose(nearest_ratio(d, n=2, alpha=0.5)[0], 0.02 / (0.5 * 0.16))
    # a neighbourhood entirely at distance 0 (duplicated training images): 0, never NaN
    np.testing.assert_array_equal(normalized_distance(np.array([0.0]), np.zeros((1, 4))), [0.0])


def test_neighborhood_size_rule():
    assert neighborhood_size(50_000) == 50
    assert neighborhood_size(30) == 30  # n = min(50, N_train): S holds every training image
    assert neighborhood_size(1) == 1
    with pytest.raises(DiffauditError):
        neighborhood_size(0)
    with pytest.raises(DiffauditError, match="need the 5 nearest"):
        nearest_ratio(np.zeros((2, 3)), n=5)


@pytest.mark.gpu
def test_devices_agree_when_cuda_present():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    cpu = pairwise_tile_mean_squares(x, grid=4)
    gpu = pairwise_tile_mean_squares(x, grid=4, device="cuda")  # int8 on cuBLAS: exact
    assert gpu.spec.kind == "int8" and torch.equal(gpu.ms.cpu(), cpu.ms)
    x = rng.integers(0, 256, (24, 512, 512, 3), dtype=np.uint8)  # SD-sized tiles (49,152 values), few rows
    assert torch.equal(pairwise_tile_mean_squares(x, grid=4, device="cuda").ms.cpu(), pairwise_tile_mean_squares(x, grid=4).ms)
    bf16 = pairwise_tile_mean_squares(x, grid=4, device="cuda", compute="bf16")
    assert (bf16.ms.cpu().double() - pairwise_tile_mean_squares(x, grid=4).ms).abs().max() <= bf16.margin
