"""Per-example loss of a latent diffusion model (Stable Diffusion) with a caption per image.

    z = E(x) · s           (the VAE encoder's posterior mean, times the VAE's scaling factor s)
    L(x, c, t, ε) = mean over latent elements of (target − ε_θ(sqrt(ᾱ_t)·z + sqrt(1 − ᾱ_t)·ε, t, τ(c)))²

where τ(c) is the text encoder's embedding of caption c, and target = ε for an ε-prediction model or
v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·z for a v-prediction one. ε is counter-based noise keyed by
(noise_seed, example index), draw d at counter d, exactly as for pixel models (:mod:`diffaudit.models.loss`),
so every pipeline sees the same ε for the same example. The posterior mean (not a sample) keeps the
loss deterministic. Lower loss = more likely a member.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.core.seeds import counter_randn
from diffaudit.data.dataset import to_model_space
from diffaudit.models.loss import loss_noise_keys


def load_sd_pipeline(path, device="cpu", dtype=torch.float32):
    """A local StableDiffusionPipeline folder (safetensors only, no hub access)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=dtype, use_safetensors=True, local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def per_example_latent_loss(
    pipe,
    images: np.ndarray,
    captions: Sequence[str],
    *,
    timesteps: Sequence[int] = (100,),
    n_draws: int = 1,
    flips: bool = False,
    noise_seed: int = 0,
    batch_size: int = 16,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Loss of every (image, caption) at every timestep and query: float64 (N, len(timesteps), Q).

    Args:
        pipe: a ``StableDiffusionPipeline`` (VAE, text encoder, tokenizer, UNet, scheduler).
        images: uint8 (N, H, W, 3) at the pipeline's resolution (``unet.sample_size × vae_scale_factor``).
        captions: N strings.
        timesteps, n_draws, flips, noise_seed, indices: as in :func:`diffaudit.models.loss.per_example_loss`.
    """
    images = np.asarray(images)
    n = len(images)
    if len(captions) != n:
        raise DiffauditError(f"a latent diffusion loss needs one caption per image: {len(captions)} captions for {n} images")
    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    if images.ndim != 4 or images.shape[1:] != (side, side, 3):
        raise DiffauditError(f"images must be RGB {side}x{side} for this pipeline (use --image-size {side}); got {images.shape[1:]}")
    idx = np.arange(n) if indices is None else np.asarray(indices)
    a_bar = pipe.scheduler.alphas_cumprod.to(torch.float64).cpu()
    ts = [int(t) for t in timesteps]
    if not ts or min(ts) < 0 or max(ts) >= len(a_bar):
        raise DiffauditError(f"timesteps must lie in [0, {len(a_bar) - 1}]; got {list(timesteps)}")
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise DiffauditError(f"the pipeline's scheduler predicts {prediction!r}; the loss knows epsilon, v_prediction "
                             "and sample")
    dev, dtype = pipe.unet.device, pipe.unet.dtype
    n_flip = 2 if flips else 1
    out = np.empty((n, len(ts), n_draws * n_flip), dtype=np.float64)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        tok = pipe.tokenizer(list(captions[sl]), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        emb = pipe.text_encoder(tok.input_ids.to(dev))[0]
        x = to_model_space(images[sl]).to(dev, dtype)
        keys = loss_noise_keys(idx[sl], noise_seed).to(dev)
        for f in range(n_flip):
            z = pipe.vae.encode(x.flip(-1) if f else x).latent_dist.mean * pipe.vae.config.scaling_factor
            for d in range(n_draws):
                eps = counter_randn(keys, d, z.shape[1:]).to(dtype)
                for j, t in enumerate(ts):
                    ab = float(a_bar[t])
                    z_t = (ab ** 0.5) * z + ((1 - ab) ** 0.5) * eps
                    tt = torch.full((z.shape[0],), t, dtype=torch.long, device=dev)
                    pred = pipe.unet(z_t, tt, encoder_hidden_states=emb).sample
                    target = latent_target(prediction, z, eps, ab)
                    val = (target.float() - pred.float()).pow(2).flatten(1).mean(1).double().cpu().numpy()
                    if not np.isfinite(val).all():
                        raise NonFiniteError(f"the pipeline returned non-finite values at t={t}; check its weights")
                    out[sl, j, d * n_flip + f] = val
    return out


def latent_target(prediction: str, z: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """What the UNet was trained to predict from z_t = sqrt(ᾱ)·z + sqrt(1 − ᾱ)·ε (its scheduler's
    ``prediction_type``, as diffusers' training scripts take it): ε; v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·z;
    or the clean latent z itself (``sample``). Same shape as ``z``."""
    if prediction == "v_prediction":
        return (alpha_bar ** 0.5) * eps - ((1 - alpha_bar) ** 0.5) * z
    return z if prediction == "sample" else eps
