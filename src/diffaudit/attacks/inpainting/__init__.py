"""The inpainting reconstruction attack (Carlini et al. 2023, Section 5.2): inpaint masked targets
with the target model, rank inpaintings by target/shadow loss ratio, compare the best to the original."""

from diffaudit.attacks.inpainting.attack import (
    InpaintAttackConfig,
    TargetResult,
    inpaint_targets,
    masked_view,
    rms_l2,
    score_target,
)
from diffaudit.attacks.inpainting.scoring import Scores, denoising_loss, loss_ratio, score_inpaintings, score_noise
from diffaudit.attacks.inpainting.summary import membership_scores, summarize

__all__ = [
    "InpaintAttackConfig", "TargetResult", "inpaint_targets", "masked_view", "rms_l2", "score_target",
    "Scores", "denoising_loss", "loss_ratio", "score_inpaintings", "score_noise", "membership_scores", "summarize",
]
