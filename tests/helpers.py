"""Helpers shared by test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def cifar_images(n: int, split: str = "train") -> np.ndarray:
    """The first ``n`` decoded images (uint8 (n, 32, 32, 3)) of the real CIFAR-10 ``split`` shard 0."""
    from diffaudit.core.errors import DiffauditError
    from diffaudit.data.builtin import find_cifar10_root

    try:
        root = Path(find_cifar10_root(None, name=f"cifar10-{split}" if split == "test" else "cifar10"))
    except DiffauditError as exc:
        pytest.skip(f"CIFAR-10 shards absent: {exc}")
    out = []
    with tarfile.open(root / f"cifar10-{split}-000000.tar") as tf:
        for m in tf:
            if m.name.endswith(".jpg"):
                out.append(np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")))
                if len(out) == n:
                    break
    return np.stack(out)


def make_tiny_model_dir(root: Path, *, image_size: int = 8, channels: int = 1) -> Path:
    """An untrained tiny UNet saved like a run directory (``unet/`` + ``scheduler/``)."""
    from diffaudit.models.scheduler import make_scheduler
    from diffaudit.models.unets import build_unet, unet_config

    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_unet(unet_config("tiny", image_size=image_size, in_channels=channels)).save_pretrained(root / "unet")
    make_scheduler().save_pretrained(root / "scheduler")
    return root


def noisy_copies(img: np.ndarray, n: int, seed: int, sigma: float = 0.02) -> np.ndarray:
    """``n`` copies of uint8 ``img`` with seeded Gaussian pixel noise (std ``sigma`` in [0, 1] units)."""
    rng = np.random.default_rng(seed)
    x = img[None].astype(np.float64) / 255 + rng.normal(0, sigma, (n, *img.shape))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def strict_json(path: Path) -> dict:
    """Parse a JSON file, failing on NaN or infinities (results never carry them)."""
    import json

    def no_constants(name):
        raise AssertionError(f"{path} contains {name}")

    return json.loads(path.read_text(), parse_constant=no_constants)
