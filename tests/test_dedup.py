"""Near-duplicate search on real CIFAR-10 images with planted duplicates; faiss vs brute force; groups
(connected components) and the greedy keep list; the edge accumulator's memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.calibration import TRANSFORMS, calibrate, plant_duplicates
from diffaudit.defenses.dedup import DedupResult, find_duplicates, keep_list_selection, load_keep_list, write_keep_list
from diffaudit.defenses.embedders import get_embedder
from diffaudit.defenses.neighbours import (EdgeAccumulator, Edges, brute_force_edges, connected_groups, greedy_keep, hamming_radius,
                                           kept_partner)

# A true near-duplicate pair of the real CIFAR-10 training set (the same car, re-cropped), inside the
# 500-image sample below: the embedders are right to join it.
REAL_CIFAR_DUPLICATE = {"automobile_2285", "automobile_2638"}


@pytest.fixture(scope="module")
def cifar():
    from diffaudit.data import load_dataset
    from diffaudit.data.builtin import find_cifar10_root

    try:
        root = find_cifar10_root(None, name="cifar10")
    except DiffauditError as exc:
        pytest.skip(f"CIFAR-10 shards absent: {exc}")
    return load_dataset(str(root / "cifar10-train-000000.tar"), subset=500, subset_seed=0)


@pytest.fixture(scope="module")
def planted(cifar):
    return plant_duplicates(cifar.images, 12, seed=0)


def _family(planted, n):
    """Original index of every image (copies map to their original)."""
    fam = np.arange(len(planted.images))
    for a, b in planted.pairs:
        fam[b] = a
    return fam


@pytest.mark.parametrize("name", ["pixel", "phash"])
def test_planted_duplicates_found_and_distinct_images_not(cifar, planted, name):
    e = get_embedder(name)
    res = find_duplicates(planted.images, e)
    n = len(cifar)
    group_of = np.full(len(planted.images), -1)
    for gi, g in enumerate(res.groups):
        group_of[g] = gi
    kinds = np.asarray(planted.kinds)
    found = np.array([group_of[a] >= 0 and group_of[a] == group_of[b] for a, b in planted.pairs])
    for k in ("exact", "jpeg50", "bright-10", "bright+10"):
        assert found[kinds == k].all(), f"{name}: a {k} copy was not found"
    for k in ("shift1", "shift2"):  # calibrated recall ~99-100% (calibration table); 12 each here
        assert found[kinds == k].sum() >= 11, f"{name}: {k} recall {found[kinds == k].mean():.2f}"
    # distinct images are not joined: every edge links copies of one original, except one true CIFAR duplicate
    fam = _family(planted, n)
    keys = list(cifar.keys)
    cross = {frozenset((keys[fam[a]], keys[fam[b]])) for a, b in res.edges.pairs if fam[a] != fam[b]}
    assert cross == {frozenset(REAL_CIFAR_DUPLICATE)}
    assert res.duplicate_count[:n].sum() > 0 and res.duplicate_count.dtype == np.int64


@pytest.mark.parametrize("name", ["pixel", "phash"])
def test_faiss_flat_agrees_with_brute_force(planted, name):
    e = get_embedder(name)
    images = planted.images[:300]
    images = np.concatenate([images, planted.images[-72:]])  # keep the planted copies
    res = find_duplicates(images, e, threshold=e.default_threshold - 0.05, batch_size=128)
    views = e.embed_views(images)
    ref = brute_force_edges(views[0], views, metric=e.metric, dim=e.dim, threshold=e.default_threshold - 0.05)
    assert len(ref) > 10
    assert res.edges.as_set() == ref.as_set()
    np.testing.assert_allclose(res.edges.similarity, ref.similarity, atol=1e-5)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
@pytest.mark.parametrize("name", ["pixel", "phash"])
def test_approximate_indexes_never_invent_edges(planted, name, index):
    e = get_embedder(name)
    flat = find_duplicates(planted.images, e)
    approx = find_duplicates(planted.images, e, index=index, nlist=8, nprobe=4, k=16, seed=1)
    assert approx.edges.as_set() <= flat.edges.as_set()
    assert len(approx.edges) >= 0.8 * len(flat.edges)  # small data: nearly everything is found


def test_hamming_radius():
    assert hamming_radius(1 - 6 / 64, 64) == 6
    assert hamming_radius(1.0, 64) == 0
    assert hamming_radius(0.9, 64) == 6


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=40))))
def test_groups_equal_scipy_connected_components(case):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, pairs = case
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    groups = connected_groups(n, pairs)
    m = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else coo_matrix((n, n))
    _, labels = connected_components(m, directed=False)
    expected = sorted(sorted(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels) if (labels == c).sum() >= 2)
    assert sorted(g.tolist() for g in groups) == expected
    assert [int(g[0]) for g in groups] == sorted(int(g[0]) for g in groups)


def test_result_counts_keep_list_and_fields():
    edges = Edges(np.array([[0, 3], [3, 5], [1, 2]]), np.array([0.99, 0.98, 0.975]))
    res = DedupResult(n=7, threshold=0.97, edges=edges, groups=connected_groups(7, edges.pairs), embedder={"name": "pixel"})
    np.testing.assert_array_equal(res.duplicate_count, [2, 1, 1, 2, 0, 2, 0])  # groups: {0, 3, 5}, {1, 2}
    np.testing.assert_array_equal(res.neighbour_count, [1, 1, 1, 2, 0, 1, 0])
    # the chain 0~3~5: 5 is no near-duplicate of 0, so it is kept (only 3 and 2 have a kept near-duplicate)
    np.testing.assert_array_equal(res.keep_indices(), [0, 1, 4, 5, 6])
    np.testing.assert_array_equal(res.removed_indices(), [2, 3])
    np.testing.assert_array_equal(res.duplicate_of(), [-1, -1, 1, 0, -1, -1, -1])
    f = res.result_fields([f"k{i}" for i in range(7)])
    assert f["groups"][0] == {"members": [0, 3, 5], "keys": ["k0", "k3", "k5"], "size": 3, "kept": [0, 5],
                              "min_edge_similarity": 0.98}
    assert f["n_removed"] == 2 and f["n_groups"] == 2 and f["n_in_groups"] == 5 and f["keep_rule"] == "greedy"


def test_bad_threshold_and_keep_list_errors(tmp_path, digits):
    with pytest.raises(DiffauditError, match="threshold"):
        find_duplicates(digits.images[:10], get_embedder("pixel"), threshold=1.5)
    p = tmp_path / "keep.json"
    p.write_text('{"keys": ["not-a-key"]}')
    with pytest.raises(DiffauditError, match="not in"):
        load_keep_list(p, digits)
    p.write_text('{"indices": [1]}')
    with pytest.raises(DiffauditError, match="not a keep list"):
        load_keep_list(p, digits)


def test_keep_list_drops_only_its_removed_keys_and_refuses_other_data(tmp_path, digits):
    """A keep list made on a subset must not silently drop the examples it never saw (reviewer: a
    300-image keep list kept 292 of the 1,797 digits and claimed 1,505 duplicates)."""
    sub = digits.subset(np.arange(10))
    edges = Edges(np.array([[0, 3], [3, 5], [1, 2]]), np.array([0.99, 0.98, 0.975]))
    res = DedupResult(n=10, threshold=0.97, edges=edges, groups=connected_groups(10, edges.pairs), embedder={"name": "pixel"})
    p = write_keep_list(tmp_path / "keep.json", sub, res)
    kept, dropped = keep_list_selection(p, sub)
    np.testing.assert_array_equal(dropped, [2, 3])
    np.testing.assert_array_equal(kept, [0, 1, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(load_keep_list(p, sub), kept)
    rec = json.loads(p.read_text())  # each removed key with the kept near-duplicate it was dropped for
    assert rec["removed_keys"] == [sub.keys[2], sub.keys[3]] and rec["removed_duplicate_of"] == [sub.keys[1], sub.keys[0]]
    shuffled = sub.subset(np.arange(10)[::-1])  # a re-ordered load of the same data: matched by key
    np.testing.assert_array_equal(keep_list_selection(p, shuffled)[1], [6, 7])
    with pytest.raises(DiffauditError, match=r"1787 of the 1797 examples .* not in its kept or removed keys.*names 10 examples"):
        load_keep_list(p, digits)


def test_calibration_report_on_real_images(cifar):
    r = calibrate(get_embedder("pixel"), cifar.images[:300], n_per_transform=20, seed=0, thresholds=(0.97,))
    assert set(r["planted"]) == set(TRANSFORMS)
    assert r["planted"]["exact"]["min"] == pytest.approx(1.0)
    at = r["at"]["0.97"]
    assert at["recall"]["jpeg50"] == 1.0 and at["recall"]["bright+10"] == 1.0
    assert at["distinct_fpr"] < 0.05
    assert r["distinct"]["p50"] < 0.9


def _greedy_reference(n: int, pairs: np.ndarray) -> list[int]:
    """imagededup's rule, spelled out: walk in index order, keep i unless a kept image is its neighbour."""
    nbrs = {i: set() for i in range(n)}
    for a, b in pairs.tolist():
        nbrs[a].add(b)
        nbrs[b].add(a)
    kept: list[int] = []
    for i in range(n):
        if not nbrs[i] & set(kept):
            kept.append(i)
    return kept


