"""The DDPM noise schedule of the paper's models (Ho et al. 2020): ε-prediction, linear β from
1e-4 to 0.02 over 1,000 steps. ``alphas_cumprod[t]`` is ᾱ_t."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def make_scheduler(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
        beta_schedule="linear", prediction_type="epsilon", clip_sample=True,
    )


def alphas_cumprod_of(scheduler) -> torch.Tensor:
    """ᾱ_t, shape (T,), float64 on the CPU."""
    return scheduler.alphas_cumprod.detach().to(torch.float64).cpu()
