"""UNet presets, from a tiny CPU model to the DDPM CIFAR-10 architecture (Ho et al. 2020).

| preset        | channels              | attention | params (3 ch, 32x32) | use                          |
|---------------|-----------------------|-----------|----------------------|------------------------------|
| tiny          | 16, 32                | none      | 0.16M (1 ch)         | CPU tests and the demo       |
| small         | 32, 64, 64            | 2nd level | 1.1M                 | quick CPU/GPU experiments    |
| medium        | 64, 128, 128, 128     | 16x16     | 9.0M                 | shadow models on a GPU       |
| ddpm-cifar10  | 128, 256, 256, 256    | 16x16     | 35.7M                | the paper's CIFAR-10 model   |

Configs are plain dicts of ``UNet2DModel`` constructor arguments, saved beside the weights.

``ddpm-cifar10`` has Ho et al.'s block layout and parameter count (35,746,307 for 3 channels) but
diffusers' defaults elsewhere: no dropout (Ho et al. used 0.1 on CIFAR-10) and multi-head attention
with 8 channels per head (theirs: one head). Without dropout a model may memorize more than theirs
did; dropout would also draw from the global RNG during training, which resumable training avoids.
"""

from __future__ import annotations

from typing import Any

from diffaudit.core.errors import DiffauditError

_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ),
    "small": dict(
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    "medium": dict(
        block_out_channels=(64, 128, 128, 128), layers_per_block=2, norm_num_groups=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    "ddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
}

PRESETS = tuple(_PRESETS)


def unet_config(preset: str, *, image_size: int, in_channels: int, num_classes: int | None = None) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments for ``preset`` at ``image_size`` with ``in_channels``.

    ``num_classes`` adds a class embedding (class-conditional model; class = prompt).
    """
    if preset not in _PRESETS:
        raise DiffauditError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in _PRESETS[preset].items()}
    levels = len(cfg["block_out_channels"])
    if image_size % (2 ** (levels - 1)):
        raise DiffauditError(
            f"preset {preset!r} down-samples {levels - 1} times: image size {image_size} must be a multiple of "
            f"{2 ** (levels - 1)}: resize the images to one (--image-size {image_size + (-image_size) % 2 ** (levels - 1)})"
        )
    cfg.update(sample_size=int(image_size), in_channels=int(in_channels), out_channels=int(in_channels))
    if num_classes:
        cfg["num_class_embeds"] = int(num_classes)
    return cfg


def build_unet(config: dict[str, Any]):
    """A freshly initialised ``diffusers.UNet2DModel`` (initialisation uses the caller's torch seed context)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
