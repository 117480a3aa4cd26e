"""Membership inference on diffusion models (Carlini et al. 2023, Sec. 5).

The loss-threshold attack and LiRA (online, offline, fixed variance, Strong) as pure functions on
loss arrays; the shadow-model training (:mod:`.shadows`) and the orchestration that computes and
caches the losses (:mod:`.run`). Scores: larger = more likely a member.
"""

from diffaudit.attacks.membership.inputs import AttackInput, transform_losses
from diffaudit.attacks.membership.lira import gaussian_fit, lira_offline_scores, lira_online_scores
from diffaudit.attacks.membership.registry import ATTACK_NAMES, MembershipAttack, get_attack
from diffaudit.attacks.membership.targets import PooledScores, leave_one_out_scores, target_scores
from diffaudit.attacks.membership.threshold import loss_threshold_scores

__all__ = [
    "ATTACK_NAMES", "AttackInput", "MembershipAttack", "PooledScores", "gaussian_fit", "get_attack",
    "leave_one_out_scores", "lira_offline_scores", "lira_online_scores", "loss_threshold_scores",
    "target_scores", "transform_losses",
]
