"""Membership attacks by name: ``loss``, ``lira``, ``lira-offline``, ``lira-fixed``,
``lira-offline-fixed``, ``strong-lira``, ``strong-lira-fixed``.

Single-query attacks (all but the ``strong-lira`` ones, ``all_queries=False``) see one query per
example and timestep, noise draw 0 unflipped, as in the paper's LiRA: :class:`~.run.MiaConfig` refuses
more draws or flips for them (several timesteps act as several queries, whose losses they average).
``strong-lira`` uses every query (draws × flips, paper §6): a Gaussian per query with the
log-likelihood ratios summed (``strong_aggregate="sum-llr"``, default), or the losses averaged first
(``"mean-loss"``, the paper's wording). On 8 tiny digits models with fixed variance, sum-llr gave AUC
0.961 and mean-loss 0.821, below single-query LiRA's 0.908 (docs/experiments.md). Every score: float
(N,), larger = more likely a member.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from diffaudit.attacks.membership.inputs import AttackInput
from diffaudit.attacks.membership.lira import AGGREGATES, lira_offline_scores, lira_online_scores
from diffaudit.attacks.membership.threshold import loss_threshold_scores
from diffaudit.core.errors import DiffauditError

ScoreFn = Callable[[AttackInput], np.ndarray]


@dataclass(frozen=True)
class MembershipAttack:
    """One attack: its name, what it needs, and its score function (AttackInput -> float (N,))."""

    name: str
    description: str
    needs_shadows: bool
    all_queries: bool  # False: one query per example and timestep (MiaConfig refuses draws and flips)
    score: ScoreFn


ATTACK_NAMES = ("loss", "lira", "lira-offline", "lira-fixed", "lira-offline-fixed", "strong-lira", "strong-lira-fixed")
#: The attacks that fit a variance per example from its own IN and OUT shadows.
PER_EXAMPLE_VARIANCE = ("lira", "lira-offline", "strong-lira")
#: Below this many shadows per side, per-example variances are fits to one to three values: on the
#: digits models, 8 models in leave-one-out (3 per side) scored lira 0.83 against lira-fixed 0.91 and
#: strong-lira 0.77 against strong-lira-fixed 0.96; at 16 models (7 per side) they were within 0.01.
FEW_SHADOWS_PER_SIDE = 4


def get_attack(name: str, *, transform: str = "log", strong_aggregate: str = "sum-llr") -> MembershipAttack:
    """The attack called ``name``; ``transform`` ("log"/"none") applies to the LiRA variants."""
    if strong_aggregate not in AGGREGATES:
        raise DiffauditError(f"unknown Strong LiRA aggregate {strong_aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    online = partial(lira_online_scores, transform=transform)
    offline = partial(lira_offline_scores, transform=transform)
    table = {
        "loss": MembershipAttack("loss", "loss threshold: score = -loss of the target model", False, False,
                                 loss_threshold_scores),
        "lira": MembershipAttack("lira", "online LiRA, per-example IN and OUT Gaussians", True, False,
                                 partial(online, variance="per-example", aggregate="mean-loss")),
        "lira-offline": MembershipAttack("lira-offline", "offline LiRA, OUT Gaussians only, one-sided", True, False,
                                         partial(offline, variance="per-example", aggregate="mean-loss")),
        "lira-fixed": MembershipAttack("lira-fixed", "online LiRA with one global variance per side", True, False,
                                       partial(online, variance="fixed", aggregate="mean-loss")),
        "lira-offline-fixed": MembershipAttack("lira-offline-fixed", "offline LiRA with one global OUT variance", True,
                                               False, partial(offline, variance="fixed", aggregate="mean-loss")),
        "strong-lira": MembershipAttack("strong-lira", f"Strong LiRA over all queries ({strong_aggregate})", True, True,
                                        partial(online, variance="per-example", aggregate=strong_aggregate)),
        "strong-lira-fixed": MembershipAttack("strong-lira-fixed", f"Strong LiRA, one global variance per side and query "
                                              f"({strong_aggregate})", True, True,
                                              partial(online, variance="fixed", aggregate=strong_aggregate)),
    }
    if name not in table:
        raise DiffauditError(f"unknown attack {name!r}; choose one of {', '.join(ATTACK_NAMES)}")
    return table[name]
