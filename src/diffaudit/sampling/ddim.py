"""DDIM / DDPM sampling as a pure function (Song et al. 2021, Eq. 12; eta = 1 is DDPM-like).

    x̂_0 = (x_t − sqrt(1 − ᾱ_t)·ε̂) / sqrt(ᾱ_t)
    σ_t = η · sqrt((1 − ᾱ_prev)/(1 − ᾱ_t)) · sqrt(1 − ᾱ_t/ᾱ_prev)
    x_prev = sqrt(ᾱ_prev)·x̂_0 + sqrt(1 − ᾱ_prev − σ_t²)·ε̂ + σ_t·z

The model is any callable ``model(x_t, t, labels) -> ε̂``. No state, no global RNG: the only
randomness is x_T (given) and, for η > 0, z: counter-based noise keyed by ``noise_seeds[i]`` at
the step index, computed on the device. Each step is ``DDIMScheduler.step``'s: ᾱ_prev is that of the
step's ``prev_timesteps`` entry (the final ᾱ after the last), x̂_0 is clipped to ±``clip_range``
when ``clip_sample`` while the direction term keeps the unclipped ε̂ (``use_clipped_model_output=False``),
so images match the stock ``DDIMPipeline`` given the model's scheduler config and the same x_T. With
η = 1 this is DDIMScheduler's η = 1, not ``DDPMPipeline`` (whose posterior mean uses the clipped x̂_0;
the inpainting sampler follows that one). Non-finite values are tracked in a flag kept on the device
and checked once at the end (no host synchronisation inside the loop).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.core.seeds import counter_randn

Model = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@torch.no_grad()
def sample(
    model: Model,
    x_T: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    eta: float = 0.0,
    labels: torch.Tensor | None = None,
    noise_seeds: Sequence[int] | None = None,
    clip_sample: bool = True,
    clip_range: float = 1.0,
    prev_timesteps: Sequence[int] | None = None,
    final_alpha: float = 1.0,
) -> torch.Tensor:
    """Run the reverse process from x_T (B, C, H, W) over descending ``timesteps``; returns x_0 in [-1, 1].

    ``alphas_cumprod``: (T,) ᾱ_t. ``noise_seeds``: one per image, needed when ``eta > 0``.
    ``prev_timesteps``: the timestep each step moves to, −1 for ``final_alpha``
    (:func:`~diffaudit.sampling.schedules.ddim_previous`); default the next of ``timesteps``, −1 after the last.
    """
    if eta > 0 and (noise_seeds is None or len(noise_seeds) != x_T.shape[0]):
        raise ValueError("eta > 0 needs one noise seed per image")
    ab = alphas_cumprod.to(torch.float64)
    steps = [int(t) for t in timesteps]
    if not steps or not all(0 <= t < len(ab) for t in steps) or any(a <= b for a, b in zip(steps, steps[1:])):
        raise DiffauditError(f"timesteps must be distinct, descending and in [0, {len(ab) - 1}] (the reverse process "
                             f"runs from noise to the image); got {steps[:8]}{' ...' if len(steps) > 8 else ''}")
    x = x_T.float()
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    ts = list(timesteps)
    prev = list(prev_timesteps) if prev_timesteps is not None else ts[1:] + [-1]
    keys = None if noise_seeds is None else torch.as_tensor(list(noise_seeds), dtype=torch.int64, device=x.device)
    for k, t in enumerate(ts):
        a_t = float(ab[t])
        a_prev = float(ab[prev[k]]) if prev[k] >= 0 else float(final_alpha)
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        eps = model(x, tt, labels).float()
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        if clip_sample:
            x0 = x0.clamp(-clip_range, clip_range)  # the direction term keeps the unclipped ε̂, as DDIMPipeline does
        sigma = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5
        x = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            z = counter_randn(keys, k, x.shape[1:])
            x = x + sigma * z
        finite &= torch.isfinite(x).all()
    if not bool(finite):
        raise NonFiniteError("the model produced NaN or infinite values while sampling; no images were written")
    return x.clamp(-1, 1)
