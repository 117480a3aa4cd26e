"""Attack scores at every timestep of a sweep (the paper's Figure 9: success over t).

Each timestep's slice is scored exactly as a single-timestep attack (same target mode); the
evaluation per t (AUC, TPR at FPR) is :func:`diffaudit.evaluation.evaluate_sweep`'s.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffaudit.attacks.membership.registry import MembershipAttack
from diffaudit.attacks.membership.targets import PooledScores, score_models
from diffaudit.core.errors import DiffauditError


def sweep_scores(
    attack: MembershipAttack,
    losses: np.ndarray,
    membership: np.ndarray,
    timesteps: Sequence[int],
    *,
    mode: str = "leave-one-out",
    index: int | None = None,
    target_losses: np.ndarray | None = None,
    target_in: np.ndarray | None = None,
) -> dict[int, PooledScores]:
    """Scores per timestep, ``{t: PooledScores}``, larger = more likely a member.

    Args:
        attack: from :func:`~.registry.get_attack`.
        losses: float (N, M, T, Q): N examples, M models, the T ``timesteps``, Q queries.
        membership: bool (N, M).
        timesteps: the T timesteps of ``losses``' third axis.
        mode, index, target_losses (N, T, Q), target_in (N,): who is attacked, as in
            :func:`~.targets.score_models`.
    """
    losses = np.asarray(losses)
    if losses.ndim != 4 or losses.shape[2] != len(timesteps):
        raise DiffauditError(f"sweep losses must have shape (n_examples, n_models, {len(timesteps)} timesteps, "
                             f"n_queries); got {losses.shape}")
    if target_losses is not None and (np.ndim(target_losses) != 3 or np.shape(target_losses)[1] != len(timesteps)):
        raise DiffauditError(f"target sweep losses must have shape (n_examples, {len(timesteps)}, n_queries); "
                             f"got {np.shape(target_losses)}")
    return {
        int(t): score_models(attack, losses[:, :, j], membership, mode=mode, index=index,
                             target_losses=None if target_losses is None else target_losses[:, j], target_in=target_in)
        for j, t in enumerate(timesteps)
    }
