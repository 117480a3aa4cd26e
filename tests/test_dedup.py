"""Near-duplicate search on real CIFAR-10 images with planted duplicates; faiss vs brute force; union-find."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.calibration import TRANSFORMS, calibrate, plant_duplicates
from diffaudit.defenses.dedup import DedupResult, find_duplicates, keep_list_selection, load_keep_list, write_keep_list
from diffaudit.defenses.embedders import get_embedder
from diffaudit.defenses.neighbours import Edges, brute_force_edges, hamming_radius, union_find_groups

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
def test_union_find_equals_connected_components(case):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, pairs = case
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    groups = union_find_groups(n, pairs)
    m = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else coo_matrix((n, n))
    _, labels = connected_components(m, directed=False)
    expected = sorted(sorted(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels) if (labels == c).sum() >= 2)
    assert sorted(g.tolist() for g in groups) == expected
    assert [int(g[0]) for g in groups] == sorted(int(g[0]) for g in groups)


def test_result_counts_keep_list_and_fields():
    edges = Edges(np.array([[0, 3], [3, 5], [1, 2]]), np.array([0.99, 0.98, 0.975]))
    res = DedupResult(n=7, threshold=0.97, edges=edges, groups=union_find_groups(7, edges.pairs), embedder={"name": "pixel"})
    np.testing.assert_array_equal(res.duplicate_count, [2, 1, 1, 2, 0, 2, 0])
    np.testing.assert_array_equal(res.neighbour_count, [1, 1, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(res.keep_indices(), [0, 1, 4, 6])
    f = res.result_fields([f"k{i}" for i in range(7)])
    assert f["groups"][0] == {"members": [0, 3, 5], "keys": ["k0", "k3", "k5"], "size": 3, "min_edge_similarity": 0.98}
    assert f["n_removed"] == 3 and f["n_groups"] == 2 and f["n_in_groups"] == 5


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
    res = DedupResult(n=10, threshold=0.97, edges=edges, groups=union_find_groups(10, edges.pairs), embedder={"name": "pixel"})
    p = write_keep_list(tmp_path / "keep.json", sub, res)
    kept, dropped = keep_list_selection(p, sub)
    np.testing.assert_array_equal(dropped, [2, 3, 5])
    np.testing.assert_array_equal(kept, [0, 1, 4, 6, 7, 8, 9])
    np.testing.assert_array_equal(load_keep_list(p, sub), kept)
    shuffled = sub.subset(np.arange(10)[::-1])  # a re-ordered load of the same data: matched by key
    np.testing.assert_array_equal(keep_list_selection(p, shuffled)[1], [4, 6, 7])
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
