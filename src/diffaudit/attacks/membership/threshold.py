"""The loss-threshold attack (Carlini et al. 2023, Sec. 5, membership inference; Yeom et al. 2018).

A model fits its training images better, so a low loss L(x, t, ε) at the target model means
"member". Score = −mean_q L(x, t, ε_q): float (N,), ≤ 0, LARGER (less negative, i.e. lower loss)
MEANS MORE LIKELY A MEMBER. No shadow model is used, so the threshold is global: examples that are
easy for every model look like members, which is why LiRA's per-example calibration helps.
"""

from __future__ import annotations

import numpy as np

from diffaudit.attacks.membership.inputs import AttackInput


def loss_threshold_scores(inp: AttackInput) -> np.ndarray:
    """−(target loss averaged over the queries): float (N,), larger = more likely a member."""
    return -inp.target.mean(axis=1)
