"""RePaint inpainting (Lugmayr et al., CVPR 2022, Algorithm 1) as a pure, batched, seeded function.

The inpainting attack of Carlini et al. 2023 (Section 5.2) hides part of a target image and lets the
model fill it in thousands of times. Each inpainting runs the reverse process of an ε-prediction
DDPM over a respaced schedule τ_1 < ... < τ_S of the T training timesteps, and at **every** step
replaces the known region by the original, forward-noised to the new level (RePaint Eq. 8a-8c):

    known     x_{k-1} = sqrt(ᾱ_{k-1})·x_0 + sqrt(1 − ᾱ_{k-1})·ε'                      (8a)
    unknown   x̂_0 = (x_k − sqrt(1 − ᾱ_k)·ε̂) / sqrt(ᾱ_k), clipped to [-1, 1]
              x_{k-1} = sqrt(ᾱ_{k-1})·x̂_0 + sqrt(1 − ᾱ_{k-1} − σ_k²)·ε̂ + σ_k·z          (8b; DDIM Eq. 12)
              σ_k = η·sqrt((1 − ᾱ_{k-1})/(1 − ᾱ_k))·sqrt(1 − ᾱ_k/ᾱ_{k-1})  (η = 1: DDPM ancestral)
    combine   x_{k-1} = m ⊙ known + (1 − m) ⊙ unknown                                   (8c)

with ᾱ_k = ᾱ_{τ_k} and ᾱ_0 = 1 (the clean image), m the mask (1 = known). RePaint's resampling
goes back up ``jump_length`` levels, ``jump_n_sample − 1`` times at every ``jump_length``-th level,
by the forward process x_k = sqrt(ᾱ_k/ᾱ_{k-1})·x_{k-1} + sqrt(1 − ᾱ_k/ᾱ_{k-1})·z (Algorithm 1,
line 10, over a respaced step), so the inpainted region harmonises with the known one. The level
sequence is the one diffusers' ``RePaintScheduler.set_timesteps`` builds (see :func:`repaint_levels`).
At level 0, (8a) is the original itself, so the returned image keeps every known pixel exactly.

Randomness: inpainting b draws all its noise from its own key ``seeds[b]`` (for the attack,
``derive_seed(seed, "inpaint", target_index, j)``, :func:`inpainting_seeds`) and the position in the
schedule, through :func:`counter_randn`, a counter-based Gaussian generator computed with integer
ops on the device. An inpainting is therefore reproducible alone, bitwise the same whatever batch or
chunk it runs in, and a batch of thousands needs no per-row CPU generator (which would cost more
than the UNet on a GPU). The numbers are identical on every device up to float rounding of the
Box-Muller transform (the integer part is exact).

The model is any callable ``model(x_t (B, C, H, W), t (B,) long, labels (B,) | None) -> ε̂``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.core.seeds import _mix32, counter_randn, derive_seed  # noqa: F401 (re-exported)

Model = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

# --------------------------------------------------------------------------- schedules

def respaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """τ_1 < ... < τ_S: ``steps`` training timesteps evenly spread over [0, T − 1], both ends included.

    Example: T = 1000, steps = 4 -> [0, 333, 666, 999]. ``steps = 1`` gives [T − 1]. Level k ≥ 1 of
    the sampler sits at τ_k; level 0 is the clean image (ᾱ = 1).
    """
    T, S = int(num_train_timesteps), int(steps)
    if not 1 <= S <= T:
        raise DiffauditError(f"--steps must lie in [1, {T}]; got {steps}")
    if S == 1:
        return [T - 1]
    # round(k (T-1) / (S-1)) in exact integer arithmetic (half up)
    return [(2 * k * (T - 1) + (S - 1)) // (2 * (S - 1)) for k in range(S)]


def repaint_levels(steps: int, *, jump_length: int, jump_n_sample: int) -> list[int]:
    """The sampler's path through levels S, ..., 0 with RePaint's jumps back up.

    Starts at ``steps`` (pure noise), ends at 0 (clean); consecutive entries differ by ±1 (−1: a
    denoising step, +1: a forward re-noising step). At every level ``j`` in
    ``range(0, steps − jump_length, jump_length)`` the path jumps up ``jump_length`` levels and back
    down ``jump_n_sample − 1`` times (RePaint, Section 4.2 and Figure 9; the same sequence as
    diffusers' ``RePaintScheduler.set_timesteps``, which lists the levels after the first).
    ``jump_n_sample = 1`` is plain ancestral sampling without resampling.
    """
    if steps < 1:
        raise DiffauditError(f"--steps must be at least 1; got {steps}")
    if jump_length < 1:
        raise DiffauditError(f"--jump-length must be at least 1; got {jump_length}")
    if jump_n_sample < 1:
        raise DiffauditError(f"--jump-n-sample must be at least 1; got {jump_n_sample}")
    jumps = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    levels = [steps]
    t = steps
    while t >= 1:
        t -= 1
        levels.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                levels.append(t)
    return levels


def model_evaluations(steps: int, *, jump_length: int, jump_n_sample: int) -> int:
    """Number of model calls one inpainting costs (the down moves of :func:`repaint_levels`)."""
    lv = repaint_levels(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    return sum(1 for a, b in zip(lv, lv[1:]) if b < a)


def inpainting_seeds(seed: int, target_index: int, n: int, *, start: int = 0) -> list[int]:
    """Keys of inpaintings ``start .. start + n − 1`` of target ``target_index`` (dataset index)."""
    return [derive_seed(int(seed), "inpaint", int(target_index), j) for j in range(start, start + n)]


# --------------------------------------------------------------------------- the sampler

def _as_keys(seeds, n: int, device) -> torch.Tensor:
    keys = torch.as_tensor(list(seeds) if not isinstance(seeds, torch.Tensor) else seeds, dtype=torch.int64)
    if keys.ndim != 1 or len(keys) != n:
        raise DiffauditError(f"inpaint: need one seed per inpainting ({n}); got {tuple(keys.shape)}")
    if (keys < 0).any():
        raise DiffauditError("inpaint: seeds must be non-negative (derive_seed gives [0, 2^63))")
    return keys.to(device)


def _broadcast_rows(x: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if x.shape[0] == n:
        return x
    if x.shape[0] == 1:
        return x.expand(n, *x.shape[1:])
    raise DiffauditError(f"inpaint: {name} has {x.shape[0]} rows for {n} inpaintings (give 1 or {n})")


@torch.no_grad()
def inpaint(
    model: Model,
    original: torch.Tensor,
    mask: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    steps: int = 50,
    jump_length: int = 5,
    jump_n_sample: int = 2,
    eta: float = 1.0,
    labels: torch.Tensor | None = None,
    clip_denoised: bool = True,
    micro_batch: int | None = None,
) -> torch.Tensor:
    """Inpaint ``original`` where ``mask`` is 0, once per seed (RePaint, Algorithm 1).

    Args:
        model: ε-predictor ``model(x_t, t, labels) -> ε̂`` (any callable; float32 is fed, ε̂ cast back).
        original: (B, C, H, W) or (1, C, H, W) in [-1, 1] (model space); one row per inpainting, or
            one row shared by all (thousands of inpaintings of one target).
        mask: (H, W), (B | 1, H, W) or (B | 1, 1, H, W); 1 = known pixel, 0 = to inpaint.
        alphas_cumprod: ᾱ_t, (T,) (float64 on the CPU is fine).
        seeds: B non-negative int keys, one per inpainting (:func:`inpainting_seeds`).
        steps: S, respaced levels (:func:`respaced_timesteps`).
        jump_length, jump_n_sample: RePaint's resampling (:func:`repaint_levels`); 1 sample = none.
        eta: σ scale of the unknown-region step (1 = DDPM ancestral, 0 = deterministic DDIM).
        labels: (B,) or (1,) class indices for class-conditional models, else None.
        clip_denoised: clip x̂_0 to [-1, 1] (as diffusers' DDPM/RePaint schedulers do).
        micro_batch: inpaintings per model call (memory bound); results do not depend on it.

    Returns:
        float32 (B, C, H, W) in [-1, 1] on ``original``'s device; pixels with mask 1 equal
        ``original`` exactly.
    """
    B = len(seeds)
    if original.ndim != 4:
        raise DiffauditError(f"inpaint: original must be (B, C, H, W); got shape {tuple(original.shape)}")
    dev = original.device
    H, W = original.shape[-2:]
    m = torch.as_tensor(mask, device=dev)
    if m.ndim == 2:  # (H, W)
        m = m[None, None]
    elif m.ndim == 3:  # (B, H, W)
        m = m[:, None]
    if m.ndim != 4 or tuple(m.shape[-2:]) != (H, W) or m.shape[1] != 1:
        raise DiffauditError(f"inpaint: mask of shape {tuple(torch.as_tensor(mask).shape)} does not fit images {H}x{W}")
    known = m > 0.5
    x_known = _broadcast_rows(original.float(), B, "original")
    known = _broadcast_rows(known, B, "mask")
    lab = None if labels is None else _broadcast_rows(torch.as_tensor(labels, device=dev).long().reshape(-1), B, "labels")
    keys = _as_keys(seeds, B, dev)

    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    taus = respaced_timesteps(len(ab), steps)
    levels = repaint_levels(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    a_level = [1.0] + [float(ab[t]) for t in taus]  # ᾱ at level k; level 0 = clean
    mb = B if not micro_batch else max(1, int(micro_batch))
    out = torch.empty((B, *x_known.shape[1:]), dtype=torch.float32, device=dev)
    for s in range(0, B, mb):
        sl = slice(s, min(B, s + mb))
        out[sl] = _inpaint_rows(
            model, x_known[sl], known[sl], keys[sl], None if lab is None else lab[sl],
            levels=levels, taus=taus, a_level=a_level, eta=float(eta), clip=clip_denoised,
        )
    return out


def _inpaint_rows(model, x0, known, keys, labels, *, levels, taus, a_level, eta, clip) -> torch.Tensor:
    """One chunk of :func:`inpaint`. Noise counter of move n (1-based) and kind q is 2n + q
    (q = 0: z of the unknown step or the re-noising; q = 1: ε' of the known region); 0 is x_T."""
    b, shape, dev = x0.shape[0], tuple(x0.shape[1:]), x0.device
    x = counter_randn(keys, 0, shape)
    finite = torch.ones((), dtype=torch.bool, device=dev)
    for n, (k, k_next) in enumerate(zip(levels, levels[1:]), start=1):
        if k_next < k:  # denoise level k -> k-1
            a_t, a_prev = a_level[k], a_level[k_next]
            t = torch.full((b,), taus[k - 1], dtype=torch.long, device=dev)
            eps = model(x, t, labels).float()
            x0_hat = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if clip:
                x0_hat = x0_hat.clamp(-1, 1)
                eps = (x - math.sqrt(a_t) * x0_hat) / math.sqrt(1 - a_t)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_prev, 0.0))
            unknown = math.sqrt(a_prev) * x0_hat + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                unknown = unknown + sigma * counter_randn(keys, 2 * n, shape)
            if a_prev < 1.0:
                known_part = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * counter_randn(keys, 2 * n + 1, shape)
            else:
                known_part = x0
            x = torch.where(known, known_part, unknown)
            finite &= torch.isfinite(eps).all()
        else:  # re-noise level k -> k+1 (RePaint's jump back)
            a = a_level[k_next] / a_level[k]
            x = math.sqrt(a) * x + math.sqrt(1 - a) * counter_randn(keys, 2 * n, shape)
    if not bool(finite):
        raise NonFiniteError("the model produced NaN or infinite values while inpainting; nothing was written")
    return torch.where(known, x0, x.clamp(-1, 1))
