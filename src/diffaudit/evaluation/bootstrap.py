"""Seeded bootstrap confidence intervals for AUC and TPR at FPR ("how sure are we", issue 4).

Stratified percentile bootstrap: each replicate resamples the members and the non-members
separately, with replacement, keeping their counts, so every replicate has the same resolution
(1/n_nonmembers) as the original and a TPR at FPR that is None in the original is None in every
replicate. The random draws come only from ``numpy_rng(derive_seed(seed, "bootstrap"))``.

What the interval covers: the sampling of the evaluated examples, the scores being fixed. On
binormal scores with known AUC and TPR at 1% FPR, 95% intervals contained the true values in 95 and
94 of 100 datasets of 1,000 + 1,000 examples (tests/test_roc.py). It does not cover the randomness
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
from diffaudit.evaluation.roc import RocCurve, auc_from_curve, check_scores, fpr_key, tpr_at_fpr_from_curve


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
    """

    auc: Interval
    tpr_at_fpr: dict[str, Interval | None]
    n_bootstrap: int
    seed: int

    def to_dict(self) -> dict:
        return {
            "auc": self.auc.to_dict(),
            "tpr_at_fpr": {k: (None if v is None else v.to_dict()) for k, v in self.tpr_at_fpr.items()},
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "method": "stratified percentile bootstrap",
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
) -> BootstrapCI:
    """Percentile intervals of AUC and TPR at each FPR target over stratified resamples.

    Args:
        scores: float (n,), larger = member.
        labels: bool (n,), True = member.
        fpr_targets: FPR targets in (0, 1].
        n_bootstrap: replicates (≥ 2); cost is one sort of n scores each.
        level: coverage of the two-sided interval, in (0, 1).
        seed: bootstrap seed (explicit; the global RNG is never used).
    """
    s, y = check_scores(scores, labels)
    if n_bootstrap < 2:
        raise DiffauditError(f"n_bootstrap must be at least 2; got {n_bootstrap}")
    if not 0.0 < level < 1.0:
        raise DiffauditError(f"confidence level must lie in (0, 1); got {level}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    rng = numpy_rng(derive_seed(int(seed), "bootstrap"))
    # Sort once; a replicate is a vector of resampling counts per example, so each replicate's ROC
    # is two weighted cumulative sums over the same order: O(n) per replicate instead of a sort.
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    # which member (0..n_pos-1, in input order) and which non-member sits at each sorted position
    pos_rank = (np.cumsum(y) - 1)[order]
    neg_rank = (np.cumsum(~y) - 1)[order]
    aucs = np.empty(n_bootstrap)
    tprs = {t: np.empty(n_bootstrap) for t in fpr_targets}
    measurable = {t: t >= 1.0 / n_neg for t in fpr_targets}
    for b in range(n_bootstrap):
        w_pos = np.bincount(rng.integers(0, n_pos, n_pos), minlength=n_pos)
        w_neg = np.bincount(rng.integers(0, n_neg, n_neg), minlength=n_neg)
        tp = np.cumsum(np.where(y_sorted, w_pos[pos_rank], 0))[distinct]
        fp = np.cumsum(np.where(y_sorted, 0, w_neg[neg_rank]))[distinct]
        curve = RocCurve(fpr=np.r_[0.0, fp / n_neg], tpr=np.r_[0.0, tp / n_pos], thresholds=np.r_[np.inf, s_sorted[distinct]],
                         n_members=n_pos, n_nonmembers=n_neg)
        aucs[b] = auc_from_curve(curve)
        for t in fpr_targets:
            if measurable[t]:
                tprs[t][b] = tpr_at_fpr_from_curve(curve, t)
    return BootstrapCI(
        auc=_interval(aucs, level),
        tpr_at_fpr={fpr_key(t): (_interval(tprs[t], level) if measurable[t] else None) for t in fpr_targets},
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
    )
