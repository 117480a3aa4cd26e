"""The typed result of evaluating one membership attack: AUC, TPR at FPR, balanced accuracy, CIs.

:func:`evaluate_attack` turns per-example scores (larger = member) and labels into an
:class:`AttackEvaluation`, which serialises to the ``result.json`` fields of issue 4::

    {"attack": "lira", "timesteps": [100], "auc": 0.98, "tpr_at_fpr": {"0.01": 0.5, "0.001": null},
     "balanced_accuracy": 0.93, "tpr_at_zero_fpr": 0.31, "n_members": 500, "n_nonmembers": 500, "ci": {...}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from diffaudit.evaluation.bootstrap import BootstrapCI, bootstrap_ci
from diffaudit.evaluation.roc import (
    RocCurve,
    auc_from_curve,
    balanced_accuracy_from_curve,
    best_tpr_within,
    fpr_key,
    roc_curve,
    tpr_at_fpr_from_curve,
)

DEFAULT_FPR_TARGETS = (0.01, 0.001)


@dataclass
class AttackEvaluation:
    """Metrics of one attack on one set of (score, label) pairs.

    Attributes:
        attack: the attack's registry name (``loss``, ``lira``, ...).
        auc: area under the ROC curve, in [0, 1] (0.5 = chance).
        tpr_at_fpr: FPR key (``"0.01"``, ``"0.001"``) -> best TPR at FPR ≤ that target, in [0, 1],
            or None (JSON null) when the target is below 1/n_nonmembers.
        balanced_accuracy: best (TPR + TNR) / 2 over thresholds, in [0.5, 1].
        tpr_at_zero_fpr: the share of members that score above every non-member (TPR at FPR 0), in
            [0, 1]: measurable at any number of non-members, where TPR at 1% FPR needs 100 or more.
        n_members, n_nonmembers: counts of positives and negatives evaluated.
        timesteps: the diffusion timesteps the scores came from (empty when not applicable).
        ci: bootstrap confidence intervals, or None when not computed.
        curve: the full ROC curve (for plots; not serialised).
    """

    attack: str
    auc: float
    tpr_at_fpr: dict[str, float | None]
    balanced_accuracy: float
    n_members: int
    n_nonmembers: int
    timesteps: list[int] = field(default_factory=list)
    ci: BootstrapCI | None = None
    curve: RocCurve | None = field(default=None, repr=False, compare=False)
    tpr_at_zero_fpr: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (no NaN; None for unmeasurable TPRs)."""
        return {
            "attack": self.attack,
            "timesteps": [int(t) for t in self.timesteps],
            "auc": float(self.auc),
            "tpr_at_fpr": {k: (None if v is None else float(v)) for k, v in self.tpr_at_fpr.items()},
            "balanced_accuracy": float(self.balanced_accuracy),
            "tpr_at_zero_fpr": None if self.tpr_at_zero_fpr is None else float(self.tpr_at_zero_fpr),
            "n_members": int(self.n_members),
            "n_nonmembers": int(self.n_nonmembers),
            "ci": None if self.ci is None else self.ci.to_dict(),
        }


def evaluate_attack(
    scores,
    labels,
    *,
    attack: str,
    timesteps: Sequence[int] = (),
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    n_bootstrap: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
    groups=None,
) -> AttackEvaluation:
    """Evaluate ``scores`` (float (n,), larger = member) against ``labels`` (bool (n,), True = member).

    ``n_bootstrap`` > 0 adds seeded bootstrap intervals (see :mod:`.bootstrap`): stratified by class,
    or, with ``groups`` (int (n,), the example of each row) repeating, resampling whole examples.
    """
    curve = roc_curve(scores, labels)
    ci = None
    if n_bootstrap:
        ci = bootstrap_ci(scores, labels, fpr_targets=fpr_targets, n_bootstrap=n_bootstrap, level=ci_level, seed=seed,
                          groups=groups)
    return AttackEvaluation(
        attack=attack,
        auc=auc_from_curve(curve),
        tpr_at_fpr={fpr_key(t): tpr_at_fpr_from_curve(curve, t) for t in fpr_targets},
        balanced_accuracy=balanced_accuracy_from_curve(curve),
        n_members=curve.n_members,
        n_nonmembers=curve.n_nonmembers,
        timesteps=[int(t) for t in timesteps],
        ci=ci,
        curve=curve,
        tpr_at_zero_fpr=best_tpr_within(curve, 0.0),
    )
