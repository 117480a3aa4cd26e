"""Seeded bootstrap confidence intervals for AUC and TPR at FPR ("how sure are we", issue 4).

Stratified percentile bootstrap: each replicate resamples the members and the non-members
separately, with replacement, keeping their counts, so every replicate has the same resolution
(1/n_nonmembers) as the original and a TPR at FPR that is None in the original is None in every
replicate. The random draws come only from ``numpy_rng(derive_seed(seed, "bootstrap"))``.

What the interval covers: the sampling of the evaluated examples, the scores being fixed. On
binormal scores with known AUC and TPR at 1% FPR, 95% intervals contained the true values in 95 and
94 of 100 datasets of 1,000 + 1,000 examples (tests/test_roc.py).

Rows of one example: pooled leave-one-out scores hold each example once per attacked model (member
for some, non-member for others), and those rows share the example's difficulty, so they are not
independent. With ``groups`` (the example of each row) a replicate resamples whole examples with
replacement, every row of a drawn example weighted by how often it was drawn (cluster bootstrap);
member and non-member counts then vary a little between replicates, and rates are taken over each
replicate's own weighted counts. Resampling rows instead would treat M correlated copies as M
independent examples and give intervals about sqrt(M) too narrow when the example dominates the
score (tests/test_roc.py measures both). It does not cover the randomness
of training: another target model (or other shadow models) gives other scores, and that variance
is measured only by attacking several models (``mia`` without ``--target`` attacks each shadow
model in turn and pools their scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed, numpy_rng
from diffaudit.evaluation.roc import RocCurve, auc_from_curve, best_tpr_within, check_scores, fpr_key


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval ``[low, high]`` at ``level`` (e.g. 0.95)."""

    low: float
    high: float
    level: float

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "level": self.level}


@dataclass(frozen=True)
class BootstrapCI:
    """Confidence intervals of an attack's metrics.

    Attributes:
        auc: interval of the AUC.
        tpr_at_fpr: FPR key (``"0.01"``) -> interval of the TPR at that FPR, or None where the TPR
            itself is None (target below 1/n_nonmembers).
        n_bootstrap: number of replicates.
        seed: the seed the replicates were drawn from.
        method: "stratified percentile bootstrap" (rows resampled within each class) or
            "example-clustered percentile bootstrap" (whole examples resampled, ``groups`` given).
    """

    auc: Interval
    tpr_at_fpr: dict[str, Interval | None]
    n_bootstrap: int
    seed: int
    method: str = "stratified percentile bootstrap"

    def to_dict(self) -> dict:
        return {
            "auc": self.auc.to_dict(),
            "tpr_at_fpr": {k: (None if v is None else v.to_dict()) for k, v in self.tpr_at_fpr.items()},
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "method": self.method,
        }


def _interval(values: np.ndarray, level: float) -> Interval:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(low=float(lo), high=float(hi), level=level)


def bootstrap_ci(
    scores,
    labels,
    *,
    fpr_targets: Sequence[float] = (0.01, 0.001),
    n_bootstrap: int = 200,
    level: float = 0.95,
    seed: int = 0,
    groups=None,
) -> BootstrapCI:
    """Percentile intervals of AUC and TPR at each FPR target over resamples of the examples.

    Args:
        scores: float (n,), larger = member.
        labels: bool (n,), True = member.
        fpr_targets: FPR targets in (0, 1].
        n_bootstrap: replicates (≥ 2); cost is O(n) each after one sort.
        level: coverage of the two-sided interval, in (0, 1).
        seed: bootstrap seed (explicit; the global RNG is never used).
        groups: optional int (n,), the example each row scores. When some example has several rows,
            whole examples are resampled (module docstring); all distinct is the same as None.
    """
    s, y = check_scores(scores, labels)
    if n_bootstrap < 2:
        raise DiffauditError(f"n_bootstrap must be at least 2; got {n_bootstrap}")
    if not 0.0 < level < 1.0:
        raise DiffauditError(f"confidence level must lie in (0, 1); got {level}")
    cluster_of = _clusters(groups, len(s))
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    rng = numpy_rng(derive_seed(int(seed), "bootstrap"))
    # Sort once; a replicate is a vector of resampling counts per row, so each replicate's ROC is two
    # weighted cumulative sums over the same order: O(n) per replicate instead of a sort.
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    if cluster_of is None:  # stratified: which member / non-member (input order) sits at each position
        pos_rank = (np.cumsum(y) - 1)[order]
        neg_rank = (np.cumsum(~y) - 1)[order]
    else:
        cluster_sorted, n_clusters = cluster_of[order], int(cluster_of.max()) + 1
    aucs = np.empty(n_bootstrap)
    tprs = {t: np.empty(n_bootstrap) for t in fpr_targets}
    measurable = {t: t >= 1.0 / n_neg for t in fpr_targets}
    for b in range(n_bootstrap):
        if cluster_of is None:
            w_pos = np.bincount(rng.integers(0, n_pos, n_pos), minlength=n_pos)[pos_rank]
            w_neg = np.bincount(rng.integers(0, n_neg, n_neg), minlength=n_neg)[neg_rank]
            tot_pos, tot_neg = n_pos, n_neg
        else:
            w = _cluster_weights(rng, n_clusters, cluster_sorted, y_sorted)
            w_pos = w_neg = w
            tot_pos, tot_neg = int(w[y_sorted].sum()), int(w[~y_sorted].sum())
        tp = np.cumsum(np.where(y_sorted, w_pos, 0))[distinct]
        fp = np.cumsum(np.where(y_sorted, 0, w_neg))[distinct]
        curve = RocCurve(fpr=np.r_[0.0, fp / tot_neg], tpr=np.r_[0.0, tp / tot_pos], thresholds=np.r_[np.inf, s_sorted[distinct]],
                         n_members=tot_pos, n_nonmembers=tot_neg)
        aucs[b] = auc_from_curve(curve)
        for t in fpr_targets:
            if measurable[t]:
                tprs[t][b] = best_tpr_within(curve, t)
    return BootstrapCI(
        auc=_interval(aucs, level),
        tpr_at_fpr={fpr_key(t): (_interval(tprs[t], level) if measurable[t] else None) for t in fpr_targets},
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        method="stratified percentile bootstrap" if cluster_of is None else "example-clustered percentile bootstrap",
    )


def _clusters(groups, n: int) -> np.ndarray | None:
    """Dense cluster numbers 0..G−1 per row, or None when there are no groups or every row is its own."""
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DiffauditError(f"groups: expected one example id per score ({n},), got shape {g.shape}")
    uniq, dense = np.unique(g, return_inverse=True)
    return None if len(uniq) == n else dense.astype(np.int64)


#: Redraws allowed for a cluster replicate that holds no member or no non-member (a resample of
#: examples that each carry one class only; never needed when every example has both).
MAX_REDRAWS = 100


def _cluster_weights(rng: np.random.Generator, n_clusters: int, cluster_sorted: np.ndarray, y_sorted: np.ndarray) -> np.ndarray:
    """Row weights (int (n,), in sorted order) of one resample of the clusters with replacement."""
    for _ in range(MAX_REDRAWS):
        counts = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
        w = counts[cluster_sorted]
        if w[y_sorted].any() and w[~y_sorted].any():
            return w
    raise DiffauditError(f"cluster bootstrap: {MAX_REDRAWS} resamples of the examples held only one class; "
                         "too few examples carry members or non-members")
