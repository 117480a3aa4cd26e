"""The tile-major int8 path of the within-set tiled ℓ2 (distances.pairwise._one_set_int8): bitwise
equal to the per-tile blocked path, on every shape it takes, with cuBLAS's int8 shape rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffaudit.distances.compute as compute
import diffaudit.distances.pairwise as pairwise
from diffaudit.distances.pairwise import pairwise_tile_mean_squares


def _cublas_like_int_mm(a, b):
    if a.shape[0] <= 16 or b.shape[1] % 8 or a.shape[1] % 8:
        raise AssertionError(f"cuBLAS refuses int8 shapes {tuple(a.shape)} x {tuple(b.shape)}")
    return (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)


def _images(n, h, w, c, seed):
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    x[0] = 255  # the extreme values: the largest shifted norms and products
    if n > 2:
        x[1] = 0
        x[2] = x[0]  # an exact duplicate: distance 0 off the diagonal
    return x


@pytest.mark.parametrize("gemm", ["torch", "cublas-like"])
@pytest.mark.parametrize("n,h,w,c,grid,block_bytes", [
    (40, 8, 8, 3, 4, None), (13, 12, 8, 1, 4, None), (3, 4, 4, 3, 2, None), (21, 32, 32, 3, 4, None),
    (5, 105, 105, 3, 1, None),  # one tile of 33,075 values: two chunks
    (40, 8, 8, 3, 4, 40 * 40 * (3 * 12 + 20)),  # a budget of 3 tiles' Gram matrices: groups of 3, 3, ..., 1
])
def test_tile_major_path_equals_the_per_tile_path(n, h, w, c, grid, block_bytes, gemm, monkeypatch):
    """Forced on the CPU here (it runs on CUDA only): the same exact mean squares as the tile-by-tile
    path and as numpy."""
    if gemm == "cublas-like":
        monkeypatch.setattr(torch, "_int_mm", _cublas_like_int_mm)
        monkeypatch.setattr(compute, "_INT_MM_OK", {"cpu": True})
    x = _images(n, h, w, c, seed=n + h)
    groups = []
    real = pairwise._one_set_int8
    monkeypatch.setattr(pairwise, "_one_set_int8", lambda *a: groups.append(a[-1]) or real(*a))
    monkeypatch.setattr(pairwise, "_tiles_at_once", lambda *a: True)
    fast = pairwise_tile_mean_squares(x, grid=grid, compute="int8", block_bytes=block_bytes)
    assert groups, "the tile-major path was not taken"
    monkeypatch.setattr(pairwise, "_tiles_at_once", lambda *a: False)
    slow = pairwise_tile_mean_squares(x, grid=grid, compute="int8", block_bytes=block_bytes)
    assert fast.ms.dtype == torch.float64 and torch.equal(fast.ms, slow.ms) and fast.margin == 0.0
    t = x.astype(np.int64)
    th, tw = h // grid, w // grid
    want = np.zeros((n, n))
    for i in range(grid):
        for j in range(grid):
            tile = t[:, i * th:(i + 1) * th, j * tw:(j + 1) * tw].reshape(n, -1)
            want = np.maximum(want, ((tile[:, None] - tile[None]) ** 2).sum(-1) * (1.0 / (tile.shape[1] * 255.0 ** 2)))
    np.testing.assert_array_equal(fast.ms.numpy(), want)


def test_tile_major_groups_fit_the_budget():
    n8 = 40
    budget = n8 * n8 * (3 * pairwise._GROUP_BYTES + pairwise._FIXED_BYTES)
    assert (budget // (n8 * n8) - pairwise._FIXED_BYTES) // pairwise._GROUP_BYTES == 3


def test_tile_major_path_is_only_for_cuda_equal_tiles_and_sets_within_the_budget():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert pairwise._tiles_at_once(500, 512, 512, 3, 4, 2 << 30, cuda)  # the filter's prompt
    assert not pairwise._tiles_at_once(500, 512, 512, 3, 4, 2 << 30, cpu)  # the CPU: tile by tile
    assert not pairwise._tiles_at_once(500, 512, 512, 3, 4, 256 << 20, cuda)  # three copies beyond the budget
    assert not pairwise._tiles_at_once(10, 30, 29, 3, 4, 2 << 30, cuda)  # uneven tiles
    assert not pairwise._tiles_at_once(2, 256, 256, 3, 1, 2 << 30, cuda)  # 196,608 values: beyond int32 sums
    assert pairwise._tiles_at_once(4096, 32, 32, 3, 4, 2 << 30, cuda)  # a black-box component
    assert not pairwise._tiles_at_once(30_000, 32, 32, 3, 4, 2 << 30, cuda)  # its Gram matrices: 29 GB
