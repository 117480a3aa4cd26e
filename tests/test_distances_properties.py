"""Property tests (hypothesis) of the distances: what always holds, for any image size and grid.

- symmetry, zero on identical images, triangle inequality (ℓ2 and tiled ℓ2 are metrics);
- tiled ℓ2 = max over tiles of the tile's ℓ2 (each tile's ℓ2 is the plain ℓ2 of the cropped tiles);
- ℓ2² = Σ_t w_t · ℓ2(tile t)² with w_t the tile's share of the pixels, hence
  ℓ2 ≤ tiled ℓ2 ≤ ℓ2 / sqrt(min_t w_t), for even and uneven tiles;
- scale: d(s·a, s·b) = s·d(a, b) for s ≥ 0; translation: d(a + c, b + c) = d(a, b) (within [0, 1]);
- the blocked GEMM gives the paired values; the normalised ratio of the nearest lies in [0, 1/α].
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from diffaudit.distances import l2, nearest_ratio, pairwise_tiled_l2, tile_edges, tile_l2, tiled_l2
from diffaudit.distances.pixel import tile_weights

SETTINGS = settings(deadline=None, max_examples=60)


@st.composite
def image_pairs(draw, n=1, dtype=np.uint8):
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    c = draw(st.sampled_from([1, 3]))
    grid = draw(st.integers(1, min(h, w, 5)))
    if dtype == np.uint8:
        elems = st.integers(0, 255)
    else:
        elems = st.floats(0, 1, allow_nan=False, width=32)
    a = draw(arrays(dtype, (n, h, w, c), elements=elems))
    b = draw(arrays(dtype, (n, h, w, c), elements=elems))
    return a, b, grid


@SETTINGS
@given(image_pairs())
def test_symmetric_and_zero_on_identical(p):
    a, b, g = p
    assert float(l2(a, b)[0]) == float(l2(b, a)[0])
    assert float(tiled_l2(a, b, grid=g)[0]) == float(tiled_l2(b, a, grid=g)[0])
    assert float(l2(a, a)[0]) == 0.0
    assert float(tiled_l2(a, a, grid=g)[0]) == 0.0


@SETTINGS
@given(image_pairs())
def test_tiled_is_max_of_tiles_and_bounds_plain(p):
    a, b, g = p
    h, w = a.shape[1:3]
    tiles = tile_l2(a, b, grid=g)[0].numpy()
    t = float(tiled_l2(a, b, grid=g)[0])
    d = float(l2(a, b)[0])
    assert t == tiles.max()
    # each tile's value is the plain ℓ2 of the cropped tiles
    for i, (r0, r1) in enumerate(tile_edges(h, g)):
        for j, (c0, c1) in enumerate(tile_edges(w, g)):
            assert abs(tiles[i, j] - float(l2(a[:, r0:r1, c0:c1], b[:, r0:r1, c0:c1])[0])) < 1e-12
    wts = tile_weights(h, w, g)
    assert abs(d * d - float((wts * tiles ** 2).sum())) < 1e-12  # exact decomposition of ℓ2²
    assert d <= t + 1e-12  # tiled ℓ2 ≥ plain ℓ2 (weighted mean ≤ max)
    assert t <= d / np.sqrt(wts.min()) + 1e-12  # one tile cannot exceed all of the difference


@SETTINGS
@given(image_pairs(dtype=np.float32), st.floats(0, 1), st.floats(0, 0.5))
def test_scale_and_translation(p, s, c):
    a, b, g = p
    a, b = a.astype(np.float64) / 2, b.astype(np.float64) / 2  # in [0, 0.5], so a + c stays a pixel
    for f in (lambda x, y: l2(x, y), lambda x, y: tiled_l2(x, y, grid=g)):
        base = float(f(a, b)[0])
        assert abs(float(f(s * a, s * b)[0]) - s * base) < 1e-9
        assert abs(float(f(a + c, b + c)[0]) - base) < 1e-9


@SETTINGS
@given(image_pairs(n=3))
def test_triangle_inequality(p):
    a, b, g = p
    x, y, z = a[:1], a[1:2], b[:1]
    for f in (lambda u, v: float(l2(u, v)[0]), lambda u, v: float(tiled_l2(u, v, grid=g)[0])):
        assert f(x, z) <= f(x, y) + f(y, z) + 1e-12


@SETTINGS
@given(image_pairs(n=4))
def test_gemm_pairwise_equals_paired(p):
    a, b, g = p
    pw = pairwise_tiled_l2(a, b, grid=g).numpy()
    for i in range(len(a)):
        for j in range(len(b)):
            assert abs(pw[i, j] - float(tiled_l2(a[i], b[j], grid=g))) < 1e-12


@SETTINGS
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 8)), elements=st.floats(0, 1, allow_subnormal=False)),
       st.floats(0.1, 2.0))
def test_ratio_of_the_nearest_is_within_0_and_1_over_alpha(d, alpha):
    d = np.sort(d, axis=1)
    r = nearest_ratio(d, n=d.shape[1], alpha=alpha)
    assert np.all(np.isfinite(r))
    assert np.all(r >= 0)
    assert np.all(r <= 1 / alpha + 1e-12)  # the nearest is never farther than the neighbourhood mean
