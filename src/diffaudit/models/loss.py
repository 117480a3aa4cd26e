"""Per-example denoising loss, the signal of every white-box attack (paper Section 5).

    L(x, t, ε) = mean over pixels of (ε − ε_θ(sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε, t))²

One value per (example, timestep, query). A query is a noise draw ε, optionally on the
horizontally flipped image too (Strong LiRA). ε for (example index, draw) is counter-based noise
keyed by ``derive_seed(noise_seed, "loss-noise", index)`` at counter ``draw``, computed on the
model's device: every model sees the same ε for the same example, whatever the batch, at the cost
of one kernel per batch (equal across devices up to float rounding). Lower loss means "more likely
a member".
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.core.progress import progress_bar
from diffaudit.core.seeds import counter_randn, derive_seed
from diffaudit.data.dataset import to_model_space
from diffaudit.models.denoiser import Denoiser, check_model_input

#: The most noise draws ε a loss averages over (``--draws``, ``--n-draws``): the paper's Strong LiRA uses up
#: to 20; past a thousand the average no longer changes, and 10^11 draws asked for terabytes.
MAX_NOISE_DRAWS = 1000


#: Version of how ε is drawn (above). Loss caches name it from version 2 on: a change to the noise
#: must raise it, or shadow losses cached under the old noise would meet target losses under the new one.
NOISE_SCHEME = 1


def loss_noise_keys(indices: Sequence[int], noise_seed: int) -> torch.Tensor:
    """Keys of ε for examples ``indices`` (shared by every model); draw d is counter d."""
    return torch.tensor([derive_seed(int(noise_seed), "loss-noise", int(i)) for i in indices], dtype=torch.int64)


def loss_noise(indices: Sequence[int], draw: int, noise_seed: int, shape: Sequence[int], device) -> torch.Tensor:
    """ε of shape (len(indices), *shape) for ``draw``: identical for every model."""
    return counter_randn(loss_noise_keys(indices, noise_seed).to(device), int(draw), shape)


@torch.no_grad()
def per_example_loss(
    denoiser: Denoiser,
    images: np.ndarray,
    *,
    timesteps: Sequence[int] = (100,),
    n_draws: int = 1,
    flips: bool = False,
    noise_seed: int = 0,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
    indices: Sequence[int] | None = None,
    progress: str | None = None,
    bar=None,
) -> np.ndarray:
    """Loss of every example at every timestep for every query.

    Args:
        denoiser: the model (any :class:`Denoiser`).
        images: uint8 (N, H, W, C).
        timesteps: integers in [0, T).
        n_draws: noise draws ε per example (Strong LiRA uses up to 20).
        flips: also evaluate the horizontally flipped image with the same ε (doubles the queries).
        noise_seed: seed of ε; keep it equal across models.
        labels: (N,) class indices for class-conditional models.
        batch_size: examples per forward pass.
        indices: the examples' indices in their dataset (seed ε); default 0..N-1.
        progress: a progress bar with this description (examples done, rate, ETA); None: none.
        bar: an open bar (:func:`~diffaudit.core.progress.progress_bar`) to advance by the examples done
            instead, for a caller that computes a dataset's losses in parts.

    Returns:
        float64 (N, len(timesteps), n_draws * (2 if flips else 1)); query q = draw * n_flip + flip.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DiffauditError(f"images must be uint8 (N, H, W, C); got {images.dtype} {images.shape}")
    n = len(images)
    unet = getattr(denoiser, "unet", None)  # any ε-predictor with the interface works; a UNet is checked
    if unet is not None:
        check_model_input(unet.config, images.shape[1:], labels=labels,
                          what=f"the model {denoiser.path or '(in memory)'}")
    idx = np.arange(n) if indices is None else np.asarray(indices)
    if len(idx) != n:
        raise DiffauditError(f"{len(idx)} indices for {n} images")
    T = denoiser.num_train_timesteps
    ts = [int(t) for t in timesteps]
    if not ts or min(ts) < 0 or max(ts) >= T:
        raise DiffauditError(f"timesteps must lie in [0, {T - 1}]; got {list(timesteps)}")
    if not 1 <= n_draws <= MAX_NOISE_DRAWS:
        raise DiffauditError(f"n_draws must lie in [1, {MAX_NOISE_DRAWS:,}]; got {n_draws}")
    if batch_size < 1:
        raise DiffauditError(f"batch_size must be at least 1; got {batch_size}")
    n_flip = 2 if flips else 1
    out = np.empty((n, len(ts), n_draws * n_flip), dtype=np.float64)
    with contextlib.nullcontext(bar) if bar is not None or not progress else progress_bar(progress, n, unit="img") as bar:
        for start in range(0, n, batch_size):
            _loss_batch(denoiser, images, labels, idx, out, start, min(n, start + batch_size), ts=ts, n_draws=n_draws,
                        n_flip=n_flip, noise_seed=noise_seed)
            if bar is not None:
                bar.advance(min(n, start + batch_size) - start)
    return out


def _loss_batch(denoiser: Denoiser, images: np.ndarray, labels, idx: np.ndarray, out: np.ndarray, start: int, stop: int,
                *, ts: list[int], n_draws: int, n_flip: int, noise_seed: int) -> None:
    """Fill ``out[start:stop]`` (see :func:`per_example_loss`) with the losses of one batch of examples."""
    a_bar, dev = denoiser.alphas_cumprod, denoiser.device
    sl = slice(start, stop)
    x0 = to_model_space(images[sl]).to(dev)
    lab = None if labels is None else torch.as_tensor(np.asarray(labels)[sl], dtype=torch.long, device=dev)
    keys = loss_noise_keys(idx[sl], noise_seed).to(dev)
    for d in range(n_draws):
        eps = counter_randn(keys, d, x0.shape[1:])
        for f in range(n_flip):
            x = x0.flip(-1) if f else x0
            for j, t in enumerate(ts):
                ab = float(a_bar[t])
                x_t = (ab ** 0.5) * x + ((1 - ab) ** 0.5) * eps
                tt = torch.full((x.shape[0],), t, dtype=torch.long, device=dev)
                pred = denoiser(x_t, tt, lab)
                val = (eps - pred).pow(2).flatten(1).mean(1).double().cpu().numpy()
                if not np.isfinite(val).all():
                    raise NonFiniteError(
                        f"the model returned non-finite values at t={t} for examples {start}..{stop - 1}; "
                        "check the weights (diverged training?)"
                    )
                out[sl, j, d * n_flip + f] = val
