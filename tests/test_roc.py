"""Known-answer tests of the ROC metrics, bootstrap intervals and result types (issue 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.evaluation import (
    AttackEvaluation,
    auc,
    balanced_accuracy,
    bootstrap_ci,
    evaluate_attack,
    evaluate_sweep,
    roc_curve,
    tpr_at_fpr,
)


def gaussian_scores(n_pos: int, n_neg: int, delta: float, seed: int):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(delta, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    return s, y


def test_hand_computed_example():
    s = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([True, False, True, False])
    assert auc(s, y) == pytest.approx(0.75)
    c = roc_curve(s, y)
    np.testing.assert_allclose(c.fpr, [0, 0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(c.tpr, [0, 0.5, 0.5, 1.0, 1.0])
    assert c.thresholds[0] == np.inf
    assert balanced_accuracy(s, y) == pytest.approx(0.75)  # threshold 0.7: TPR 1, FPR 0.5
    assert tpr_at_fpr(s, y, 0.5) == pytest.approx(1.0)
    # FPR target 0.5 with 2 negatives is measurable; the best TPR at FPR 0 is 0.5
    assert tpr_at_fpr(s, y, 0.5 - 1e-9) is None  # below 1/2 cannot be measured with 2 negatives


def test_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 6, 300).astype(float)  # many ties
    y = rng.random(300) < 0.4 + 0.05 * s
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    c = roc_curve(s, y)
    np.testing.assert_allclose(c.fpr, fpr)
    np.testing.assert_allclose(c.tpr, tpr)


def test_gaussian_scores_give_analytical_auc_and_tpr():
    delta = 1.5
    s, y = gaussian_scores(20_000, 20_000, delta, seed=2)
    assert auc(s, y) == pytest.approx(norm.cdf(delta / np.sqrt(2)), abs=0.01)
    for fpr in (0.1, 0.01):
        expected = norm.cdf(delta - norm.ppf(1 - fpr))  # TPR of the threshold at the OUT (1-fpr) quantile
        assert tpr_at_fpr(s, y, fpr) == pytest.approx(expected, abs=0.03)
    assert balanced_accuracy(s, y) == pytest.approx(norm.cdf(delta / 2), abs=0.01)  # threshold at delta/2


def test_tpr_at_low_fpr_with_few_negatives_is_none_not_zero():
    s, y = gaussian_scores(2000, 500, 3.0, seed=3)  # 500 negatives: resolution 0.002
    assert tpr_at_fpr(s, y, 0.001) is None
    assert tpr_at_fpr(s, y, 0.002) is not None
    ev = evaluate_attack(s, y, attack="loss")
    assert ev.tpr_at_fpr["0.001"] is None and ev.tpr_at_fpr["0.01"] > 0.3
    text = json.dumps(ev.to_dict(), allow_nan=False)
    assert '"0.001": null' in text


def test_tpr_at_fpr_counts_zero_fpr_thresholds():
    # perfectly separated: TPR 1 at FPR 0, measurable once the target reaches 1/n_neg
    s = np.r_[np.linspace(10, 11, 50), np.linspace(0, 1, 100)]
    y = np.r_[np.ones(50, bool), np.zeros(100, bool)]
    assert tpr_at_fpr(s, y, 0.01) == 1.0
    assert auc(s, y) == 1.0 and balanced_accuracy(s, y) == 1.0
    assert auc(-s, y) == 0.0


def test_bad_inputs_are_named():
    with pytest.raises(DiffauditError, match="both members and non-members"):
        auc([1.0, 2.0], [True, True])
    with pytest.raises(NonFiniteError, match="NaN"):
        auc([1.0, np.nan], [True, False])
    with pytest.raises(DiffauditError, match="labels have shape"):
        auc([1.0, 2.0, 3.0], [True, False])
    with pytest.raises(DiffauditError, match="out of range"):
        tpr_at_fpr([1.0, 2.0], [True, False], 0.0)
    with pytest.raises(DiffauditError, match="booleans"):
        auc([1.0, 2.0], [2, 0])


def test_bootstrap_is_seeded_and_covers_the_estimate():
    s, y = gaussian_scores(400, 400, 1.0, seed=4)
    a = bootstrap_ci(s, y, n_bootstrap=100, seed=7)
    b = bootstrap_ci(s, y, n_bootstrap=100, seed=7)
    c = bootstrap_ci(s, y, n_bootstrap=100, seed=8)
    assert a == b and a != c
    point = auc(s, y)
    assert a.auc.low < point < a.auc.high
    assert 0.02 < a.auc.high - a.auc.low < 0.15  # roughly 4 standard errors of an AUC on 800 examples
    assert a.tpr_at_fpr["0.001"] is None  # 400 negatives cannot resolve 0.1%
    lo_hi = a.tpr_at_fpr["0.01"]
    assert 0 <= lo_hi.low <= tpr_at_fpr(s, y, 0.01) <= lo_hi.high <= 1
    # bigger sample -> narrower interval
    s2, y2 = gaussian_scores(4000, 4000, 1.0, seed=5)
    wide = a.auc.high - a.auc.low
    narrow = bootstrap_ci(s2, y2, n_bootstrap=100, seed=7).auc
    assert narrow.high - narrow.low < wide / 2


def test_attack_evaluation_serialises_without_nan():
    s, y = gaussian_scores(300, 1200, 1.0, seed=6)
    ev = evaluate_attack(s, y, attack="lira", timesteps=[100], n_bootstrap=50, seed=1)
    assert isinstance(ev, AttackEvaluation)
    d = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert d["attack"] == "lira" and d["timesteps"] == [100]
    assert set(d["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert d["n_members"] == 300 and d["n_nonmembers"] == 1200
    assert d["ci"]["auc"]["low"] <= d["auc"] <= d["ci"]["auc"]["high"]
    assert "curve" not in d


def test_sweep_finds_best_timestep():
    y = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    rng = np.random.default_rng(9)
    deltas = {10: 0.1, 100: 1.5, 1000: 0.5}
    scores = {t: rng.normal(0, 1, 1000) + d * y for t, d in deltas.items()}
    sw = evaluate_sweep(scores, y, attack="loss")
    assert sw.timesteps == [10, 100, 1000]
    assert sw.best_timestep == 100
    d = json.loads(json.dumps(sw.to_dict(), allow_nan=False))
    assert d["auc"][1] > d["auc"][2] > d["auc"][0]
    assert len(d["tpr_at_fpr"]["0.01"]) == 3


def test_bootstrap_replicate_equals_resampled_curve():
    # the weighted-count replicate must equal the ROC of the explicitly resampled scores
    from diffaudit.core.seeds import derive_seed, numpy_rng

    rng0 = np.random.default_rng(11)
    s = rng0.integers(0, 8, 60).astype(float)  # ties
    y = rng0.random(60) < 0.5
    ci = bootstrap_ci(s, y, n_bootstrap=2, level=0.5, seed=3, fpr_targets=(0.1,))
    rng = numpy_rng(derive_seed(3, "bootstrap"))
    pos, neg = s[y], s[~y]
    aucs = []
    for _ in range(2):
        ip = rng.integers(0, len(pos), len(pos))
        ineg = rng.integers(0, len(neg), len(neg))
        aucs.append(auc(np.r_[pos[ip], neg[ineg]], np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]))
    lo, hi = np.quantile(aucs, [0.25, 0.75])
    assert ci.auc.low == pytest.approx(lo, abs=1e-12) and ci.auc.high == pytest.approx(hi, abs=1e-12)


def test_bootstrap_intervals_cover_the_true_values_at_their_level():
    """Frequentist check: over 100 seeded datasets from a binormal model with known AUC and TPR at
    1% FPR, the 95% intervals contain the true values about 95% of the time (≥ 88%: 3 binomial
    standard errors below), so they are neither much too narrow nor trivially wide."""
    delta, trials = 2.0, 100
    true_auc = norm.cdf(delta / np.sqrt(2))
    true_tpr = 1 - norm.cdf(norm.ppf(0.99) - delta)
    cover_auc = cover_tpr = 0
    widths = []
    for t in range(trials):
        s, y = gaussian_scores(1000, 1000, delta, seed=100 + t)
        ci = bootstrap_ci(s, y, n_bootstrap=200, seed=t)
        cover_auc += ci.auc.low <= true_auc <= ci.auc.high
        tpr = ci.tpr_at_fpr["0.01"]
        cover_tpr += tpr.low <= true_tpr <= tpr.high
        widths.append(ci.auc.high - ci.auc.low)
    assert 0.88 <= cover_auc / trials <= 1.0 and 0.88 <= cover_tpr / trials <= 1.0
    # the AUC's standard error here is about 0.0063 (Hanley & McNeil), so a 95% interval is about 0.025 wide
    assert 0.018 < float(np.mean(widths)) < 0.032


def _rows_of_examples(n, m, balanced, seed, delta=1.0, eps=0.3):
    """n examples of difficulty d ~ N(0, 1), m scored rows each: d + delta·member + eps·noise. Balanced:
    each example is a member in half its rows (pooled leave-one-out); else one label per example."""
    r = np.random.default_rng(seed)
    d = r.normal(0, 1, n)
    g = np.repeat(np.arange(n), m)
    if balanced:
        y = np.tile(np.r_[np.ones(m // 2, bool), np.zeros(m - m // 2, bool)], n)
    else:
        y = np.repeat(np.arange(n) % 2 == 0, m)
    return d[g] + delta * y + eps * r.normal(size=n * m), y, g


def test_cluster_bootstrap_with_distinct_groups_is_the_stratified_one():
    s, y = gaussian_scores(200, 300, 1.0, seed=12)
    plain = bootstrap_ci(s, y, n_bootstrap=50, seed=2)
    assert bootstrap_ci(s, y, n_bootstrap=50, seed=2, groups=np.arange(500)[::-1]) == plain
    assert plain.method == "stratified percentile bootstrap"
    with pytest.raises(DiffauditError, match="groups"):
        bootstrap_ci(s, y, groups=np.arange(10))


def test_cluster_bootstrap_replicate_equals_resampled_examples():
    from diffaudit.core.seeds import derive_seed, numpy_rng

    s, y, g = _rows_of_examples(40, 3, True, seed=13)
    s = np.round(s, 1)  # ties
    ci = bootstrap_ci(s, y, n_bootstrap=2, level=0.5, seed=4, fpr_targets=(0.1,), groups=g)
    assert ci.method == "example-clustered percentile bootstrap"
    rng = numpy_rng(derive_seed(4, "bootstrap"))
    aucs = []
    for _ in range(2):
        drawn = rng.integers(0, 40, 40)
        rows = np.concatenate([np.nonzero(g == e)[0] for e in drawn])
        aucs.append(auc(s[rows], y[rows]))
    lo, hi = np.quantile(aucs, [0.25, 0.75])
    assert ci.auc.low == pytest.approx(lo, abs=1e-12) and ci.auc.high == pytest.approx(hi, abs=1e-12)


def test_cluster_bootstrap_covers_where_resampling_rows_does_not():
    """Rows of one example share its difficulty. When each example keeps one label in all its rows,
    resampling rows treats 4 copies as 4 examples: its 95% intervals covered the true AUC in 66 of 100
    datasets here, the clustered ones in 95. With half the rows members (pooled leave-one-out), the
    example's effects on both sides cancel and resampling rows is too wide instead (100/100)."""
    true_auc = norm.cdf(1.0 / np.sqrt(2 + 2 * 0.3 ** 2))
    trials = 100
    for balanced in (False, True):
        cover_c = cover_r = 0
        width_c, width_r = [], []
        for t in range(trials):
            s, y, g = _rows_of_examples(300, 4, balanced, seed=1000 + t)
            c = bootstrap_ci(s, y, n_bootstrap=200, seed=t, groups=g, fpr_targets=(0.01,))
            r = bootstrap_ci(s, y, n_bootstrap=200, seed=t, fpr_targets=(0.01,))
            cover_c += c.auc.low <= true_auc <= c.auc.high
            cover_r += r.auc.low <= true_auc <= r.auc.high
            width_c.append(c.auc.high - c.auc.low)
            width_r.append(r.auc.high - r.auc.low)
        assert 0.88 <= cover_c / trials <= 1.0
        if balanced:
            assert np.mean(width_c) < 0.8 * np.mean(width_r)
        else:
            assert cover_r / trials < 0.8 and np.mean(width_c) > 1.5 * np.mean(width_r)
