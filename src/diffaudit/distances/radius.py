"""Exact fixed-radius neighbours in ℓ2 (RMS on [0, 1] pixels), streamed in blocks.

Used for the eidetic count (paper §3, Definition 2: how many training images lie within δ = 0.1
of an extracted one) and to collapse duplicated training images. The GEMM is the kNN search's
(:mod:`.compute`; "auto": the exact int8 GEMM, for any image size, wherever the device's int8 GEMM
is exact); pairs within its deterministic error margin of the radius (none for the exact kinds) are
recomputed exactly, so the answer is exact on every device and for every kind.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.distances.compute import PIXEL_SQ, cross, error_margin, resolve_compute, shifted_sq_norms, sq_norms, to_compute
from diffaudit.distances.images import check_same_image_shape
from diffaudit.distances.sources import ReferenceSource, iter_blocks


def radius_neighbors(
    queries: Any,
    reference: Any,
    radius: float,
    *,
    device: str | torch.device = "auto",
    compute: str = "auto",
    query_block: int = 1024,
    ref_block: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query, every reference row with ℓ2 ≤ ``radius`` (itself included if present).

    queries, reference: uint8 images (N, H, W, C) / rows (N, D), or sources as in
    :func:`diffaudit.distances.knn.knn_search` (the same values per image, the same (H, W, C) where
    both are images; queries may be empty, the reference may not). radius: in [0, 1].
    query_block, ref_block: positive rows per block (ref_block default 65,536 on CUDA, 8,192 on the CPU).
    Returns one ``(indices int64 ascending, distances float64)`` pair per query.
    """
    if not 0 <= radius <= 1:
        raise DiffauditError(f"radius must be in [0, 1], got {radius}")
    for name, value in (("query_block", query_block), ("ref_block", ref_block)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise DiffauditError(f"{name} must be a positive integer (rows per block), got {value!r}")
    dev = resolve_device(device) if isinstance(device, str) else device
    ref = ReferenceSource(reference, name="reference")
    if ref.size == 0:
        raise DiffauditError("the reference set is empty: radius neighbours need at least one reference image")
    spec = resolve_compute(compute, dev, cpu_default="float64", dim=ref.dim, allow_int8=True)

    def gemm_norms(x: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        """The norms the GEMM's distance formula needs: of the shifted pixels for int8."""
        return shifted_sq_norms(x, n2) if spec.kind == "int8" else n2
    rb = ref_block or (65536 if dev.type == "cuda" else 8192)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    q_shape: dict = {}
    for _, q_raw in iter_blocks(queries, query_block, name="queries", shape=q_shape):
        check_same_image_shape(q_shape.get("shape"), ref.image_shape)
        qd = q_raw.to(dev)
        qn = sq_norms(qd)
        qc = to_compute(qd, spec)
        dim = qd.shape[1]
        limit = radius * radius * dim * PIXEL_SQ
        hits_i, hits_j, hits_sq = [], [], []
        for off, r_raw in ref.blocks(rb):
            if r_raw.shape[1] != dim:
                raise DiffauditError(f"queries have {dim} values per image but the reference has {r_raw.shape[1]}")
            check_same_image_shape(q_shape.get("shape"), ref.image_shape)
            rd = r_raw.to(dev)
            rn = sq_norms(rd)
            approx = cross(qc, to_compute(rd, spec), spec).to(torch.float64).mul_(-2.0)
            approx += gemm_norms(qd, qn).to(torch.float64).unsqueeze(1) + gemm_norms(rd, rn).to(torch.float64).unsqueeze(0)
            margin = error_margin(spec, dim, qn.unsqueeze(1) + rn.unsqueeze(0))
            i, j = (approx <= limit + margin).nonzero(as_tuple=True)
            if i.numel():
                step = max(1, (64 << 20) // (4 * dim))  # exact check in chunks of ≤ 64 MiB
                sq = torch.cat([
                    (qd[i[a:a + step]].to(torch.int32) - rd[j[a:a + step]].to(torch.int32)).square().sum(1, dtype=torch.int64)
                    for a in range(0, i.numel(), step)
                ])
                ok = sq.to(torch.float64) <= limit
                hits_i.append(i[ok].cpu())
                hits_j.append((j[ok] + off).cpu())
                hits_sq.append(sq[ok].cpu())
        if ref.size == 0:
            raise DiffauditError("the reference set is empty: radius neighbours need at least one reference image")
        n = qd.shape[0]
        if hits_i:
            ii, jj, ss = torch.cat(hits_i).numpy(), torch.cat(hits_j).numpy(), torch.cat(hits_sq).numpy()
        else:
            ii = jj = ss = np.zeros(0, dtype=np.int64)
        order = np.lexsort((jj, ii))
        ii, jj, ss = ii[order], jj[order], ss[order]
        bounds = np.searchsorted(ii, np.arange(n + 1))
        for q in range(n):
            sl = slice(bounds[q], bounds[q + 1])
            out.append((jj[sl].astype(np.int64), np.sqrt(ss[sl].astype(np.float64) / (dim * PIXEL_SQ))))
    return out