def _chain_result(n: int) -> DedupResult:
    """``n`` unit vectors along an arc, 11° apart: neighbours at cosine 0.982, the ends far apart."""
    emb = get_embedder("pixel", max_shift=0)
    ang = np.deg2rad(np.arange(n) * 11.0)
    base = np.zeros((n, emb.dim), np.float32)
    base[:, 0], base[:, 1] = np.cos(ang), np.sin(ang)
    return find_duplicates(np.zeros((n, 8, 8, 1), np.uint8), emb, threshold=0.97, base=base)


def test_keep_list_of_a_chain_keeps_every_other_image():
    """Reviewer: a chain a~b~c~d is one group, and keeping only its first image dropped images that are
    not near-duplicates of anything kept (0 vs 7 is cosine 0.22)."""
    res = _chain_result(8)
    assert [g.tolist() for g in res.groups] == [list(range(8))]  # one group for reporting
    np.testing.assert_array_equal(res.keep_indices(), [0, 2, 4, 6])
    np.testing.assert_array_equal(res.duplicate_of(), [-1, 0, -1, 2, -1, 4, -1, 6])
    f = res.result_fields([str(i) for i in range(8)])
    assert f["n_removed"] == 4 and f["groups"][0]["kept"] == [0, 2, 4, 6] and f["duplicate_count"] == [7] * 8


