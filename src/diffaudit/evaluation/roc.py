"""ROC curve, AUC, TPR at a fixed FPR and balanced accuracy of a membership score (pure math).

Convention (docs/architecture.md, Conventions: scores): ``scores`` is float (n,), larger means "more likely a member";
``labels`` is bool (n,), True for members (positives). A threshold τ predicts "member" for every
example with ``score >= τ``. The paper reports AUC and the TPR at 1% and 0.1% FPR on log-log ROC
curves (Carlini et al. 2023, Sec. 5, membership inference; following LiRA, Carlini et al. 2022).

Ties: examples with equal scores always fall on the same side of a threshold, so the ROC curve has
one point per distinct score value (plus (0, 0)); the AUC counts a tied member/non-member pair as
half a success (the Mann-Whitney statistic), which equals the trapezoidal area under that curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.core.errors import DiffauditError, NonFiniteError


@dataclass(frozen=True)
class RocCurve:
    """ROC points in order of decreasing threshold.

    Attributes:
        fpr: float64 (K,), non-decreasing, from 0 to 1.
        tpr: float64 (K,), non-decreasing, from 0 to 1.
        thresholds: float64 (K,), decreasing; point i predicts member for ``score >= thresholds[i]``
            (the first is +inf: nobody is predicted a member).
        n_members: number of positives.
        n_nonmembers: number of negatives.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_members: int
    n_nonmembers: int


def check_scores(scores, labels, *, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert; raises :class:`DiffauditError` naming the offending array.

    Returns ``(scores float64 (n,), labels bool (n,))``; both classes must be present.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1:
        raise DiffauditError(f"{name} must be one value per example (shape (n,)); got shape {s.shape}")
    if y.shape != s.shape:
        raise DiffauditError(f"labels have shape {y.shape} but {name} have shape {s.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise DiffauditError("labels must be booleans (True = member)")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise NonFiniteError(f"{name} hold {bad} NaN or infinite values; a score must be finite")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise DiffauditError(
            f"{name}: need both members and non-members to evaluate an attack; got {n_pos} members "
            f"and {len(y) - n_pos} non-members"
        )
    return s, y


def roc_curve(scores, labels) -> RocCurve:
    """The ROC curve of ``scores`` (larger = member) against ``labels`` (True = member).

    Args:
        scores: float (n,), finite.
        labels: bool (n,), both classes present.
    """
    s, y = check_scores(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores: thresholds at distinct values only.
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[distinct]
    fp = (distinct + 1) - tp
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, n_members=n_pos, n_nonmembers=n_neg)


def auc(scores, labels) -> float:
    """Area under the ROC curve in [0, 1]: P(score of a member > score of a non-member) + ½ P(tie).

    0.5 is chance; 1 separates perfectly; AUC(−s) = 1 − AUC(s). Computed from ranks (Mann-Whitney
    U / (n_members · n_nonmembers)) with average ranks for ties, O(n log n).
    """
    s, y = check_scores(scores, labels)
    from scipy.stats import rankdata

    ranks = rankdata(s, method="average")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(min(1.0, max(0.0, u / (n_pos * n_neg))))


def auc_standard_error(auc_value: float, n_members: int, n_nonmembers: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC ``A`` in [0, 1] from n₁ members and n₂ non-members:
    SE² = (A(1 − A) + (n₁ − 1)(Q₁ − A²) + (n₂ − 1)(Q₂ − A²)) / (n₁ n₂), Q₁ = A / (2 − A), Q₂ = 2A² / (1 + A).
    The interval of an attack run without a bootstrap (``mia --bootstrap 0``): A ± 1.96 SE. It takes the
    examples as independent, so it is narrower than a bootstrap over examples where rows share an example
    (pooled leave-one-out attacks)."""
    if n_members < 1 or n_nonmembers < 1:
        raise ValueError(f"need members and non-members; got {n_members} and {n_nonmembers}")
    a = float(auc_value)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n_members - 1) * (q1 - a * a) + (n_nonmembers - 1) * (q2 - a * a)) / (n_members * n_nonmembers)
    return float(np.sqrt(max(var, 0.0)))


def auc_from_curve(curve: RocCurve) -> float:
    """Trapezoidal area under ``curve``; equal to :func:`auc` (ties count half)."""
    area = float(np.sum(np.diff(curve.fpr) * (curve.tpr[1:] + curve.tpr[:-1]) / 2.0))
    return min(1.0, max(0.0, area))


def tpr_at_fpr_from_curve(curve: RocCurve, target: float) -> float | None:
    """Best TPR at any threshold whose FPR is at most ``target``; None below the resolution.

    With n non-members the smallest non-zero FPR is 1/n, so a target below 1/n cannot be measured:
    the answer is None (JSON null), never 0 (issue 4). At or above it, thresholds with FPR exactly 0
    count too.
    """
    if not 0.0 < target <= 1.0:
        raise DiffauditError(f"FPR target {target} is out of range; it must lie in (0, 1]")
    if target < 1.0 / curve.n_nonmembers:
        return None
    return best_tpr_within(curve, target)


def best_tpr_within(curve: RocCurve, target: float) -> float:
    """Largest TPR at a threshold whose FPR is at most ``target`` (FPR-0 thresholds included), with
    no resolution check: for a bootstrap replicate, whose measurability the original data decides."""
    ok = curve.fpr <= target * (1 + 1e-12)
    return float(curve.tpr[ok].max())


def tpr_at_fpr(scores, labels, target: float) -> float | None:
    """TPR at FPR ≤ ``target`` of ``scores`` (see :func:`tpr_at_fpr_from_curve`); None below 1/n_nonmembers."""
    return tpr_at_fpr_from_curve(roc_curve(scores, labels), target)


def balanced_accuracy_from_curve(curve: RocCurve) -> float:
    """Best balanced accuracy (TPR + TNR) / 2 = (1 + TPR − FPR) / 2 over all thresholds, in [0.5, 1]."""
    return float(np.max((1.0 + curve.tpr - curve.fpr) / 2.0))


def balanced_accuracy(scores, labels) -> float:
    """Best balanced accuracy over thresholds (0.5 = chance; the trivial threshold always reaches it)."""
    return balanced_accuracy_from_curve(roc_curve(scores, labels))


def fpr_key(target: float) -> str:
    """The JSON key of an FPR target: ``0.01 -> "0.01"``, ``0.001 -> "0.001"``."""
    return repr(float(target))
