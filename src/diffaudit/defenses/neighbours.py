"""Near-duplicate edges with faiss: every pair of images whose similarity is at least a threshold.

The index holds each image's plain embedding (view 0); queries are every view of every image
(:meth:`Embedder.embed_views`, translated copies for shift tolerance), streamed in batches so
memory stays bounded by the index, one batch's hits and the unique edges found (hits are
de-duplicated as they arrive, :class:`EdgeAccumulator`). An edge (i, j), i < j, is kept with the largest
similarity any view of i or j reached against the other.

Index kinds:

- ``flat``: exact (``IndexFlatIP`` on unit vectors, ``IndexBinaryFlat`` on hashes) with
  ``range_search``: every edge is found. Use up to a few hundred thousand images on the CPU.
- ``ivf``: inverted lists (``IndexIVFFlat`` / ``IndexBinaryIVF``, ``nlist`` cells (:func:`ivf_cells`) trained
  on the data with a seeded k-means, ``nprobe`` cells searched) with ``range_search``: approximate,
  for millions of images.
- ``hnsw``: a graph index (``IndexHNSWFlat`` / ``IndexBinaryHNSW``); ``k`` nearest neighbours per
  query, kept when above the threshold: approximate, and a group larger than ``k`` is only joined
  through chains (:func:`connected_groups` still merges it).

:func:`brute_force_edges` computes the same edges with dense matrix products (the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from diffaudit.core.errors import DiffauditError

INDEX_KINDS = ("flat", "ivf", "hnsw")
MIN_POINTS_PER_CELL = 39  # faiss's k-means warns below this many training points per centroid


def ivf_cells(n: int, nlist: int | None) -> int:
    """The number of IVF cells for ``n`` points: ``nlist`` as given (at most ``n``), else 4·sqrt(n) capped at
    n / :data:`MIN_POINTS_PER_CELL` so that faiss's k-means has the points per cell it asks for; at least 1."""
    if nlist is not None:
        return max(1, min(n, nlist))
    return max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CELL))


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
    """Collects directed hits (query, neighbour, similarity) into unique undirected edges.

    Hits are de-duplicated as they arrive, :attr:`CHUNK` at a time: each chunk is folded into canonical
    edges (min, max) with their largest similarity; edges already known only raise the known similarity,
    and new ones wait in a pending list that is merged into the known edges once it outnumbers them.
    Memory is therefore bounded by the unique edges (12 bytes each, an int64 key and a float32
    similarity; about twice that during a merge) plus one chunk, never the raw repeats of every
    shift view (a cluster of m copies gives m² hits per view and batch).
    Node ids must lie in [0, 2**31).
    """

    #: Hits folded at once; pending new edges are merged once they exceed max(known edges, CHUNK).
    CHUNK = 1 << 20

    def __init__(self) -> None:
        self._keys = np.zeros(0, np.int64)  # sorted, unique
        self._sims = np.zeros(0, np.float32)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_pending = 0

    def add(self, q: np.ndarray, nb: np.ndarray, sim: np.ndarray) -> None:
        """Add hits: ``q``, ``nb`` int (H,) node ids (``nb`` < 0 = no neighbour), ``sim`` (H,) similarity."""
        q, nb, sim = np.ravel(q), np.ravel(nb), np.ravel(sim)
        for s in range(0, len(q), self.CHUNK):
            qc, nc = np.asarray(q[s:s + self.CHUNK], np.int64), np.asarray(nb[s:s + self.CHUNK], np.int64)
            keep = (qc != nc) & (nc >= 0)
            keys, sims = _unique_max(_pair_keys(qc[keep], nc[keep]), np.asarray(sim[s:s + self.CHUNK], np.float32)[keep])
            keys, sims = self._update_known(keys, sims)
            if len(keys):
                self._pending.append((keys, sims))
                self._n_pending += len(keys)
            if self._n_pending > max(len(self._keys), self.CHUNK):
                self._merge()

    def _update_known(self, keys: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raise the similarity of the known edges among ``keys`` (sorted, unique); return the others."""
        if len(self._keys) == 0 or len(keys) == 0:
            return keys, sims
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        known = self._keys[pos] == keys
        self._sims[pos[known]] = np.maximum(self._sims[pos[known]], sims[known])
        return keys[~known], sims[~known]

    def _merge(self) -> None:
        """Fold the pending edges (never known ones: :meth:`_update_known` took those) into the known ones."""
        if self._pending:
            keys, sims = _unique_max(np.concatenate([k for k, _ in self._pending]), np.concatenate([v for _, v in self._pending]))
            self._pending, self._n_pending = [], 0
            pos = np.searchsorted(self._keys, keys)  # disjoint sorted sets: an insertion, no sort of the known edges
            self._keys, self._sims = np.insert(self._keys, pos, keys), np.insert(self._sims, pos, sims)

    def result(self) -> Edges:
        """The unique edges, sorted by (i, j), each with its largest similarity."""
        self._merge()
        pairs = np.stack([self._keys >> 32, self._keys & 0xFFFFFFFF], 1) if len(self._keys) else np.zeros((0, 2), np.int64)
        return Edges(pairs, self._sims.astype(np.float64))


def _pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 (H,) key min(a, b)·2³² + max(a, b) of each pair: sorting keys sorts the pairs by (i, j)."""
    if len(a) and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= 2**31):
        raise DiffauditError("near-duplicate search supports node ids in [0, 2**31)")
    return (np.minimum(a, b) << 32) | np.maximum(a, b)


