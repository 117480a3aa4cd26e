"""Paired pixel distances of Carlini et al. (2023): ℓ2 (RMS) and tiled ℓ2.

Both take two batches of images of the same shape, (N, H, W, C) uint8 0..255 or floats in [0, 1]
(or single (H, W, C) images), and return float64 (N,) distances on [0, 1] pixels, in [0, 1].
Smaller means more alike. For all pairs of two sets, see :mod:`diffaudit.distances.pairwise`.

Relations that always hold (tested with hypothesis), for any grid, even or uneven tiles:

- ``tiled_l2(a, b) = max_t l2(a_t, b_t)`` over the g x g same-position tiles t;
- ``l2(a, b) ≤ tiled_l2(a, b)``: ℓ2² is the pixel-weighted mean of the tiles' ℓ2², and a weighted mean
  never exceeds the maximum (equality when every tile is equally far);
- ``tiled_l2(a, b) ≤ l2(a, b) / sqrt(w_min)`` with w_min the smallest tile's share of the pixels
  (= g for equal tiles): one tile cannot hide more than all of the difference;
- symmetric, zero on identical images, translation invariant (a + c, b + c), and homogeneous:
  ``d(s·a, s·b) = |s|·d(a, b)`` for float inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.distances.images import as_tensor, check_same_shape, to_unit_float64

#: Default grid of the tiled ℓ2 (paper §4.1: 4 x 4 non-overlapping tiles, 128 x 128 at 512 x 512).
DEFAULT_GRID = 4


def tile_edges(size: int, grid: int) -> list[tuple[int, int]]:
    """The ``grid`` (start, stop) ranges that split ``size`` pixels, as ``numpy.array_split`` does.

    The first ``size % grid`` tiles are one pixel larger (uneven edge tiles are allowed; every tile
    holds at least one pixel). Raises :class:`DiffauditError` when ``grid`` < 1 or ``grid`` > ``size``.
    """
    if grid < 1:
        raise DiffauditError(f"tile grid must be at least 1, got {grid}")
    if grid > size:
        raise DiffauditError(f"tile grid {grid} is finer than the image ({size} pixels): every tile needs a pixel")
    base, extra = divmod(size, grid)
    edges, start = [], 0
    for i in range(grid):
        stop = start + base + (1 if i < extra else 0)
        edges.append((start, stop))
        start = stop
    return edges


def tile_weights(height: int, width: int, grid: int) -> np.ndarray:
    """Share of the pixels in each tile, float64 (grid, grid), summing to 1."""
    hs = np.array([b - a for a, b in tile_edges(height, grid)], dtype=np.float64)
    ws = np.array([b - a for a, b in tile_edges(width, grid)], dtype=np.float64)
    return np.outer(hs, ws) / (height * width)


def _paired(a: Any, b: Any, device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    single = getattr(a, "ndim", 4) == 3
    ta, tb = as_tensor(a, name="a"), as_tensor(b, name="b")
    check_same_shape(ta, tb, batch=True)
    dev = torch.device(device) if device is not None else ta.device
    return to_unit_float64(ta, dev), to_unit_float64(tb, dev), single


def l2(a: Any, b: Any, *, device: str | torch.device | None = None) -> torch.Tensor:
    """ℓ2(a, b) = sqrt(mean((a − b)²)) over all pixels and channels, on [0, 1] pixels.

    Conventions: distances; paper §3 (root mean square, so it does not grow with resolution).
    a, b: (N, H, W, C) or (H, W, C), uint8 or [0, 1] floats. Returns float64 (N,) (a 0-d tensor for
    single images), values in [0, 1]; smaller = more alike.
    """
    x, y, single = _paired(a, b, device)
    d = (x - y).square().flatten(1).mean(1).sqrt()
    return d[0] if single else d


def tile_l2(a: Any, b: Any, *, grid: int = DEFAULT_GRID, device: str | torch.device | None = None) -> torch.Tensor:
    """ℓ2 of every same-position tile pair: float64 (N, grid, grid), values in [0, 1].

    Tile (i, j) covers rows ``tile_edges(H, grid)[i]`` and columns ``tile_edges(W, grid)[j]``.
    """
    x, y, single = _paired(a, b, device)
    sq = (x - y).square().sum(-1)  # (N, H, W): squared difference summed over channels
    n, h, w = sq.shape
    c = x.shape[-1]
    out = torch.empty((n, grid, grid), dtype=torch.float64, device=sq.device)
    for i, (r0, r1) in enumerate(tile_edges(h, grid)):
        for j, (c0, c1) in enumerate(tile_edges(w, grid)):
            out[:, i, j] = sq[:, r0:r1, c0:c1].sum((1, 2)) / ((r1 - r0) * (c1 - c0) * c)
    out = out.sqrt()
    return out[0] if single else out


def tiled_l2(a: Any, b: Any, *, grid: int = DEFAULT_GRID, device: str | torch.device | None = None) -> torch.Tensor:
    """Tiled ℓ2: the MAXIMUM over the grid x grid same-position tiles of the tiles' ℓ2.

    Paper §4.1 (generate-and-filter): two images are close only if they are close everywhere, so
    generations that merely share a flat background are not near-duplicates. Shapes as :func:`l2`;
    float64 (N,) in [0, 1]; smaller = more alike; always ≥ :func:`l2` (module docstring).
    """
    t = tile_l2(a, b, grid=grid, device=device)
    return t.flatten(-2).amax(-1)