_graphs = st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=120)))


@settings(deadline=None, max_examples=150)
@given(_graphs)
def test_greedy_keep_is_a_maximal_independent_set(case):
    """Every removed node has an edge to a kept node; no edge joins two kept nodes; imagededup's order."""
    n, raw = case
    pairs = np.asarray([(min(a, b), max(a, b)) for a, b in raw if a != b], np.int64).reshape(-1, 2)
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs
    keep = greedy_keep(n, pairs)
    assert np.flatnonzero(keep).tolist() == _greedy_reference(n, pairs)
    assert not (keep[pairs[:, 0]] & keep[pairs[:, 1]]).any()
    sim = np.linspace(0.99, 0.98, len(pairs))
    partner = kept_partner(keep, Edges(pairs, sim))
    edge_set = {tuple(p) for p in pairs.tolist()}
    for i in np.flatnonzero(~keep).tolist():
        j = int(partner[i])
        assert keep[j] and (min(i, j), max(i, j)) in edge_set
    assert (partner[keep] == -1).all()
    # pairs need not be sorted: the same mask from a shuffled edge list
    np.testing.assert_array_equal(greedy_keep(n, pairs[::-1]), keep)


def test_removed_real_images_have_a_kept_near_duplicate():
    """Real CIFAR-10 (5,000 training images, pixel embedder): chains exist (3 of the 16 images the old
    first-of-each-group rule removed had no near-duplicate kept; 54 of 179 at 20,000). Now every removed
    image is at or above the threshold (shift-tolerant, recomputed from the pixels) to the kept image
    it was dropped for, and some group keeps more than one image."""
    from diffaudit.data import load_dataset

    try:
        ds = load_dataset("cifar10", subset=5000, subset_seed=0)
    except DiffauditError as exc:
        pytest.skip(f"CIFAR-10 absent: {exc}")
    e = get_embedder("pixel")
    res = find_duplicates(ds.images, e)
    removed = res.removed_indices()
    partner = res.duplicate_of()[removed]
    assert len(removed) >= 10 and res.keep_mask[partner].all()
    assert any(len(g["kept"]) > 1 for g in res.result_fields(ds.keys)["groups"])
    views_r, views_p = e.embed_views(ds.images[removed]), e.embed_views(ds.images[partner])
    sim = np.maximum(np.einsum("snd,nd->sn", views_r, views_p[0]).max(0), np.einsum("snd,nd->sn", views_p, views_r[0]).max(0))
    assert (sim >= res.threshold - 1e-5).all(), sim.min()


