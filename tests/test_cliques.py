"""Maximum clique: hand-made graphs, brute force, pathological graphs within the expansion bound."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from diffaudit.attacks.extraction.cliques import DEFAULT_MAX_EXPANSIONS, disjoint_cliques, max_clique
from diffaudit.core.errors import DiffauditError


def graph(n, edges):
    a = np.zeros((n, n), bool)
    for i, j in edges:
        a[i, j] = a[j, i] = True
    return a


def is_clique(a, members):
    return all(a[i, j] for i, j in itertools.combinations(members, 2))


def brute_size(a):
    n = len(a)
    for size in range(n, 0, -1):
        for c in itertools.combinations(range(n), size):
            if is_clique(a, c):
                return size
    return 0


def test_hand_made_graphs():
    # two triangles joined by an edge, plus a K4 on {6, 7, 8, 9}
    a = graph(10, [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 5), (3, 5),
                   (6, 7), (6, 8), (6, 9), (7, 8), (7, 9), (8, 9)])
    r = max_clique(a)
    assert r.members.tolist() == [6, 7, 8, 9] and not r.bound_hit
    # a 5-cycle: maximum clique 2
    assert max_clique(graph(5, [(i, (i + 1) % 5) for i in range(5)])).size == 2
    # no edges: one vertex; empty graph: nothing
    assert max_clique(np.zeros((4, 4), bool)).members.tolist() == [0]
    assert max_clique(np.zeros((0, 0), bool)).size == 0
    # the diagonal is ignored
    assert max_clique(np.eye(3, dtype=bool)).size == 1


def test_planted_clique_in_noise():
    rng = np.random.default_rng(0)
    u = np.triu(rng.random((120, 120)) < 0.1, 1)
    a = u | u.T
    planted = np.sort(rng.choice(120, 14, replace=False))
    a[np.ix_(planted, planted)] = True
    np.fill_diagonal(a, False)
    r = max_clique(a)
    assert r.members.tolist() == planted.tolist()


def test_matches_brute_force_on_random_small_graphs():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(1, 12))
        u = np.triu(rng.random((n, n)) < rng.uniform(0.1, 0.9), 1)
        a = u | u.T
        r = max_clique(a)
        assert is_clique(a, r.members)
        assert r.size == brute_size(a)


def test_complete_graph_of_500_is_immediate():
    t = time.perf_counter()
    r = max_clique(np.ones((500, 500), bool))
    assert r.size == 500 and not r.bound_hit
    assert time.perf_counter() - t < 5


def test_dense_random_graph_of_500_stops_at_the_bound_deterministically():
    rng = np.random.default_rng(2)
    u = np.triu(rng.random((500, 500)) < 0.5, 1)
    a = u | u.T
    t = time.perf_counter()
    r = max_clique(a)  # the default bound (exact search would need ~10^6 expansions)
    elapsed = time.perf_counter() - t
    assert r.bound_hit and r.expansions == DEFAULT_MAX_EXPANSIONS
    assert is_clique(a, r.members) and r.size >= 10  # G(500, 1/2) has cliques of ~13
    assert elapsed < 20
    again = max_clique(a, max_expansions=2_000)
    assert again.bound_hit and again.size <= r.size
    assert max_clique(a, max_expansions=2_000).members.tolist() == again.members.tolist()  # work-bounded, not timed


def test_disjoint_cliques_each_reported():
    # cliques of 6 and 4 with a bridge edge, plus noise vertices
    a = np.zeros((15, 15), bool)
    for group in ([0, 2, 4, 6, 8, 10], [1, 3, 5, 7]):
        a[np.ix_(group, group)] = True
    a[10, 1] = a[1, 10] = True
    np.fill_diagonal(a, False)
    found = disjoint_cliques(a, min_size=4)
    assert [c.members.tolist() for c in found] == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7]]
    assert disjoint_cliques(a, min_size=5)[0].size == 6 and len(disjoint_cliques(a, min_size=5)) == 1


def test_bad_graphs_rejected():
    with pytest.raises(DiffauditError, match="not symmetric"):
        max_clique(graph(3, []) | np.triu(np.ones((3, 3), bool), 1))
    with pytest.raises(DiffauditError, match="square"):
        max_clique(np.zeros((2, 3), bool))
    with pytest.raises(DiffauditError, match="max_expansions"):
        max_clique(np.zeros((2, 2), bool), max_expansions=0)
