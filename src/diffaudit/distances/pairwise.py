"""All-pairs ℓ2 and tiled ℓ2 within one set or between two sets, by blocked GEMM.

For every same-position tile t (one tile = the whole image for plain ℓ2) the squared distances of
all pairs come from ‖a_t‖² + ‖b_t‖² − 2·a_t·b_tᵀ on integer pixels (:mod:`.compute`), one row block
x column block at a time, so no more than ``block_bytes`` of GEMM inputs live at once besides the
(Na, Nb) result. The tiled ℓ2 keeps the running maximum over tiles (paper §4.1).

Precision: for uint8 images the default is the exact ``int8`` GEMM wherever the device's int8 GEMM
passes the exactness probe (:func:`~diffaudit.distances.compute.int8_gemm_exact`; pixels shifted
by −128, exact int32/int64 cross terms, norms added in float64), for tiles of any size (a 128 x 128
RGB tile of a 512 x 512 image has 49,152 values). ``float64`` is exact too. The
bf16-in/fp32-accumulate GEMM (the CUDA default where the int8 GEMM is not exact) and the fp32 one
(floats in [0, 1] on CUDA) are within :attr:`PairwiseMeanSquares.margin` (mean-square units, a
deterministic bound: :func:`~diffaudit.distances.compute.gemm_error_factor`) of the exact value;
:func:`diffaudit.attacks.extraction.graph.near_duplicate_graph` recomputes every pair within that
margin of its threshold exactly, so graphs do not depend on the device or the kind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from diffaudit.distances.compute import (
    INT8_ALIGN,
    INT8_CHUNK,
    INT8_CROSS_MAX_DIM,
    PIXEL_SQ,
    U_FP32,
    ComputeSpec,
    cross,
    fp32_chunk,
    int8_dots_chunk,
    gemm_error_factor,
    resolve_compute,
    rounding_model,
    tf32_matmul,
    shifted_sq_norms,
    to_compute,
)
from diffaudit.distances.images import as_tensor, check_same_shape
from diffaudit.distances.pixel import DEFAULT_GRID, tile_edges


@dataclass
class PairwiseMeanSquares:
    """Largest per-tile mean square difference of every pair.

    Attributes:
        ms: (Na, Nb) float64 (exact kinds: int8, float64) or float32 tensor on the compute device:
            max over tiles of mean((a_t − b_t)²) on [0, 1] pixels, in [0, 1]. sqrt(ms) is the (tiled) ℓ2.
        margin: deterministic bound on |ms − exact ms| in mean-square units (0.0 when exact).
        spec: how it was computed.
    """

    ms: torch.Tensor
    margin: float
    spec: ComputeSpec


def default_block_bytes(device: torch.device) -> int:
    """GEMM-input budget per block: 2 GiB on CUDA, 256 MiB on the CPU."""
    return (2 << 30) if device.type == "cuda" else (256 << 20)


def pairwise_tile_mean_squares(
    a: Any,
    b: Any = None,
    *,
    grid: int = DEFAULT_GRID,
    device: str | torch.device | None = None,
    compute: str = "auto",
    block_bytes: int | None = None,
) -> PairwiseMeanSquares:
    """Max-over-tiles mean square difference of all pairs (a_i, b_j); ``b=None`` means b = a.

    a: (Na, H, W, C), b: (Nb, H, W, C); uint8 0..255 or floats in [0, 1]; any H, W ≥ grid.
    ``grid=1`` gives the plain ℓ2's mean squares. ``device`` defaults to a's device. ``compute``:
    "auto" is the exact int8 GEMM for uint8 images (tiles of any size) where the device's int8 GEMM
    is exact, else bf16 on CUDA and float64 on the CPU; or one of int8 (uint8 images only), float64,
    float32, bf16. Float inputs are computed in float64 (CPU) or float32 (CUDA, TF32 off), never bf16
    (only integers are exact there).
    """
    ta = as_tensor(a, name="a")
    tb = ta if b is None else as_tensor(b, name="b")
    check_same_shape(ta, tb)
    dev = torch.device(device) if device is not None else ta.device
    integer = ta.dtype == torch.uint8 and tb.dtype == torch.uint8
    if not integer:  # one side uint8, the other [0, 1] floats: both to [0, 1]
        ta = ta.to(torch.float64) / 255.0 if ta.dtype == torch.uint8 else ta
        tb = ta if b is None else (tb.to(torch.float64) / 255.0 if tb.dtype == torch.uint8 else tb)
    na, h, w, c = ta.shape
    nb = tb.shape[0]
    rows, cols = tile_edges(h, grid), tile_edges(w, grid)
    dt_max = (rows[0][1] - rows[0][0]) * (cols[0][1] - cols[0][0]) * c
    spec = resolve_compute(compute, dev, dim=dt_max, allow_int8=integer)
    if not integer and spec.kind == "bf16":
        spec = ComputeSpec("float32", dev)
    shifted = spec.kind == "int8"
    xa = ta.to(dev)
    xb = xa if b is None else tb.to(dev)
    itemsize = torch.empty((), dtype=spec.input_dtype).element_size()
    budget = block_bytes or default_block_bytes(dev)
    per_side = max(1, budget // (2 * dt_max * (itemsize + 1)))
    ra, rb = min(na, per_side), min(nb, per_side)

    def prep(x: torch.Tensor, lo: int, hi: int, r: tuple[int, int], cc: tuple[int, int]):
        t = x[lo:hi, r[0]:r[1], cc[0]:cc[1], :].reshape(hi - lo, -1)
        if shifted:  # x − 128 as int8 and its exact squared norm (int64, then float64: exact below 2^53)
            return to_compute(t, spec), shifted_sq_norms(t).to(torch.float64)
        t = t.to(spec.input_dtype)
        if spec.exact:  # float64: exact squared norms of integers
            return t, torch.einsum("ij,ij->i", t, t)
        # fp32 kinds: squared norms of the converted values in float64 (not an fp32 sum of D terms,
        # whose rounding the margin does not cover), a few rows at a time to bound the copy
        step = max(1, (32 << 20) // max(1, 8 * t.shape[1]))
        norms = torch.cat([torch.einsum("ij,ij->i", x, x) for x in (t[i:i + step].to(torch.float64)
                                                                    for i in range(0, t.shape[0], step))]) \
            if t.shape[0] else torch.zeros(0, dtype=torch.float64, device=t.device)
        return t, norms

    # fp32 products of [0, 1] floats: TF32 (if a caller enabled it) would round the inputs beyond the margin
    no_tf32 = tf32_matmul(dev, False) if (not integer and not spec.exact) else contextlib.nullcontext()
    if b is None and shifted and _tiles_at_once(na, h, w, c, grid, budget, dev):
        out = _one_set_int8(xa, grid, spec, budget)  # the filter's case: one prompt's generations
    else:
        out = torch.zeros((na, nb), dtype=torch.float64 if shifted else spec.output_dtype, device=dev)
        with no_tf32:
            _fill(out, xa, xb, b is None, rows, cols, c, integer, spec, ra, rb, prep)
    if b is None:
        # One set: the matrix is symmetric with a zero diagonal by definition; make it so exactly.
        out = torch.maximum(out, out.T)
        out.fill_diagonal_(0.0)
    # mean-square units: norms_sum ≤ 2·D·255² (integers) or 2·D (floats), divided by D·255² or D;
    # +10: the float inputs' rounding to fp32 (4u), rounded products (2u), the fp32 additions of the
    # norms and the scaling below (4u)
    factor = gemm_error_factor(dt_max, chunk=fp32_chunk(dev), rounding=rounding_model(dev))
    margin = 0.0 if spec.exact else (factor + 10.0) * U_FP32 * 2.0
    return PairwiseMeanSquares(out, margin, spec)


def _fill(out, xa, xb, one_set, rows, cols, c, integer, spec, ra, rb, prep) -> None:
    """Max over tiles of the mean squares of every (row block, column block) pair, into ``out``."""
    shifted = spec.kind == "int8"
    na, nb = out.shape
    for r in rows:
        for cc in cols:
            dt = (r[1] - r[0]) * (cc[1] - cc[0]) * c
            scale = 1.0 / (dt * PIXEL_SQ) if integer else 1.0 / dt
            for j0 in range(0, nb, rb):
                j1 = min(nb, j0 + rb)
                bm, bn = prep(xb, j0, j1, r, cc)
                for i0 in range(0, na, ra):
                    i1 = min(na, i0 + ra)
                    am, an = (bm, bn) if (one_set and i0 == j0 and i1 == j1) else prep(xa, i0, i1, r, cc)
                    # one (ra, rb) temporary: the products (int32 ones in float64), turned in place
                    # into mean squares (‖a‖² + ‖b‖² − 2a·b) / (D·255²), then merged into the output
                    ms = cross(am, bm, spec)
                    ms = ms.to(torch.float64) if shifted else ms
                    ms.mul_(-2.0).add_(an.unsqueeze(1)).add_(bn.unsqueeze(0)).mul_(scale).clamp_(min=0.0)
                    blk = out[i0:i1, j0:j1]
                    torch.maximum(blk, ms.to(out.dtype), out=blk)


#: Bytes per pair of generations that :func:`_one_set_int8` holds per tile of a group (the int32
#: Gram matrix and its float64 mean squares), and once (a chunk's product, the group's and the
#: running maxima).
_GROUP_BYTES, _FIXED_BYTES = 12, 20


def _tiles_at_once(n: int, h: int, w: int, c: int, grid: int, budget: int, device: torch.device) -> bool:
    """Whether :func:`_one_set_int8` applies: on CUDA (it saves kernel launches; on the CPU the
    tile-by-tile path was faster and smaller for 4,096 CIFAR images), equal tiles (H and W multiples
    of ``grid``) whose exact products fit int32, and, each within the block budget, three tile-major
    copies of the set and the Gram matrices of at least one tile."""
    n8 = n + (-n) % 8
    return device.type == "cuda" and h % grid == 0 and w % grid == 0 \
        and (h // grid) * (w // grid) * c <= INT8_CROSS_MAX_DIM \
        and 3 * n * h * w * c <= budget and (_GROUP_BYTES + _FIXED_BYTES) * n8 * n8 <= budget


def _one_set_int8(x: torch.Tensor, grid: int, spec: ComputeSpec, budget: int) -> torch.Tensor:
    """Max-over-tiles mean squares of all pairs within ``x`` (N, H, W, C) uint8 on ``spec.device``
    -> float64 (N, N), exact, bitwise equal to :func:`_fill`'s, with few operations per set.

    :func:`_fill` runs some twenty operations per tile, about 300 per prompt of 500 generations at
    512 x 512; on an H100 the launches, not the arithmetic, set its pace. Here the shifted pixels are
    laid out once tile-major and chunk-major, N padded to a multiple of 8 and each tile's D to equal
    chunks of at most :data:`INT8_CHUNK` values with zero rows and columns (which add nothing), so
    every GEMM reads a dense (N8, Kc) slice; a tile's chunk products are added in int32
    (|q'·r'| ≤ 16,384·D, D ≤ :data:`INT8_CROSS_MAX_DIM`); the squared norms are the Gram matrix's
    diagonal; and the mean squares (‖a‖² + ‖b‖² − 2a·b) / (D·255²) of a group of tiles (as many as
    ``budget`` holds at :data:`_GROUP_BYTES` per pair and tile) are formed in float64 with one
    operation each, as :func:`_fill` forms them per tile.
    """
    n, h, w, c = x.shape
    g, th, tw = grid, h // grid, w // grid
    t_count, d = g * g, th * tw * c
    q = -(-d // INT8_CHUNK)
    kc = -(-d // q)
    kc += (-kc) % INT8_ALIGN
    n8 = n + (-n) % 8
    shifted = torch.bitwise_xor(x.to(spec.device), 128).view(torch.int8)
    tiles = shifted.view(n, g, th, g, tw, c).permute(1, 3, 0, 2, 4, 5).reshape(t_count, n, d)
    tiles = torch.nn.functional.pad(tiles, (0, q * kc - d, 0, n8 - n))
    ops = tiles.view(t_count, n8, q, kc).permute(0, 2, 1, 3).contiguous()  # (T, q, N8, Kc): dense slices
    del shifted, tiles
    scale = 1.0 / (d * PIXEL_SQ)
    per_group = max(1, (budget // (n8 * n8) - _FIXED_BYTES) // _GROUP_BYTES)
    out = None
    for lo in range(0, t_count, per_group):
        hi = min(t_count, lo + per_group)
        dots = torch.empty((hi - lo, n8, n8), dtype=torch.int32, device=spec.device)
        for ti in range(lo, hi):
            dots[ti - lo] = int8_dots_chunk(ops[ti, 0], ops[ti, 0])
            for j in range(1, q):
                dots[ti - lo].add_(int8_dots_chunk(ops[ti, j], ops[ti, j]))
        sq = dots.diagonal(dim1=1, dim2=2)[:, :n].to(torch.float64)  # ‖x_t − 128‖², exact
        ms = dots[:, :n, :n].to(torch.float64)
        del dots
        ms.mul_(-2.0).add_(sq[:, :, None]).add_(sq[:, None, :]).mul_(scale).clamp_(min=0.0)
        top = ms.amax(0)
        del ms
        out = top if out is None else torch.maximum(out, top, out=out)
    return out


def pairwise_l2(a: Any, b: Any = None, **kwargs: Any) -> torch.Tensor:
    """ℓ2 (RMS on [0, 1] pixels, paper §4.1) of all pairs: (Na, Nb) tensor in [0, 1] on the compute
    device; ``b=None`` for all pairs within ``a``. Keywords as :func:`pairwise_tile_mean_squares`."""
    return pairwise_tile_mean_squares(a, b, grid=1, **kwargs).ms.sqrt()


def pairwise_tiled_l2(a: Any, b: Any = None, *, grid: int = DEFAULT_GRID, **kwargs: Any) -> torch.Tensor:
    """Tiled ℓ2 (max over grid x grid same-position tiles, paper §4.1) of all pairs: (Na, Nb) in
    [0, 1]; ``b=None`` for all pairs within ``a``. Keywords as :func:`pairwise_tile_mean_squares`."""
    return pairwise_tile_mean_squares(a, b, grid=grid, **kwargs).ms.sqrt()
