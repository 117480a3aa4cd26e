"""Seeded image generation: every image from its own seed, in fixed micro-batches.

Image i starts from x_T drawn from ``seeds[i]`` alone (and, with η > 0, its per-step noise too).
The UNet always runs on exactly ``micro_batch`` images (the last micro-batch is padded), aligned
to positions in the request, so pixels do not depend on ``batch_size`` or on which other images
share a call. Changing ``micro_batch`` may change low-order bits on some devices: it is a
recorded sampler setting.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffaudit.core.seeds import randn_per_seed
from diffaudit.data.dataset import from_model_space
from diffaudit.models.denoiser import Denoiser
from diffaudit.sampling.ddim import sample
from diffaudit.sampling.schedules import ddim_previous, ddim_timesteps


def generate_images(
    denoiser: Denoiser,
    seeds: Sequence[int],
    *,
    steps: int = 50,
    eta: float = 0.0,
    labels: Sequence[int] | None = None,
    micro_batch: int = 64,
) -> np.ndarray:
    """Generate ``len(seeds)`` images; returns uint8 (N, H, W, C), sampled as the model's scheduler
    config says (:class:`~diffaudit.models.scheduler.SamplingSchedule`: spacing, clipping, final ᾱ).

    ``labels``: class (prompt) index per image for class-conditional models.
    """
    n = len(seeds)
    C, S = denoiser.in_channels, denoiser.image_size
    dev = denoiser.device
    sched, T = denoiser.schedule.check(), denoiser.num_train_timesteps  # the model's own scheduler config
    ts = ddim_timesteps(T, steps, spacing=sched.timestep_spacing, offset=sched.steps_offset)
    final_alpha = 1.0 if sched.set_alpha_to_one else float(denoiser.alphas_cumprod[0])
    out = np.empty((n, S, S, C), dtype=np.uint8)
    for start in range(0, n, micro_batch):
        chunk = list(seeds[start:start + micro_batch])
        real = len(chunk)
        pad = micro_batch - real
        chunk_seeds = chunk + [chunk[-1]] * pad  # padding rows are discarded
        x_T = randn_per_seed(chunk_seeds, (C, S, S), device=dev)
        lab = None
        if labels is not None:
            lab_list = list(labels[start:start + micro_batch])
            lab = torch.as_tensor(lab_list + [lab_list[-1]] * pad, dtype=torch.long, device=dev)
        x0 = sample(denoiser, x_T, alphas_cumprod=denoiser.alphas_cumprod, timesteps=ts, eta=eta,
                    labels=lab, noise_seeds=chunk_seeds if eta > 0 else None, clip_sample=sched.clip_sample,
                    clip_range=sched.clip_sample_range, prev_timesteps=ddim_previous(T, ts), final_alpha=final_alpha)
        out[start:start + real] = from_model_space(x0[:real])
    return out
