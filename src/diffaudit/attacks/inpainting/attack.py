"""The inpainting reconstruction attack (Carlini et al. 2023, Section 5.2, Figures 11-12).

For each target image x: hide part of it (mask, 1 = known), inpaint it ``n_inpaint`` times with the
target model (RePaint, :func:`diffaudit.sampling.inpaint.inpaint`; paper: 5,000), score each
inpainting by target loss / shadow loss at t = 100 (:mod:`.scoring`; the shadow did not train on
x), keep the ``top_k`` = 10 lowest loss ratios and measure their ℓ2 to x:

    ℓ2(a, b) = sqrt(mean((a − b)²)) over all pixels in [0, 1]      (Conventions: distances)

Inpaintings are rounded to uint8 first (as they would be stored), so every number can be
recomputed from saved images. Members (trained on) should come out clearly closer than
non-members (Figure 12): a memorizing model fills in the hidden half of *its* training image.

Per target: ``best_l2`` = the smallest ℓ2 among the kept top-k; ``mean_topk_l2`` = their mean
(the paper's top-10 average when ``top_k`` = 10; named for k, since runs keep fewer when
``n_inpaint`` is small, and the command records ``top_k`` beside it); ``top1_l2`` = the ℓ2 of the
best-ranked one; ``top_loss_ratios`` = the kept ones' loss ratios, lowest first. These ratios only
rank one target's inpaintings (lower = better reconstruction); they are not membership scores,
which point the other way (Conventions: larger = more likely a member; :func:`.summary.membership_scores`).
``oracle_best_l2`` (smallest over all n, ratios ignored) shows what ranking loses.

Known pixels are copied from x, so the whole-image ℓ2 above is the hidden region's ℓ2 times
sqrt(hidden fraction): the paper's measure, but one that shrinks with the mask. ``mean_topk_l2_hidden``
(the same top-k, ℓ2 over the hidden pixels only) compares across masks; ``hidden_fraction`` is
the share of hidden pixels.

Results written before the rename call these ``mean_top10_l2`` and ``mean_top10_l2_hidden`` whatever
``top_k`` was; :meth:`TargetResult.from_dict` reads both names (``diffaudit.core.results.INPAINT_RENAMED_FIELDS``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from diffaudit.attacks.inpainting.scoring import score_inpaintings, score_noise
from diffaudit.core.errors import DiffauditError
from diffaudit.core.results import with_current_names
from diffaudit.data.dataset import from_model_space, to_model_space
from diffaudit.distances.pixel import l2
from diffaudit.models.loss import MAX_NOISE_DRAWS
from diffaudit.sampling.inpaint import inpaint, inpainting_seeds
from diffaudit.sampling.masks import validate_mask

Model = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class InpaintAttackConfig:
    """Hyper-parameters of the attack (recorded in settings)."""

    n_inpaint: int = 64
    top_k: int = 10
    steps: int = 50
    jump_length: int = 5
    jump_n_sample: int = 2
    eta: float = 1.0
    timestep: int = 100
    n_draws: int = 4
    seed: int = 0

    def validate(self, num_train_timesteps: int | None = None) -> None:
        """Refuse values the attack cannot run with. ``num_train_timesteps``: T of the target model,
        when known; ``steps`` must not exceed it (the sampler respaces T timesteps into ``steps``
        levels), and the command checks this before it records any settings."""
        if self.n_inpaint < 1:
            raise DiffauditError(f"--n-inpaint must be at least 1; got {self.n_inpaint}")
        if not 1 <= self.top_k <= self.n_inpaint:
            raise DiffauditError(f"--top-k must lie in [1, --n-inpaint = {self.n_inpaint}]; got {self.top_k}")
        if not 1 <= self.n_draws <= MAX_NOISE_DRAWS:
            raise DiffauditError(f"--n-draws must lie in [1, {MAX_NOISE_DRAWS:,}]; got {self.n_draws}")
        for name in ("steps", "jump_length", "jump_n_sample"):
            if getattr(self, name) < 1:
                raise DiffauditError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if not 0 <= self.eta <= 1:  # above 1 the DDIM variance exceeds 1 − ᾱ_prev: not a RePaint/DDIM step
            raise DiffauditError(f"--eta must lie in [0, 1] (0: DDIM, 1: DDPM); got {self.eta}")
        if num_train_timesteps is not None and self.steps > num_train_timesteps:
            raise DiffauditError(f"--steps must lie in [1, {num_train_timesteps}] (the target model has "
                                 f"{num_train_timesteps} timesteps); got {self.steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TargetResult:
    """One target's outcome. ℓ2 values in [0, 1]; ``top_*`` lists are in rank order (lowest loss ratio
    first, i.e. the best reconstruction by the ranking first)."""

    index: int
    id: str
    member: bool
    mask: str
    shadow: str
    best_l2: float
    mean_topk_l2: float  # mean ℓ2 of the kept top_k (len(top_l2)); the paper's top-10 mean when top_k = 10
    top1_l2: float
    oracle_best_l2: float
    mean_l2: float
    top_l2: list[float]
    top_loss_ratios: list[float]  # target/shadow loss ratio of the kept inpaintings, lowest first; lower = better reconstruction
    top_inpaintings: list[int] = field(default_factory=list)  # inpainting j: seed derive_seed(seed, "inpaint", index, j)
    hidden_fraction: float | None = None  # share of the pixels the mask hides, in (0, 1]
    mean_topk_l2_hidden: float | None = None  # the kept top-k's mean ℓ2 over the hidden pixels only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TargetResult":
        """The result of :meth:`to_dict`, or of an earlier version, which used the old names of
        ``diffaudit.core.results.INPAINT_RENAMED_FIELDS`` (the same values)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in with_current_names(d).items() if k in names})


