"""Exact maximum clique with a deterministic work bound (paper §4.1,
generate-and-filter: a prompt's maximum clique).

Branch and bound with greedy colouring (Tomita & Seki's MCQ / Tomita et al.'s MCS, in the bitset form
of San Segundo's BBMC): vertices are ordered by non-increasing degree; at each search node the
candidate set P is greedily coloured, and a branch on vertex v is cut when |R| + colour(v) ≤ |best|
(a colouring with c colours bounds any clique inside by c). Candidate sets are Python integers used
as bitsets, so one colouring step costs a few big-integer operations.

Work is bounded by a count of node expansions (``max_expansions``), never by wall-clock time, so the
same graph always gives the same answer. When the bound is hit the best clique found so far is
returned with ``bound_hit=True`` (it is a clique, maybe not a maximum one).

Before searching, a greedy clique gives a lower bound L and vertices of degree < L are peeled off
(k-core pruning): they cannot be in a larger clique. On the near-duplicate graphs of extraction (a
tight clique of copies plus scattered isolated generations) the search is then nearly free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError

#: Default node-expansion bound: a dense random graph of 500 nodes stops within a few seconds.
DEFAULT_MAX_EXPANSIONS = 50_000


@dataclass
class CliqueResult:
    """A clique of the graph.

    Attributes:
        members: int64 (s,) sorted vertex indices of the clique (s = 0 only for an empty graph).
        bound_hit: True when the search stopped at ``max_expansions`` (the clique may not be maximum).
        expansions: search nodes expanded (deterministic for a given graph and bound).
    """

    members: np.ndarray
    bound_hit: bool
    expansions: int

    @property
    def size(self) -> int:
        return int(len(self.members))


def validate_adjacency(adj: Any, *, name: str = "adjacency") -> np.ndarray:
    """A square symmetric boolean matrix (N, N); the diagonal is ignored (cleared)."""
    a = np.asarray(adj)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise DiffauditError(f"{name} must be a square (N, N) matrix, got shape {a.shape}")
    a = a.astype(bool, copy=True)
    np.fill_diagonal(a, False)
    if not np.array_equal(a, a.T):
        raise DiffauditError(f"{name} is not symmetric: cliques need an undirected graph")
    return a


def _bitsets(adj: np.ndarray) -> list[int]:
    """Row i as an integer whose bit j is adj[i, j]."""
    packed = np.packbits(adj, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def _greedy_clique(order: list[int], nbr: list[int]) -> list[int]:
    """Greedy clique in position space: take vertices in order while adjacent to all taken."""
    best: list[int] = []
    for start in order[: min(len(order), 32)]:  # a few seeds: cheap and deterministic
        clique, cand = [start], nbr[start]
        while cand:
            # next: the candidate with the lowest position (= highest degree)
            low = cand & -cand
            v = low.bit_length() - 1
            clique.append(v)
            cand &= nbr[v]
        if len(clique) > len(best):
            best = clique
    return best


def _colour_sort(p: int, nbr: list[int], kmin: int) -> tuple[list[int], list[int]]:
    """Greedy sequential colouring of P; returns the vertices with colour ≥ kmin and their colours,
    in non-decreasing colour order (MCQ's colour sort)."""
    order: list[int] = []
    colours: list[int] = []
    u, k = p, 0
    while u:
        k += 1
        q = u
        while q:
            low = q & -q
            v = low.bit_length() - 1
            q &= ~(nbr[v] | low)  # the next vertex of this colour is adjacent to none of it
            u ^= low
            if k >= kmin:
                order.append(v)
                colours.append(k)
    return order, colours


def max_clique(adj: Any, *, max_expansions: int = DEFAULT_MAX_EXPANSIONS) -> CliqueResult:
    """The maximum clique of an undirected graph (exact unless ``bound_hit``).

    adj: boolean (N, N) symmetric adjacency (diagonal ignored). Ties between maximum cliques are
    broken deterministically (the first found in the search order). Returns :class:`CliqueResult`;
    a graph without edges has a clique of one vertex (the lowest-numbered one), an empty graph none.
    """
    if max_expansions < 1:
        raise DiffauditError(f"max_expansions must be at least 1, got {max_expansions}")
    a = validate_adjacency(adj)
    n = a.shape[0]
    if n == 0:
        return CliqueResult(np.zeros(0, dtype=np.int64), False, 0)
    deg = a.sum(1)
    if deg.max() == 0:
        return CliqueResult(np.array([0], dtype=np.int64), False, 0)
    # positions: vertices by non-increasing degree, ties by index (deterministic)
    perm = np.lexsort((np.arange(n), -deg))
    ap = a[np.ix_(perm, perm)]
    nbr = _bitsets(ap)
    best = _greedy_clique(list(range(n)), nbr)
    # k-core pruning: a vertex of degree < |best| cannot be in a larger clique (peel iteratively)
    keep = np.ones(n, dtype=bool)
    degp = ap.sum(1).astype(np.int64)
    queue = list(np.flatnonzero(degp < len(best)))
    while queue:
        v = queue.pop()
        if not keep[v]:
            continue
        keep[v] = False
        nb = np.flatnonzero(ap[v] & keep)
        degp[nb] -= 1
        queue.extend(nb[degp[nb] < len(best)].tolist())
    alive = int.from_bytes(np.packbits(keep, bitorder="little").tobytes(), "little")
    expansions, bound_hit = 0, False
    if alive:
        expansions = 1
        order, colours = _colour_sort(alive, nbr, len(best) + 1)
        # frame: [R, P, order, colours, next index]
        stack: list[list[Any]] = [[[], alive, order, colours, len(order) - 1]]
        while stack:
            f = stack[-1]
            i = f[4]
            if i < 0:
                stack.pop()
                continue
            f[4] = i - 1
            r = f[0]
            if len(r) + f[3][i] <= len(best):
                stack.pop()  # colours only decrease from here: the whole frame is bounded
                continue
            v = f[2][i]
            new_p = f[1] & nbr[v]
            f[1] &= ~(1 << v)
            r2 = r + [v]
            if not new_p:
                if len(r2) > len(best):
                    best = r2
                continue
            if expansions >= max_expansions:
                bound_hit = True
                break
            expansions += 1
            order, colours = _colour_sort(new_p, nbr, len(best) - len(r2) + 1)
            stack.append([r2, new_p, order, colours, len(order) - 1])
    members = np.sort(perm[np.asarray(best, dtype=np.int64)])
    return CliqueResult(members.astype(np.int64), bound_hit, expansions)


def disjoint_cliques(adj: Any, *, min_size: int, max_expansions: int = DEFAULT_MAX_EXPANSIONS) -> list[CliqueResult]:
    """Every clique of at least ``min_size`` vertices, found greedily largest-first and disjoint.

    Repeats: take the maximum clique of the remaining vertices; stop when it is smaller than
    ``min_size``; remove its vertices. Among unconditional generations each clique is a set of
    candidate copies of one image (issue 3, black-box mode; one memorized image's copies may split
    into several cliques). Members are indices into ``adj``. Each search
    has its own ``max_expansions`` bound.
    """
    if min_size < 1:
        raise DiffauditError(f"min_size must be at least 1, got {min_size}")
    a = validate_adjacency(adj)
    remaining = np.arange(a.shape[0])
    out: list[CliqueResult] = []
    while len(remaining) >= min_size:
        sub = a[np.ix_(remaining, remaining)]
        if sub.sum(1).max(initial=0) + 1 < min_size:
            break
        res = max_clique(sub, max_expansions=max_expansions)
        if res.size < min_size:
            break
        out.append(CliqueResult(remaining[res.members], res.bound_hit, res.expansions))
        remaining = np.setdiff1d(remaining, remaining[res.members])
    return out
