"""The near-duplicate graph over generations and clique summaries (paper §4.1,
generate-and-filter).

Vertices are generations; an edge joins two generations whose tiled ℓ2 (max over the 4 x 4
same-position tiles) is ≤ the edge threshold. Pairs whose GEMM value lies within the computation's
error margin of the threshold are recomputed exactly (float64 per-pixel differences), so the graph is
the same on the CPU and on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.distances.images import as_tensor
from diffaudit.distances.pairwise import pairwise_tile_mean_squares
from diffaudit.distances.pixel import DEFAULT_GRID, tile_l2

#: Default edge threshold of the tiled ℓ2. The paper does not publish it: a starting point, which
#: ``extract --calibrate`` measures against known memorized prompts.
DEFAULT_EDGE_THRESHOLD = 0.1
#: Default minimum clique size that flags a prompt (paper §4.1).
DEFAULT_MIN_CLIQUE = 10


def check_threshold(value: float, name: str, *, upper: float = 1.0) -> float:
    """A distance threshold in (0, upper]; :class:`DiffauditError` naming the option otherwise."""
    v = float(value)
    if not np.isfinite(v) or v <= 0 or v > upper:
        raise DiffauditError(f"{name} must be in (0, {upper:g}] (pixel distances lie in [0, 1]), got {value}")
    return v


@dataclass
class NearDuplicateGraph:
    """adjacency: bool (N, N), symmetric, empty diagonal; distances: float64 (N, N) tiled ℓ2 in
    [0, 1] (exact for uint8 images by default; with an inexact kind, e.g. bf16 for tiles too large for
    int8, within ~1e-4 away from the threshold and exact near it);
    threshold, grid: the settings; refined: pairs recomputed exactly near the threshold."""

    adjacency: np.ndarray
    distances: np.ndarray
    threshold: float
    grid: int
    refined: int = 0


def near_duplicate_graph(
    images: Any,
    *,
    threshold: float = DEFAULT_EDGE_THRESHOLD,
    grid: int = DEFAULT_GRID,
    device: str | torch.device | None = None,
    compute: str = "auto",
) -> NearDuplicateGraph:
    """Graph over ``images`` (N, H, W, C) uint8 (or [0, 1] floats): edge iff tiled ℓ2 ≤ ``threshold``.

    Paper §4.1 (generate-and-filter: the near-duplicate graph). ``device`` defaults to the images' device (pass
    ``cuda`` to build it there).
    """
    return start_near_duplicate_graph(images, threshold=threshold, grid=grid, device=device, compute=compute).result()


@dataclass
class PendingGraph:
    """A graph whose distances are still being computed on a GPU: :meth:`result` waits for them.

    ``ms``: (N, N) float64 max-over-tiles mean squares on the host (pinned memory, filled by an
    asynchronous copy on CUDA); ``ready``: the CUDA event recorded after that copy (None on the CPU).
    """

    ms: torch.Tensor
    ready: Any
    threshold: float
    grid: int
    refined: int

    def result(self) -> NearDuplicateGraph:
        if self.ready is not None:
            self.ready.synchronize()  # this graph's work and copy only, not what was queued after it
        # numpy's correctly rounded square root, as the kNN's, so the same mean squares give the same
        # distances on every device: on the H100 machine's CPU torch's vectorised float64 sqrt
        # differed from it in the last bit (60 of 3,600 entries), while CUDA's agreed.
        d = np.sqrt(self.ms.numpy())
        adj = d <= self.threshold
        np.fill_diagonal(adj, False)
        return NearDuplicateGraph(adj, d, self.threshold, self.grid, self.refined)


def start_near_duplicate_graph(
    images: Any,
    *,
    threshold: float = DEFAULT_EDGE_THRESHOLD,
    grid: int = DEFAULT_GRID,
    device: str | torch.device | None = None,
    compute: str = "auto",
) -> PendingGraph:
    """:func:`near_duplicate_graph` without waiting for a GPU: the work and the copy of its result to
    the host are queued, so the caller can use the CPU (e.g. the previous prompt's clique search)
    meanwhile. On the CPU the work is done at once; for the inexact kinds (bf16, float32) finding the
    pairs near the threshold waits for the GPU's mean squares, and only the final copy is queued."""
    check_threshold(threshold, "edge threshold")
    t = as_tensor(images, name="generations")
    res = pairwise_tile_mean_squares(t, None, grid=grid, device=device, compute=compute)
    ms = res.ms
    thr2 = threshold * threshold
    refined = 0
    if res.margin > 0:
        near = ((ms.to(torch.float64) - thr2).abs() <= res.margin).triu(1).nonzero()
        refined = int(near.shape[0])
        if refined:
            dev = ms.device
            x = t.to(dev)
            exact = torch.empty(refined, dtype=torch.float64, device=dev)
            step = 256
            for lo in range(0, refined, step):
                i, j = near[lo:lo + step, 0], near[lo:lo + step, 1]
                exact[lo:lo + step] = tile_l2(x[i], x[j], grid=grid).flatten(1).amax(1).square()
            ms = ms.to(torch.float64)
            ms[near[:, 0], near[:, 1]] = exact
            ms[near[:, 1], near[:, 0]] = exact
    ms = ms.to(torch.float64)
    ready = None
    if ms.device.type == "cuda":
        host = torch.empty(ms.shape, dtype=torch.float64, pin_memory=True)
        host.copy_(ms, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(ms.device))
        ms = host
    return PendingGraph(ms, ready, float(threshold), int(grid), refined)


def medoid(members: np.ndarray, distances: np.ndarray) -> int:
    """The member with the smallest summed distance to the other members (ties: lowest index)."""
    m = np.asarray(members, dtype=np.int64)
    if len(m) == 0:
        raise DiffauditError("a clique without members has no medoid")
    sub = distances[np.ix_(m, m)]
    return int(m[int(np.argmin(sub.sum(1)))])


def mean_internal_distance(members: np.ndarray, distances: np.ndarray) -> float:
    """Mean distance over the unordered pairs of members (0.0 for fewer than two); smaller = tighter
    clique = more likely a memorized image (the paper ranks flagged cliques by it)."""
    m = np.asarray(members, dtype=np.int64)
    if len(m) < 2:
        return 0.0
    sub = distances[np.ix_(m, m)]
    iu = np.triu_indices(len(m), 1)
    return float(sub[iu].mean())