def hidden_l2(images: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ℓ2 = sqrt(mean((a − b)²)) over the hidden pixels only (``mask`` (H, W) == 0; all channels),
    [0, 1] pixels, between each of uint8 ``images`` (n, H, W, C) and ``original`` (H, W, C):
    float64 (n,). NaN where the mask hides nothing."""
    hidden = np.asarray(mask) < 0.5
    if not hidden.any():
        return np.full(len(images), np.nan)
    # the hidden pixels as a 1 x n_hidden image: the same ℓ2 as everywhere else
    return rms_l2(np.asarray(images)[:, hidden][:, None], np.asarray(original)[hidden][None])


def rms_l2(images: np.ndarray, original: np.ndarray) -> np.ndarray:
    """ℓ2 = sqrt(mean((a − b)²)) on [0, 1] pixels between each of uint8 ``images`` (n, H, W, C) and
    ``original`` (H, W, C): float64 (n,) (:func:`diffaudit.distances.pixel.l2`)."""
    images = np.asarray(images)
    return l2(images, np.broadcast_to(np.asarray(original), images.shape)).cpu().numpy()


def inpaint_targets(
    model: Model,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    target_indices: Sequence[int],
    config: InpaintAttackConfig,
    alphas_cumprod: torch.Tensor,
    labels: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    micro_batch: int = 1024,
) -> np.ndarray:
    """``n_inpaint`` inpaintings of each of N targets, all in one batch (chunked by ``micro_batch``).

    Args:
        images: uint8 (N, H, W, C) targets; masks: (N, H, W) or (H, W), 1 = known.
        target_indices: N dataset indices (they key the seeds).
        labels: (N,) class indices for class-conditional models.

    Returns:
        uint8 (N, n_inpaint, H, W, C).
    """
    images = np.asarray(images)
    config.validate()
    x0 = to_model_space(images).to(device)  # uint8 (N, H, W, C), checked
    N, n, (height, width) = len(images), config.n_inpaint, images.shape[1:3]
    if len(target_indices) != N:
        raise DiffauditError(f"{len(target_indices)} target indices for {N} images")
    masks = np.asarray(masks)
    if masks.shape == (N, height, width):  # one mask per target, each checked (an all-ones one inpaints nothing)
        m = torch.as_tensor(np.stack([validate_mask(k, height, width, name=f"mask {i}") for i, k in enumerate(masks)]))
    else:
        m = torch.as_tensor(validate_mask(masks, height, width))[None].expand(N, height, width)
    seeds = [s for i in target_indices for s in inpainting_seeds(config.seed, int(i), n)]
    lab = None if labels is None else torch.as_tensor(np.asarray(labels), device=device).long().repeat_interleave(n)
    out = inpaint(
        model, x0.repeat_interleave(n, 0), m.to(device).repeat_interleave(n, 0), alphas_cumprod=alphas_cumprod,
        seeds=seeds, steps=config.steps, jump_length=config.jump_length, jump_n_sample=config.jump_n_sample,
        eta=config.eta, labels=lab, micro_batch=micro_batch,
    )
    return from_model_space(out).reshape(N, n, *images.shape[1:])


def score_target(
    target: Model,
    shadow: Model,
    image: np.ndarray,
    inpaintings: np.ndarray,
    *,
    target_index: int,
    key: str,
    member: bool,
    mask_name: str,
    shadow_name: str,
    config: InpaintAttackConfig,
    alphas_cumprod: torch.Tensor,
    shadow_alphas_cumprod: torch.Tensor | None = None,
    label: int | None = None,
    device: str | torch.device = "cpu",
    micro_batch: int = 1024,
    mask: np.ndarray | None = None,
) -> tuple[TargetResult, np.ndarray]:
    """Score one target's inpaintings (uint8 (n, H, W, C)), keep the top k, measure ℓ2 to ``image``.

    ``mask`` (H, W), 1 = known: the mask they were made with, for the hidden-region ℓ2 (None: not
    measured). Returns ``(result, kept)``, kept = uint8 (top_k, H, W, C) in rank order.

    Raises :class:`DiffauditError` for fewer inpaintings than ``config.top_k`` (its mean was of fewer).
    """
    config.validate()
    if len(inpaintings) < config.top_k:
        raise DiffauditError(f"{len(inpaintings)} inpaintings to rank, fewer than top_k = {config.top_k}: the "
                             f"top-{config.top_k} mean would be of {len(inpaintings)}")
    x = to_model_space(inpaintings).to(device)
    noise = score_noise(config.seed, target_index, config.n_draws, x.shape[1:], device=device)
    lab = None if label is None else torch.full((len(x),), int(label), dtype=torch.long, device=device)
    scores = score_inpaintings(target, shadow, x, alphas_cumprod=alphas_cumprod, noise=noise, timestep=config.timestep,
                               labels=lab, shadow_alphas_cumprod=shadow_alphas_cumprod, micro_batch=micro_batch)
    order = np.argsort(scores.ratio, kind="stable")[: config.top_k]
    l2_all = rms_l2(inpaintings, image)
    top = l2_all[order]
    result = TargetResult(
        index=int(target_index), id=str(key), member=bool(member), mask=mask_name, shadow=shadow_name,
        best_l2=float(top.min()), mean_topk_l2=float(top.mean()), top1_l2=float(top[0]),
        oracle_best_l2=float(l2_all.min()), mean_l2=float(l2_all.mean()),
        top_l2=[float(v) for v in top], top_loss_ratios=[float(v) for v in scores.ratio[order]],
        top_inpaintings=[int(j) for j in order],
    )
    if mask is not None:
        hidden = hidden_l2(np.asarray(inpaintings)[order], image, mask)
        result.hidden_fraction = float((np.asarray(mask) < 0.5).mean())
        result.mean_topk_l2_hidden = None if np.isnan(hidden).any() else float(hidden.mean())
    return result, np.asarray(inpaintings)[order]


def masked_view(image: np.ndarray, mask: np.ndarray, fill: int = 128) -> np.ndarray:
    """uint8 (H, W, C) with the hidden pixels (mask 0) set to ``fill`` (grey), for figures."""
    out = np.array(image, copy=True)
    out[np.asarray(mask) < 0.5] = fill
    return out


__all__ = [
    "InpaintAttackConfig", "TargetResult", "inpaint_targets", "score_target", "rms_l2", "hidden_l2", "masked_view",
]
