"""Scoring inpaintings with a target and a shadow model (Carlini et al. 2023, Section 5.2).

The attack ranks the inpaintings of a target image by how well the *target* model denoises them,
relative to a *shadow* model that never saw the image:

    L(x, t, ε) = mean over pixels of (ε − ε_θ(sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε, t))²      (Sec. 5.1)
    ratio(x̂)  = mean_d L_target(x̂, t, ε_d) / mean_d L_shadow(x̂, t, ε_d),   t = 100 by default

Lower ratio = the target model finds x̂ unusually easy to denoise = a better candidate
reconstruction. The ratio ranks one target's inpaintings; it is not a membership score (those are
larger for members, Conventions: scores), and results store it as ``top_loss_ratios``. Both models see the identical ε_d (d = 1..D, D ≥ 1, default 4), and every
inpainting of one target is scored with the same D draws (common random numbers: differences
in score come from the images, not from the noise). ε_d of target i is drawn from
``derive_seed(seed, "inpaint-score", i, d)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.core.seeds import derive_seed, randn_per_seed

Model = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def score_noise(seed: int, target_index: int, n_draws: int, shape, *, device="cpu") -> torch.Tensor:
    """ε_d for d = 0..D−1 of target ``target_index``: float32 (D, C, H, W), shared by both models."""
    if n_draws < 1:
        raise DiffauditError(f"--n-draws must be at least 1; got {n_draws}")
    seeds = [derive_seed(int(seed), "inpaint-score", int(target_index), d) for d in range(n_draws)]
    return randn_per_seed(seeds, tuple(shape), device=device)


@torch.no_grad()
def denoising_loss(
    model: Model,
    images: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    timestep: int,
    noise: torch.Tensor,
    labels: torch.Tensor | None = None,
    micro_batch: int | None = 1024,
) -> np.ndarray:
    """Loss of each image at ``timestep``, averaged over the noise draws.

    Args:
        model: ε-predictor callable ``model(x_t, t, labels)``.
        images: (B, C, H, W) in [-1, 1].
        alphas_cumprod: ᾱ_t, (T,).
        timestep: t in [0, T).
        noise: (D, C, H, W) shared by every image, or (D, B, C, H, W) per image.
        labels: (B,) class indices or None.
        micro_batch: rows (image x draw) per model call (0 or None: all at once).

    Returns:
        float64 (B,): mean over d of mean over pixels of (ε_d − ε̂)².
    """
    T = len(alphas_cumprod)
    if not 0 <= int(timestep) < T:
        raise DiffauditError(f"--timestep must lie in [0, {T - 1}]; got {timestep}")
    B = images.shape[0]
    D = noise.shape[0]
    if noise.ndim == 4:
        noise = noise[:, None].expand(D, B, *noise.shape[1:])
    if tuple(noise.shape[1:]) != tuple(images.shape):
        raise DiffauditError(f"noise of shape {tuple(noise.shape)} does not fit images {tuple(images.shape)}")
    ab = float(torch.as_tensor(alphas_cumprod, dtype=torch.float64)[int(timestep)])
    dev = images.device
    # rows ordered (image, draw): image b, draw d is row b * D + d
    x = images.float()[:, None].expand(B, D, *images.shape[1:]).reshape(B * D, *images.shape[1:])
    eps = noise.to(dev, torch.float32).transpose(0, 1).reshape(B * D, *images.shape[1:])
    lab = None if labels is None else torch.as_tensor(labels, device=dev).long().repeat_interleave(D)
    out = torch.empty(B * D, dtype=torch.float64, device=dev)
    mb = B * D if not micro_batch else max(1, int(micro_batch))  # as the sampler: 0 or None = every row at once
    for s in range(0, B * D, mb):
        sl = slice(s, min(B * D, s + mb))
        x_t = ab ** 0.5 * x[sl] + (1 - ab) ** 0.5 * eps[sl]
        t = torch.full((x_t.shape[0],), int(timestep), dtype=torch.long, device=dev)
        pred = model(x_t, t, None if lab is None else lab[sl]).float().to(dev)
        out[sl] = (eps[sl] - pred).pow(2).flatten(1).mean(1).double()
    loss = out.reshape(B, D).mean(1).cpu().numpy()
    if not np.isfinite(loss).all():
        raise NonFiniteError(f"a model returned non-finite values when scoring at t={timestep}; check its weights")
    return loss


@dataclass(frozen=True)
class Scores:
    """Per-inpainting scores, each float64 (n,). ``ratio`` = target_loss / shadow_loss, lower = better."""

    ratio: np.ndarray
    target_loss: np.ndarray
    shadow_loss: np.ndarray


def loss_ratio(target_loss, shadow_loss) -> np.ndarray:
    """target_loss / shadow_loss, element by element (lower = better reconstruction)."""
    t = np.asarray(target_loss, dtype=np.float64)
    s = np.asarray(shadow_loss, dtype=np.float64)
    if t.shape != s.shape:
        raise DiffauditError(f"target losses {t.shape} and shadow losses {s.shape} differ in shape")
    if (s <= 0).any():
        raise DiffauditError("a shadow-model loss is zero or negative: cannot divide by it")
    return t / s


def score_inpaintings(
    target: Model,
    shadow: Model,
    images: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor,
    timestep: int = 100,
    labels: torch.Tensor | None = None,
    shadow_alphas_cumprod: torch.Tensor | None = None,
    micro_batch: int | None = 1024,
) -> Scores:
    """Score inpaintings (B, C, H, W) in [-1, 1] by target loss / shadow loss with identical ``noise``."""
    lt = denoising_loss(target, images, alphas_cumprod=alphas_cumprod, timestep=timestep, noise=noise,
                        labels=labels, micro_batch=micro_batch)
    ls = denoising_loss(shadow, images, alphas_cumprod=alphas_cumprod if shadow_alphas_cumprod is None else shadow_alphas_cumprod,
                        timestep=timestep, noise=noise, labels=labels, micro_batch=micro_batch)
    return Scores(ratio=loss_ratio(lt, ls), target_loss=lt, shadow_loss=ls)
