"""The values of a model folder's config files (``unet/config.json``, ``scheduler/scheduler_config.json``),
checked as they are read, before anything is built from them.

A model folder is input like any other: a value diffusers or torch cannot take (``sample_size: -8``,
``in_channels: "1"``, ``num_train_timesteps: 0``) used to end in a traceback from deep inside them, and a
size-like value past any model's (``layers_per_block: 100000``, ``sample_size: 100000``) in a build that
never ended or an allocation of terabytes. Each check raises a :class:`DiffauditError` naming the
file (``where``: the flag, the folder and the file), the key, its value and what is allowed. A key the
file does not hold takes diffusers' default, which is valid, and is not checked.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from diffaudit.core.errors import DiffauditError
from diffaudit.data.transforms import MAX_IMAGE_SIDE

#: Largest ``sample_size`` (image side, pixels). Published pixel-space diffusion models sample at most
#: 1024 x 1024 (NCSN++ on FFHQ-1024); 4096 leaves four times that side. One 4-channel float32 image at the
#: bound is 256 MiB, where a side of 100,000 asked the allocator for 1.28 TB for x_T of one micro-batch.
MAX_SAMPLE_SIZE = MAX_IMAGE_SIDE
#: Largest ``in_channels`` / ``out_channels``. Images have 1 to 4 channels and a learned-variance UNet
#: gives twice its input; 256 is far past any pixel model, and keeps the first and last convolutions small
#: (the weights file must hold tensors of these shapes, so a larger value only asked for memory first).
MAX_CHANNELS = 256
#: Largest ``layers_per_block`` (ResNet blocks per resolution). DDPM and ADM use 2 or 3, Imagen's
#: efficient U-Net up to 8; 32 leaves four times that, and the ddpm-cifar10 preset built with 32 has 380M
#: parameters and takes about 2 s to build, where 100,000 kept building for hours.
MAX_LAYERS_PER_BLOCK = 32
#: Largest entry of ``block_out_channels`` (a resolution's feature channels), and of ``time_embedding_dim``
#: and ``attention_head_dim``. Pixel-space UNets are at most 1,024 wide (ADM on ImageNet-512; the DDPM
#: CIFAR-10 UNet, 256; Stable Diffusion's latent UNet, 1,280); 8,192 leaves eight times that. One 3x3
#: convolution between two such blocks is 604M parameters (2.4 GB in float32), where a width of 10^6 asked
#: for 36 TB per convolution before the weights file was compared with the config.
MAX_BLOCK_WIDTH = 8192
#: Largest ``num_class_embeds``: 100 times ImageNet's 1,000 classes; the class embedding is one row each.
MAX_CLASSES = 100_000
#: Largest ``num_train_timesteps`` (T). Published discrete schedules have 1,000 to 4,000 steps (the cosine
#: schedule of Nichol & Dhariwal, 4,000); 100,000 is 25 times that, and its ᾱ_t are 800 KB (float64),
#: where T = 10^12 would ask torch.linspace for terabytes.
MAX_TRAIN_TIMESTEPS = 100_000
#: diffusers' DDPMScheduler default T, taken where a scheduler config names none.
DEFAULT_TRAIN_TIMESTEPS = 1000


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as the file writes it (JSON, so a string shows its quotes), cut to ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse(where: str, key: str, allowed: str, value: Any) -> DiffauditError:
    return DiffauditError(f"{where}: {key} must be {allowed}; it is {shown(value)}")


def _int_in(config: Mapping[str, Any], key: str, low: int, high: int, where: str, allowed: str) -> None:
    if key in config:
        value = config[key]
        if not (_is_int(value) and low <= value <= high):
            raise _refuse(where, key, allowed, value)


def check_unet_values(config: Mapping[str, Any], where: str) -> None:
    """Refuse a ``UNet2DModel`` config with a value no UNet can be built or run with (``where``: how the
    error names the file, e.g. ``--model M: M/unet/config.json``): sizes, channel counts, layer and group
    counts must be positive integers, the sizes bounded (the ``MAX_*`` above), the numbers the UNet computes
    with numbers. Block types, activations and the like are names diffusers looks up and refuses itself.

    ``sample_size`` may be null (diffusers' default: the model scores images of any size but cannot be
    sampled, which :attr:`Denoiser.image_size` says), else a positive integer or a pair of them up to
    :data:`MAX_SAMPLE_SIZE`, a multiple of 2 to the number of times the UNet halves it (one less than its
    down blocks; another size fails where the up blocks meet their skip connections).
    """
    if "sample_size" in config and config["sample_size"] is not None:
        size = config["sample_size"]
        sides = list(size) if isinstance(size, (list, tuple)) else [size]
        if len(sides) != (2 if isinstance(size, (list, tuple)) else 1) or \
                not all(_is_int(s) and 1 <= s <= MAX_SAMPLE_SIZE for s in sides):
            raise _refuse(where, "sample_size", f"a positive integer (or a pair of them) up to {MAX_SAMPLE_SIZE}", size)
        blocks = config.get("down_block_types", ("DownBlock2D",) * 4)  # diffusers' default has 4
        if isinstance(blocks, (list, tuple)) and len(blocks) > 1:
            halvings = len(blocks) - 1
            if halvings >= MAX_SAMPLE_SIZE.bit_length() or any(s % 2 ** halvings for s in sides):
                multiple = 2 ** halvings if halvings < 64 else f"2^{halvings}"
                raise _refuse(where, "sample_size", f"a multiple of {multiple} (its {len(blocks)} down blocks halve "
                                                    f"the image {halvings} time{'s' if halvings > 1 else ''})", size)
    channels = f"a positive integer up to {MAX_CHANNELS}"
    _int_in(config, "in_channels", 1, MAX_CHANNELS, where, channels)
    _int_in(config, "out_channels", 1, MAX_CHANNELS, where, channels)
    _int_in(config, "layers_per_block", 1, MAX_LAYERS_PER_BLOCK, where,
            f"a positive integer up to {MAX_LAYERS_PER_BLOCK}")
    widths = config.get("block_out_channels")  # their number against the blocks' is diffusers' check
    if widths is not None and not (isinstance(widths, (list, tuple))
                                   and all(_is_int(w) and 1 <= w <= MAX_BLOCK_WIDTH for w in widths)):
        raise _refuse(where, "block_out_channels",
                      f"a list of positive integers up to {MAX_BLOCK_WIDTH:,} (one per down block)", widths)
    if "norm_num_groups" in config and not (_is_int(config["norm_num_groups"]) and config["norm_num_groups"] >= 1):
        raise _refuse(where, "norm_num_groups", "a positive integer (dividing every block's channels)",
                      config["norm_num_groups"])
    for key in ("attn_norm_num_groups", "attention_head_dim", "time_embedding_dim"):
        if config.get(key) is not None and not (_is_int(config[key]) and 1 <= config[key] <= MAX_BLOCK_WIDTH):
            raise _refuse(where, key, f"null or a positive integer up to {MAX_BLOCK_WIDTH:,}", config[key])
    # numbers the UNet computes with when it runs (a string there failed mid-sampling, inside torch)
    for key in ("norm_eps", "freq_shift", "mid_block_scale_factor", "dropout", "downsample_padding"):
        if key in config and not _is_number(config[key]):
            raise _refuse(where, key, "a finite number", config[key])
    if config.get("num_class_embeds") is not None:
        _int_in(config, "num_class_embeds", 0, MAX_CLASSES, where,
                f"null (no classes) or a whole number up to {MAX_CLASSES:,}")


def train_timesteps(config: Mapping[str, Any], where: str) -> int:
    """T of a scheduler config, checked: an integer in [1, :data:`MAX_TRAIN_TIMESTEPS`] (1,000 where the
    config names none)."""
    _int_in(config, "num_train_timesteps", 1, MAX_TRAIN_TIMESTEPS, where,
            f"a positive integer up to {MAX_TRAIN_TIMESTEPS:,}")
    return int(config.get("num_train_timesteps", DEFAULT_TRAIN_TIMESTEPS))


def check_scheduler_values(config: Mapping[str, Any], where: str) -> None:
    """Refuse a discrete-time scheduler config whose T, β range or trained βs no schedule can be built
    from (``where`` as in :func:`check_unet_values`). An unknown ``beta_schedule`` is left to diffusers,
    whose set of schedules grows; the caller turns its refusal into an error naming the key."""
    T = train_timesteps(config, where)
    for key in ("beta_start", "beta_end"):
        if config.get(key) is not None and not _is_number(config[key]):
            raise _refuse(where, key, "a finite number", config[key])
    betas = config.get("trained_betas")
    if betas is not None and not (isinstance(betas, list) and len(betas) == T and all(_is_number(b) for b in betas)):
        raise _refuse(where, "trained_betas", f"null or a list of num_train_timesteps ({T:,}) numbers", betas)
    # read by SamplingSchedule.from_config (their ranges are checked where the model is sampled)
    offset = config.get("steps_offset")
    if offset is not None and not (_is_int(offset) or _is_number(offset) and float(offset).is_integer()):
        raise _refuse(where, "steps_offset", "a whole number", offset)
    if "clip_sample_range" in config and not (isinstance(config["clip_sample_range"], (int, float))
                                              and not isinstance(config["clip_sample_range"], bool)):
        raise _refuse(where, "clip_sample_range", "a positive number", config["clip_sample_range"])