@settings(deadline=None, max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(-1, 30), st.floats(0.5, 1.0, width=32)), max_size=300),
       st.integers(1, 3), st.integers(2, 50))
def test_edge_accumulator_merges_in_any_order(hits, repeat, chunk):
    """Chunked, de-duplicated-as-it-goes accumulation equals the plain reference (largest similarity per pair)."""
    ref: dict[tuple[int, int], float] = {}
    for q, nb, s in hits:
        if q != nb and nb >= 0:
            key = (min(q, nb), max(q, nb))
            ref[key] = max(ref.get(key, -np.inf), s)
    acc = EdgeAccumulator()
    acc.CHUNK = chunk
    arr = np.asarray(hits, np.float64).reshape(-1, 3)
    for _ in range(repeat):
        for s in range(0, len(arr), 17):
            acc.add(arr[s:s + 17, 0].astype(np.int64), arr[s:s + 17, 1].astype(np.int64), arr[s:s + 17, 2])
    edges = acc.result()
    assert [tuple(p) for p in edges.pairs.tolist()] == sorted(ref)
    np.testing.assert_allclose(edges.similarity, [ref[k] for k in sorted(ref)], rtol=1e-6)


def test_edge_accumulator_memory_is_bounded_by_unique_edges():
    """Reviewer: every raw hit of every shift view was kept until the end ((copies)² × views). The same
    20,000 hits added 100 times must hold about one copy of the 10,000 unique edges, not 100."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 5000, 10_000)
    nb = (q + 1 + rng.integers(0, 4999, 10_000)) % 5000
    q, nb = np.r_[q, nb], np.r_[nb, q]  # both directions, as a range search finds them
    sim = rng.uniform(0.97, 1.0, len(q)).astype(np.float32)
    tracemalloc.start()
    try:
        acc = EdgeAccumulator()
        acc.CHUNK = 1024  # the pending floor (CHUNK edges, 12 MB by default) is below these 10,000
        for _ in range(100):
            acc.add(q, nb, sim)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n_unique = len(acc.result())
    assert n_unique <= 10_000
    assert held < 40 * n_unique, f"{held / 1e6:.1f} MB held for {n_unique} unique edges"


@pytest.mark.parametrize("option,value", [("k", 0), ("nprobe", 0), ("nlist", 0), ("k", -3)])
def test_search_options_must_be_positive(digits, option, value):
    with pytest.raises(DiffauditError, match=f"--{option} must be a whole number of at least 1"):
        find_duplicates(digits.images[:20], get_embedder("pixel"), index="ivf", **{option: value})


def test_data_flags_names_only_the_options_given():
    from diffaudit.data.options import data_flags

    defaults = {"image_size": None, "center_crop": None, "subset": None, "subset_seed": 0, "mode": None,
                "skip_bad": False, "cifar_root": None}
    assert data_flags("digits", defaults) == "digits"
    assert data_flags("digits", {**defaults, "subset": 64}) == "digits --subset 64"
    assert data_flags("digits", {**defaults, "subset": 64, "subset_seed": 3, "skip_bad": True, "mode": "RGB"}) == \
        "digits --subset 64 --subset-seed 3 --mode RGB --skip-bad"
    assert data_flags("digits", {**defaults, "subset_seed": 3}) == "digits"  # a seed without --subset selects nothing


def test_the_default_ivf_cells_leave_faiss_the_points_it_wants(digits, capfd):
    """4·sqrt(N) cells for large N, at most N/39 so faiss's k-means does not warn (it printed "WARNING
    clustering 1797 points to 169 centroids" to the terminal of `dedup --index ivf` on digits)."""
    from diffaudit.defenses.neighbours import ivf_cells

    assert ivf_cells(1797, None) == 46 and ivf_cells(10**6, None) == 4000 and ivf_cells(10, None) == 1
    assert ivf_cells(1797, 500) == 500 and ivf_cells(20, 500) == 20
    capfd.readouterr()
    find_duplicates(digits.images, get_embedder("pixel"), index="ivf", seed=0)
    assert "WARNING clustering" not in capfd.readouterr().err
