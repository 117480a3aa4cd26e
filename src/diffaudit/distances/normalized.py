"""The neighbourhood-normalised distance of the untargeted CIFAR-10 attack (paper §5.1).

    ℓ(x̂, x; S_x̂) = ℓ2(x̂, x) / (α · mean_{y ∈ S_x̂} ℓ2(x̂, y))

with S_x̂ the n nearest training images of the generation x̂ (the nearest one, x, included), α = 0.5
and n = 50. A generation is extracted when the ratio is ≤ 1 with x its nearest training image: it is
at least twice as close to x as to its typical near neighbours. Smaller = more likely memorized.
"""

from __future__ import annotations

import numpy as np

from diffaudit.core.errors import DiffauditError

#: α of the normalised distance (paper §5.1).
DEFAULT_ALPHA = 0.5
#: n = |S|, the neighbourhood size (paper §5.1).
DEFAULT_NEIGHBORS = 50


def neighborhood_size(n_train: int, n: int = DEFAULT_NEIGHBORS) -> int:
    """n = min(n, N_train): S holds every training image when there are fewer than n (a generation is
    not itself a training image, so none is left out)."""
    if n_train < 1:
        raise DiffauditError("the training set is empty: the normalised distance needs at least one image")
    if n < 1:
        raise DiffauditError(f"--n-neighbors must be at least 1, got {n}")
    return min(n, n_train)


def normalized_distance(d: np.ndarray, neighbor_dists: np.ndarray, *, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """ℓ(x̂, x; S) = d / (α · mean(neighbor_dists)) per row.

    d: (Q,) ℓ2 from each generation to the candidate training image x, in [0, 1].
    neighbor_dists: (Q, n) ℓ2 from each generation to its n nearest training images (S, x included).
    Returns float64 (Q,) ≥ 0. Where the whole neighbourhood is at distance 0 (the generation equals n
    duplicated training images) the ratio is defined as 0 when d = 0 and +inf otherwise, never NaN.
    """
    if not 0 < alpha:
        raise DiffauditError(f"alpha must be positive, got {alpha}")
    d = np.asarray(d, dtype=np.float64)
    nd = np.asarray(neighbor_dists, dtype=np.float64)
    if nd.ndim != 2 or nd.shape[0] != d.shape[0] or nd.shape[1] < 1:
        raise DiffauditError(f"neighbour distances must be (Q, n≥1) for {d.shape[0]} generations, got {nd.shape}")
    denom = alpha * nd.mean(axis=1)
    out = np.empty_like(d)
    pos = denom > 0
    out[pos] = d[pos] / denom[pos]
    out[~pos] = np.where(d[~pos] > 0, np.inf, 0.0)
    return out


def nearest_ratio(knn_dists: np.ndarray, *, n: int, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """The ratio of each generation's nearest training image, from its sorted kNN distances.

    knn_dists: (Q, k ≥ n) ascending ℓ2 to the k nearest training images. Returns float64 (Q,):
    knn_dists[:, 0] / (α · mean(knn_dists[:, :n])) (paper §5.1); ≤ 1 means extracted.
    """
    kd = np.asarray(knn_dists, dtype=np.float64)
    if kd.ndim != 2 or kd.shape[1] < n:
        raise DiffauditError(f"need the {n} nearest distances per generation, got shape {kd.shape}")
    return normalized_distance(kd[:, 0], kd[:, :n], alpha=alpha)