def _unique_max(keys: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` (int64 (H,)) with the largest of their ``sims`` (float32 (H,))."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    order = np.argsort(keys, kind="stable")  # timsort: linear on already sorted runs (a merge)
    keys, sims = keys[order], sims[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.maximum.reduceat(sims, starts)


def check_search_options(*, k: int, nlist: int | None, nprobe: int) -> None:
    """Raise :class:`DiffauditError` (naming the flag) unless ``k`` ≥ 2, ``nprobe`` ≥ 1 and ``nlist``
    (when given) ≥ 1: faiss itself fails on values below 1 with an assertion or a C++ error, and with
    ``k`` 1 each image's one neighbour is itself, so no duplicate could ever be found."""
    given = [("--k", k), ("--nprobe", nprobe)] + ([("--nlist", nlist)] if nlist is not None else [])
    for flag, value in given:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DiffauditError(f"{flag} must be a whole number of at least 1; got {value!r}")
    if k == 1:
        raise DiffauditError("--k must be at least 2: each image is its own nearest neighbour, so with --k 1 no "
                             "near-duplicate can be found")


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
            nl = ivf_cells(n, nlist)
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
            nl = ivf_cells(n, nlist)
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
    """Add to ``acc`` every (query id, neighbour) pair with similarity ≥ ``threshold``.

    ``queries``: float32 (B, D) unit vectors or uint8 (B, dim/8) hashes (one view of B images with ids
    ``query_ids`` int (B,)). One faiss call: its raw hits (up to B × the largest group) are this
    batch's memory, bounded by the caller's batch size.
    """
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
        acc.add(owner, nbs, sims)
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
        acc.add(owner, nbs, 1.0 - ham.astype(np.float32) / np.float32(dim))


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


def connected_groups(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """Connected components of size ≥ 2 of the graph on ``n`` nodes with edges ``pairs`` int (E, 2).

    Near-duplicate groups (copies of copies are one group), for reporting. Computed with
    :func:`scipy.sparse.csgraph.connected_components` (memory O(E) arrays, no per-edge Python objects).
    Returns sorted int64 member arrays, ordered by their smallest member.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")  # members ascending within each label
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    groups = [g.astype(np.int64) for g in np.split(order, cuts) if len(g) >= 2]
    groups.sort(key=lambda g: int(g[0]))
    return groups


def greedy_keep(n: int, pairs: np.ndarray) -> np.ndarray:
    """Deduplication's keep mask, bool (N,): walk the nodes in index order and keep node i unless an
    already-kept node has an edge to it (imagededup's ``get_files_to_remove`` / ``find_duplicates_to_remove``, which the paper used).

    Every dropped node then has an edge to a kept node (a near-duplicate of it is kept), and no two
    kept nodes share an edge. A chain 0~1~2~3 keeps 0 and 2: keeping only the first node of each
    connected component would drop images that are not near-duplicates of anything kept.
    ``pairs``: int (E, 2), i < j in each row (as :class:`Edges` holds them). Memory O(N) beyond it.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    keep = np.ones(n, bool)
    if len(pairs) == 0:
        return keep
    if (pairs[:, 0] >= pairs[:, 1]).any():
        raise DiffauditError("greedy_keep needs edges (i, j) with i < j")
    if (np.diff(pairs[:, 0]) < 0).any():
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    first = pairs[:, 0]
    starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]])
    ends = np.r_[starts[1:], len(first)]
    for i, a, b in zip(first[starts].tolist(), starts.tolist(), ends.tolist()):  # i ascending: keep[i] is final
        if keep[i]:
            keep[pairs[a:b, 1]] = False  # every later neighbour of a kept node goes
    return keep


def kept_partner(keep: np.ndarray, edges: Edges) -> np.ndarray:
    """int64 (N,): for each dropped node, its most similar kept neighbour (ties: smallest index); -1 for
    kept nodes and for dropped nodes without a kept neighbour (none under :func:`greedy_keep`)."""
    out = np.full(len(keep), -1, np.int64)
    a, b = edges.pairs[:, 0], edges.pairs[:, 1]
    cross = keep[a] != keep[b]  # one end kept, the other dropped
    a, b, sim = a[cross], b[cross], edges.similarity[cross]
    dropped, partner = np.where(keep[a], b, a), np.where(keep[a], a, b)
    order = np.lexsort((partner, -sim, dropped))  # per dropped node: best first
    first = order[np.r_[True, dropped[order][1:] != dropped[order][:-1]]] if len(order) else order
    out[dropped[first]] = partner[first]
    return out
