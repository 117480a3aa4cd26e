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

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.core.io import loads_json
from diffaudit.core.seeds import counter_randn
from diffaudit.data.dataset import to_model_space
from diffaudit.models.loss import loss_noise_keys
from diffaudit.models.quiet import quiet_loading

#: Components a pipeline is loaded without (passed as None; diffaudit samples without the safety checker,
#: and the feature extractor serves only it): their folders need not be there.
_NOT_LOADED = ("safety_checker", "feature_extractor")
#: Weights files that are pickles (loading them can run code): never loaded, and refused where they are all a component has.
_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def sd_components(path, flag: str = "--model") -> dict[str, Path]:
    """The component folders (name -> folder) that a Stable Diffusion pipeline folder's ``model_index.json``
    lists and diffaudit loads, each checked to be there, not empty, and, where it holds weights, to hold
    safetensors ones; weights unread.

    Raises :class:`DiffauditError` naming the folder and the component otherwise: diffusers itself would
    load a missing ``tokenizer/`` as a tokenizer of nothing (which fails only mid-sampling, after the
    output folder was made), a missing ``vae/`` from the pipeline folder's root, and refuse pickled
    ``.bin`` weights with a bare OSError.
    """
    root = Path(path)
    index = root / "model_index.json"
    try:
        spec = loads_json(index.read_text(encoding="utf-8"), f"{flag} {root}: {index}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiffauditError(f"{flag} {root}: {index} is not readable JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise DiffauditError(f"{flag} {root}: {index} is not a JSON object")
    out: dict[str, Path] = {}
    for name, value in spec.items():
        if name.startswith("_") or name in _NOT_LOADED or not isinstance(value, list) or value in ([None, None], []):
            continue  # a setting (requires_safety_checker), or a component this pipeline does not have
        what = f"the {name} ({value[-1]})" if isinstance(value[-1], str) else f"the {name}"
        folder = root / name
        if not folder.is_dir() or not any(folder.iterdir()):
            raise DiffauditError(f"{flag} {root}: model_index.json lists {what}, but {folder} is "
                                 f"{'empty' if folder.is_dir() else 'missing'}; the pipeline folder is incomplete "
                                 "(copy the whole pipeline, e.g. with save_pretrained)")
        if not any(folder.glob("*.safetensors")) and any(f for pattern in _PICKLED for f in folder.glob(pattern)):
            raise DiffauditError(f"{flag} {root}: {what} in {folder} has only pickled weights (.bin and the like), "
                                 "which diffaudit never loads (unpickling can run code); save it in safetensors format")
        _check_component_files(folder, f"{flag} {root}: {what}")
        out[name] = folder
    return out


def _check_component_files(folder: Path, what: str) -> None:
    """Refuse a component whose configs are not readable JSON or whose safetensors files are cut or damaged
    (their headers only are read), naming ``what`` and the file: from_pretrained's own errors do not always
    say which component failed."""
    from safetensors import SafetensorError, safe_open

    for config in sorted(folder.glob("*config.json")):
        try:
            loads_json(config.read_text(encoding="utf-8"), f"{what}: {config}")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DiffauditError(f"{what}: {config} is not readable JSON ({exc})") from None
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(weights, framework="pt"):
                pass
        except (OSError, SafetensorError) as exc:
            raise DiffauditError(f"{what}: {weights} is a damaged or cut safetensors file ({exc})") from None


def load_sd_pipeline(path, device="cpu", dtype=torch.float32, flag: str = "--model"):
    """A local StableDiffusionPipeline folder (safetensors only, no hub access); ``flag``: the option the
    path came from, which errors name.

    Its components are checked first (:func:`sd_components`); a component that cannot be loaded (damaged
    weights or config) is a :class:`DiffauditError` naming the folder and, where it can tell, the component.
    """
    from diffusers import StableDiffusionPipeline
    from safetensors import SafetensorError

    root = Path(path)
    components = sd_components(root, flag)
    try:
        with quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(root, torch_dtype=dtype, use_safetensors=True,
                                                           local_files_only=True, requires_safety_checker=False,
                                                           **{name: None for name in _NOT_LOADED})
    except (OSError, ValueError, RuntimeError, TypeError, SafetensorError) as exc:  # RecursionError is a RuntimeError
        if isinstance(exc, RecursionError):  # a config nested thousands deep
            text = "a config file is nested too deeply to be read as JSON"
        else:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = next((n for n, folder in components.items() if str(folder) in str(exc)), None)
        where = f"the {name} in {components[name]}" if name else "the pipeline"
        raise DiffauditError(f"{flag} {root}: {where} cannot be loaded: {text}") from None
    if getattr(pipe, "tokenizer", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise DiffauditError(f"{flag} {root}: the pipeline has no tokenizer or no text encoder; a Stable Diffusion "
                             "pipeline needs both")
    tokens, positions = int(pipe.tokenizer.model_max_length), int(pipe.text_encoder.config.max_position_embeddings)
    if tokens > positions:  # a tokenizer without its files (diffusers loads one all the same) would overflow here
        raise DiffauditError(f"{flag} {root}: the tokenizer in {root / 'tokenizer'} pads prompts to {tokens} tokens, but the "
                             f"text encoder takes at most {positions}; the tokenizer's files are missing or not this "
                             "pipeline's")
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
    bar=None,
) -> np.ndarray:
    """Loss of every (image, caption) at every timestep and query: float64 (N, len(timesteps), Q).

    Args:
        pipe: a ``StableDiffusionPipeline`` (VAE, text encoder, tokenizer, UNet, scheduler).
        images: uint8 (N, H, W, 3) at the pipeline's resolution (``unet.sample_size × vae_scale_factor``).
        captions: N strings.
        timesteps, n_draws, flips, noise_seed, indices, bar: as in :func:`diffaudit.models.loss.per_example_loss`.
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
        if bar is not None:
            bar.advance(sl.stop - sl.start)
    return out


@torch.no_grad()
def latent_loss_probe(pipe, batch: int) -> None:
    """The parts of :func:`per_example_latent_loss` on ``batch`` examples that hold the most memory, as
    ``mia --batch-size auto`` measures them (:func:`~diffaudit.core.batch_fit.resolve_batch`): the text
    encoder on full-length prompts, the VAE encoder on (batch, 3, side, side) images and one UNet call
    on their latents, in the pipeline's dtype. Zeros: the memory matters, not the values."""
    dev, dtype = pipe.unet.device, pipe.unet.dtype
    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    ids = torch.zeros((batch, pipe.tokenizer.model_max_length), dtype=torch.long, device=dev)
    emb = pipe.text_encoder(ids)[0]
    z = pipe.vae.encode(torch.zeros((batch, 3, side, side), device=dev, dtype=dtype)).latent_dist.mean
    pipe.unet(z, torch.full((batch,), 999, dtype=torch.long, device=dev), encoder_hidden_states=emb)


def latent_target(prediction: str, z: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """What the UNet was trained to predict from z_t = sqrt(ᾱ)·z + sqrt(1 − ᾱ)·ε (its scheduler's
    ``prediction_type``, as diffusers' training scripts take it): ε; v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·z;
    or the clean latent z itself (``sample``). Same shape as ``z``."""
    if prediction == "v_prediction":
        return (alpha_bar ** 0.5) * eps - ((1 - alpha_bar) ** 0.5) * z
    return z if prediction == "sample" else eps
