"""The DDPM noise schedule of the paper's models (Ho et al. 2020): ε-prediction, linear β from
1e-4 to 0.02 over 1,000 steps. ``alphas_cumprod[t]`` is ᾱ_t."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler

from diffaudit.core.io import read_json


def make_scheduler(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
        beta_schedule="linear", prediction_type="epsilon", clip_sample=True,
    )


def alphas_cumprod_of(scheduler) -> torch.Tensor:
    """ᾱ_t, shape (T,), float64 on the CPU."""
    return scheduler.alphas_cumprod.detach().to(torch.float64).cpu()


def num_train_timesteps(model_dir: str | Path) -> int:
    """T of a model folder's schedule (``scheduler/scheduler_config.json`` of a run or pipeline, or a
    bare UNet folder's own); 1,000 (the paper's) where none is recorded, as :func:`make_scheduler`."""
    root = Path(model_dir)
    for cfg in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if cfg.exists():
            return int(read_json(cfg).get("num_train_timesteps", 1000))
    return 1000
