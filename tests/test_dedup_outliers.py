"""Outlier scores (mean distance to the k nearest neighbours) and their correlation with MIA scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.embedders import get_embedder
from diffaudit.defenses.outliers import knn_mean_distance, outlier_exposure, outlier_mia_correlation, outlier_scores


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(deadline=None, max_examples=25)
@given(n=st.integers(2, 40), k=st.integers(1, 60), seed=st.integers(0, 1000))
def test_knn_mean_distance_matches_brute_force(n, k, seed):
    rng = np.random.default_rng(seed)
    x = _unit(rng, n, 5)
    got = knn_mean_distance(x, metric="cosine", dim=5, k=k, batch_size=7)
    d = 1.0 - x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(d, np.inf)
    kk = min(k, n - 1)
    expected = np.sort(d, axis=1)[:, :kk].mean(1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_knn_mean_distance_excludes_self_among_exact_duplicates_and_hamming():
    x = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(knn_mean_distance(x, metric="cosine", dim=2, k=1), [0.0, 0.0, 1.0], atol=1e-6)
    h = np.array([[0b11110000], [0b11110000], [0b00001111]], dtype=np.uint8)
    np.testing.assert_allclose(knn_mean_distance(h, metric="hamming", dim=8, k=2), [0.5, 0.5, 1.0])
    with pytest.raises(DiffauditError, match="at least 2"):
        knn_mean_distance(x[:1], metric="cosine", dim=2)


def test_outlier_scores_flag_the_odd_image(digits):
    rng = np.random.default_rng(0)
    imgs = np.concatenate([digits.images[:60], rng.integers(0, 256, (1, 8, 8, 1), dtype=np.uint8)])
    s = outlier_scores(imgs, get_embedder("pixel", max_shift=0), k=1000)
    assert s.shape == (61,) and np.argmax(s) == 60  # the noise image is the outlier; k capped at N - 1


def test_spearman_correlation_and_validation():
    a = np.arange(10.0)
    c = outlier_mia_correlation(a, a ** 3)
    assert c.rho == pytest.approx(1.0) and c.n == 10 and c.pvalue < 1e-6
    assert outlier_mia_correlation(a, -a).rho == pytest.approx(-1.0)
    with pytest.raises(DiffauditError, match="differ in length"):
        outlier_mia_correlation(a, a[:5])
    with pytest.raises(DiffauditError, match="membership scores: 1 non-finite"):
        outlier_mia_correlation(a, np.where(a == 3, np.nan, a))
    with pytest.raises(DiffauditError, match="constant"):
        outlier_mia_correlation(a, np.ones(10))


def test_outlier_exposure_report(digits):
    imgs = digits.images[:50]
    out = outlier_scores(imgs, get_embedder("pixel", max_shift=0), k=10)
    mia = out * 2 + 1  # a score that rises with outlierness
    rep = outlier_exposure(imgs, mia, k=10, n_bins=5)
    assert rep["k"] == 10 and rep["n_images"] == 50 and rep["spearman"]["rho"] == pytest.approx(1.0)
    assert outlier_exposure(imgs[:8], mia[:8], k=10)["k"] == 7  # capped: every other image
    assert sum(b["n"] for b in rep["bins"]) == 50
    means = [b["mean_mia_score"] for b in rep["bins"]]
    assert means == sorted(means)
