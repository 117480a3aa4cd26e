"""Pixel distances of Carlini et al. (2023) and exact nearest-neighbour search.

- :mod:`.pixel`: paired ℓ2 (RMS on [0, 1] pixels) and tiled ℓ2 (max over g x g tiles);
- :mod:`.pairwise`: all pairs within a set or between two sets, blocked GEMM (CPU or CUDA);
- :mod:`.normalized`: the neighbourhood-normalised distance ℓ(x̂, x; S) (α = 0.5, n = 50);
- :mod:`.knn`: exact top-k search, streamed in blocks, ``torch`` or ``faiss`` backend;
- :mod:`.radius`: exact fixed-radius neighbours (eidetic counts, duplicate groups);
- :mod:`.frechet`: FID from precomputed features.

Every distance lies in [0, 1]; smaller = more alike.
"""

from diffaudit.distances.knn import KnnResult, iter_knn, knn_search
from diffaudit.distances.knn_backends import KNN_BACKENDS, get_backend
from diffaudit.distances.normalized import DEFAULT_ALPHA, DEFAULT_NEIGHBORS, nearest_ratio, neighborhood_size, normalized_distance
from diffaudit.distances.pairwise import pairwise_l2, pairwise_tile_mean_squares, pairwise_tiled_l2
from diffaudit.distances.pixel import DEFAULT_GRID, l2, tile_edges, tile_l2, tiled_l2
from diffaudit.distances.radius import radius_neighbors

__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_GRID", "DEFAULT_NEIGHBORS", "KNN_BACKENDS", "KnnResult", "get_backend", "iter_knn",
    "knn_search", "l2", "nearest_ratio", "neighborhood_size", "normalized_distance", "pairwise_l2",
    "pairwise_tile_mean_squares", "pairwise_tiled_l2", "radius_neighbors", "tile_edges", "tile_l2", "tiled_l2",
]
