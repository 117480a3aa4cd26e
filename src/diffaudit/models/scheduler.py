"""The DDPM noise schedule of the paper's models (Ho et al. 2020): ε-prediction, linear β from
1e-4 to 0.02 over 1,000 steps. ``alphas_cumprod[t]`` is ᾱ_t."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import DDPMScheduler

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import read_json
from diffaudit.models.config_values import DEFAULT_TRAIN_TIMESTEPS, train_timesteps


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
            config = read_json(cfg)
            return train_timesteps(config, str(cfg)) if isinstance(config, dict) else DEFAULT_TRAIN_TIMESTEPS
    return DEFAULT_TRAIN_TIMESTEPS


#: The timestep spacings of diffusers' DDIMScheduler (Lin et al. 2023, Table 2).
SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class SamplingSchedule:
    """How a model's own scheduler config says to sample it with few steps: the fields diffusers'
    ``DDIMScheduler`` reads (a DDPM config read by ``DDIMScheduler.from_config``, as ``DDIMPipeline``
    does). The defaults are the paper's models' and diffusers' defaults.

    Attributes:
        timestep_spacing: ``leading`` (t_k = k·(T // n) + steps_offset), ``trailing`` or ``linspace``.
        steps_offset: added to every leading timestep.
        set_alpha_to_one: ᾱ after the last step is 1 (else ᾱ_0).
        clip_sample: x̂_0 is clipped to [−clip_sample_range, clip_sample_range] at each step.
        clip_sample_range: > 0.
        thresholding: dynamic thresholding, which diffaudit's sampler does not implement (:meth:`check`).
    """

    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    thresholding: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SamplingSchedule":
        """The schedule of a scheduler config, as it is (a model that cannot be sampled may still be
        scored: :meth:`check` refuses it where it is sampled)."""
        return cls(timestep_spacing=str(config.get("timestep_spacing") or "leading"),
                   steps_offset=int(config.get("steps_offset") or 0),
                   set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
                   clip_sample=bool(config.get("clip_sample", True)),
                   clip_sample_range=float(config.get("clip_sample_range", 1.0)),
                   thresholding=bool(config.get("thresholding", False)))

    def check(self, what: str = "the model's scheduler") -> "SamplingSchedule":
        """Refuse what the sampler does not implement (dynamic thresholding, an unknown spacing, a clip
        range that is not positive) rather than sampling otherwise than the model's authors did."""
        if self.thresholding:
            raise DiffauditError(f"{what} asks for dynamic thresholding, which diffaudit's sampler does not implement")
        if self.timestep_spacing not in SPACINGS:
            raise DiffauditError(f"{what}: timestep_spacing {self.timestep_spacing!r} is not one of {', '.join(SPACINGS)}")
        if not self.clip_sample_range > 0:
            raise DiffauditError(f"{what}: clip_sample_range must be positive; got {self.clip_sample_range}")
        return self

    def is_default(self) -> bool:
        return self == SamplingSchedule()

    def to_dict(self) -> dict[str, Any]:
        """The fields as a store records them; ``thresholding`` only when set (stores written before it
        existed record the rest, and resume)."""
        out = asdict(self)
        if not self.thresholding:
            del out["thresholding"]
        return out
