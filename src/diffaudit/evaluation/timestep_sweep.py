"""Attack success as a function of the diffusion timestep t (the paper's Figure 9).

The paper finds membership leaks most at intermediate timesteps, t ≈ 50-300 of T = 1000
(Carlini et al. 2023, Sec. 5, membership inference, Fig. 9); :class:`TimestepSweep` holds one
:class:`~diffaudit.evaluation.attack_evaluation.AttackEvaluation` per t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from diffaudit.evaluation.attack_evaluation import DEFAULT_FPR_TARGETS, AttackEvaluation, evaluate_attack


@dataclass
class TimestepSweep:
    """One attack evaluated at several timesteps (ascending)."""

    attack: str
    timesteps: list[int]
    evaluations: list[AttackEvaluation]

    @property
    def best_timestep(self) -> int:
        """The timestep with the largest AUC (the first on ties)."""
        return int(self.timesteps[int(np.argmax([e.auc for e in self.evaluations]))])

    def to_dict(self) -> dict:
        """Columns over t: ``{"timesteps": [...], "auc": [...], "tpr_at_fpr": {"0.01": [...]}, ...}``."""
        keys = list(self.evaluations[0].tpr_at_fpr) if self.evaluations else []
        return {
            "attack": self.attack,
            "timesteps": [int(t) for t in self.timesteps],
            "auc": [float(e.auc) for e in self.evaluations],
            "tpr_at_fpr": {k: [e.tpr_at_fpr[k] for e in self.evaluations] for k in keys},
            "balanced_accuracy": [float(e.balanced_accuracy) for e in self.evaluations],
            "best_timestep": self.best_timestep if self.evaluations else None,
        }


def evaluate_sweep(
    scores_by_timestep: Mapping[int, np.ndarray],
    labels,
    *,
    attack: str,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
) -> TimestepSweep:
    """Evaluate per-timestep scores (t -> float (n,), larger = member) against shared ``labels`` (bool (n,))."""
    ts = sorted(int(t) for t in scores_by_timestep)
    evals = [evaluate_attack(scores_by_timestep[t], labels, attack=attack, timesteps=[t], fpr_targets=fpr_targets) for t in ts]
    return TimestepSweep(attack=attack, timesteps=ts, evaluations=evals)
