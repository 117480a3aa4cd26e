"""Evaluation of attacks: ROC, AUC, TPR at FPR, balanced accuracy, bootstrap CIs, typed results."""

from diffaudit.evaluation.attack_evaluation import DEFAULT_FPR_TARGETS, AttackEvaluation, evaluate_attack
from diffaudit.evaluation.bootstrap import BootstrapCI, Interval, bootstrap_ci
from diffaudit.evaluation.roc import (
    RocCurve,
    auc,
    auc_from_curve,
    balanced_accuracy,
    fpr_key,
    roc_curve,
    tpr_at_fpr,
    tpr_at_fpr_from_curve,
)
from diffaudit.evaluation.timestep_sweep import TimestepSweep, evaluate_sweep

__all__ = [
    "AttackEvaluation", "BootstrapCI", "DEFAULT_FPR_TARGETS", "Interval", "RocCurve", "TimestepSweep",
    "auc", "auc_from_curve", "balanced_accuracy", "bootstrap_ci", "evaluate_attack", "evaluate_sweep",
    "fpr_key", "roc_curve", "tpr_at_fpr", "tpr_at_fpr_from_curve",
]
