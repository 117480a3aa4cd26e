"""Near-duplicate edges with faiss: every pair of images whose similarity is at least a threshold.

The index holds each image's plain embedding (view 0); queries are every view of every image
(:meth:`Embedder.embed_views`, translated copies for shift tolerance), streamed in batches so
memory stays bounded by the index plus one batch. An edge (i, j), i < j, is kept with the largest
similarity any view of i or j reached against the other.

Index kinds:

- ``flat``: exact (``IndexFlatIP`` on unit vectors, ``IndexBinaryFlat`` on hashes) with
  ``range_search``: every edge is found. Use up to a few hundred thousand images on the CPU.
- ``ivf``: inverted lists (``IndexIVFFlat`` / ``IndexBinaryIVF``, ``nlist`` ≈ 4·sqrt(N) cells trained
  on the data with a seeded k-means, ``nprobe`` cells searched) with ``range_search``: approximate,
  for millions of images.
- ``hnsw``: a graph index (``IndexHNSWFlat`` / ``IndexBinaryHNSW``); ``k`` nearest neighbours per
  query, kept when above the threshold: approximate, and a group larger than ``k`` is only joined
  through chains (union-find still merges it).

:func:`brute_force_edges` computes the same edges with dense matrix products (the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from diffaudit.core.errors import DiffauditError

INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class Edges:
    """Undirected near-duplicate edges.

    Attributes:
        pairs: int64 (E, 2), i < j, sorted, unique.
        similarity: float64 (E,), the largest similarity found for the pair (≥ the threshold).
    """

    pairs: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)

    def as_set(self) -> set[tuple[int, int]]:
        return {(int(a), int(b)) for a, b in self.pairs}


class EdgeAccumulator:
    """Collects directed hits (query, neighbour, similarity) into unique undirected edges."""

    def __init__(self) -> None:
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._s: list[np.ndarray] = []

    def add(self, q: np.ndarray, nb: np.ndarray, sim: np.ndarray) -> None:
        q, nb, sim = np.asarray(q, np.int64), np.asarray(nb, np.int64), np.asarray(sim, np.float64)
        keep = (q != nb) & (nb >= 0)
        q, nb, sim = q[keep], nb[keep], sim[keep]
        self._a.append(np.minimum(q, nb))
        self._b.append(np.maximum(q, nb))
        self._s.append(sim)

    def result(self) -> Edges:
        if not self._a:
            return Edges(np.zeros((0, 2), np.int64), np.zeros(0))
        a, b, s = np.concatenate(self._a), np.concatenate(self._b), np.concatenate(self._s)
        if len(a) == 0:
            return Edges(np.zeros((0, 2), np.int64), np.zeros(0))
        order = np.lexsort((-s, b, a))  # by (a, b), largest similarity first
        a, b, s = a[order], b[order], s[order]
        first = np.ones(len(a), bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        return Edges(np.stack([a[first], b[first]], 1), s[first])


def hamming_radius(threshold: float, dim: int) -> int:
    """The largest Hamming distance whose similarity 1 − d/dim is still ≥ ``threshold``."""
    return int(math.floor((1.0 - threshold) * dim + 1e-9))


def build_index(base: np.ndarray, *, metric: str, dim: int, kind: str = "flat", nlist: int | None = None,
                nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128, seed: int = 0):
    """A faiss index over ``base`` (float32 (N, D) unit vectors, or uint8 (N, dim/8) packed bits)."""
    if kind not in INDEX_KINDS:
        raise DiffauditError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    n = len(base)
    if metric == "cosine":
        x = np.ascontiguousarray(base, dtype=np.float32)
        d = x.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nl = max(1, min(n, nlist or int(4 * math.sqrt(n))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nl, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = int(seed) % (2**31)
            index.train(x)
            index.nprobe = min(nprobe, nl)
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
    elif metric == "hamming":
        x = np.ascontiguousarray(base, dtype=np.uint8)
        bits = x.shape[1] * 8
        if kind == "flat":
            index = faiss.IndexBinaryFlat(bits)
        elif kind == "ivf":
            nl = max(1, min(n, nlist or int(4 * math.sqrt(n))))
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nl)
            index.cp.seed = int(seed) % (2**31)
            index.train(x)
            index.nprobe = min(nprobe, nl)
        else:
            index = faiss.IndexBinaryHNSW(bits, hnsw_m)
            index.hnsw.efSearch = ef_search
    else:
        raise DiffauditError(f"unknown metric {metric!r}")
    index.add(x)
    return index


def search_edges(index, queries: np.ndarray, query_ids: np.ndarray, acc: EdgeAccumulator, *, metric: str,
                 dim: int, threshold: float, kind: str = "flat", k: int = 64) -> None:
    """Add to ``acc`` every (query id, neighbour) pair with similarity ≥ ``threshold``."""
    qids = np.asarray(query_ids, np.int64)
    if metric == "cosine":
        x = np.ascontiguousarray(queries, dtype=np.float32)
        if kind == "hnsw":
            sims, nbs = index.search(x, min(k, index.ntotal))
            keep = sims >= threshold - 1e-6
            acc.add(np.repeat(qids, nbs.shape[1]).reshape(nbs.shape)[keep], nbs[keep], sims[keep])
            return
        lims, sims, nbs = index.range_search(x, float(threshold) - 1e-6)  # IP > radius
        owner = np.repeat(qids, np.diff(lims.astype(np.int64)))
        acc.add(owner, nbs, sims.astype(np.float64))
    else:
        x = np.ascontiguousarray(queries, dtype=np.uint8)
        r = hamming_radius(threshold, dim)
        if kind == "hnsw":
            ham, nbs = index.search(x, min(k, index.ntotal))
            keep = (ham <= r) & (nbs >= 0)
            acc.add(np.repeat(qids, nbs.shape[1]).reshape(nbs.shape)[keep], nbs[keep], 1.0 - ham[keep] / dim)
            return
        lims, ham, nbs = index.range_search(x, r + 1)  # Hamming < radius
        owner = np.repeat(qids, np.diff(lims.astype(np.int64)))
        acc.add(owner, nbs, 1.0 - ham.astype(np.float64) / dim)


def brute_force_edges(base: np.ndarray, views: np.ndarray, *, metric: str, dim: int, threshold: float,
                      block: int = 1024) -> Edges:
    """Reference: all pairs by dense products. ``views`` (S, N, ...) with ``views[0]`` = ``base``."""
    from diffaudit.defenses.embedders import pairwise_similarity

    acc = EdgeAccumulator()
    n = len(base)
    for v in views:
        for s in range(0, n, block):
            sim = pairwise_similarity(v[s:s + block], base, metric, dim)
            qi, nb = np.nonzero(sim >= threshold - (1e-6 if metric == "cosine" else 1e-12))
            acc.add(qi + s, nb, sim[qi, nb])
    return acc.result()


def union_find_groups(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """Connected components of size ≥ 2 of the graph on ``n`` nodes with edges ``pairs`` (E, 2).

    Union-find with path compression; each root is the smallest index of its component.
    Returns sorted member arrays, ordered by their smallest member.
    """
    parent = list(range(n))

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    for a, b in np.asarray(pairs, np.int64).reshape(-1, 2).tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    order = np.argsort(roots, kind="stable")
    sorted_roots = roots[order]
    cuts = np.flatnonzero(np.diff(sorted_roots)) + 1
    groups = [np.sort(g) for g in np.split(order, cuts) if len(g) >= 2]
    groups.sort(key=lambda g: int(g[0]))
    return groups
