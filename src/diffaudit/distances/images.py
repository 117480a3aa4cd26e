"""Image inputs of the distance functions: shapes, dtypes, layouts.

Distances take images in the file layout (N, H, W, C) (or one image (H, W, C)), either uint8 0..255
(the store's and the datasets' format, scaled by 1/255) or floats already in [0, 1]. A
:class:`~diffaudit.data.dataset.ImageDataset` is accepted wherever images are.

Two mistakes would otherwise give plausible wrong numbers, so both are refused: a last axis of more
than :data:`MAX_CHANNELS` values is not a channel axis (channel-first (N, C, H, W) tensors, or a
greyscale batch (N, H, W) read as one image), and floats outside [0, 1] are not pixels on the
distances' scale (a model's [-1, 1] output, or 0..255 values in a float array).
"""

from __future__ import annotations

from typing import Any

import warnings

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.data.sharded import ShardedImages


#: The most values the last (channel) axis may hold: greyscale, grey + alpha, RGB, RGBA.
MAX_CHANNELS = 4
#: Slack allowed beyond [0, 1] for float pixels (rounding in a caller's own conversion).
FLOAT_RANGE_SLACK = 1e-6


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without a copy, also for read-only arrays (memory maps); never written to."""
    a = np.ascontiguousarray(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we only read it
        return torch.from_numpy(a)


def _pixels(images: Any) -> Any:
    """An ImageDataset's images; a ShardedImages read whole (streaming callers walk ``.parts()``)."""
    if hasattr(images, "images") and hasattr(images, "keys"):
        images = images.images
    return np.asarray(images) if isinstance(images, ShardedImages) else images


def as_tensor(images: Any, *, name: str = "images", batch: bool = True) -> torch.Tensor:
    """``images`` as a torch tensor (N, H, W, C), uint8 or floating, without copying when possible.

    Accepts numpy arrays, torch tensors and ImageDatasets. With ``batch=True`` a single (H, W, C)
    image becomes (1, H, W, C). Raises :class:`DiffauditError` naming ``name`` on a bad shape or
    dtype, a last axis of more than :data:`MAX_CHANNELS` values, or floats outside [0, 1] (or NaN).
    """
    images = _pixels(images)
    if isinstance(images, np.ndarray):
        t = from_numpy(images)
    elif isinstance(images, torch.Tensor):
        t = images
    else:
        raise DiffauditError(f"{name}: expected an image array (N, H, W, C), got {type(images).__name__}")
    if batch and t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise DiffauditError(f"{name}: expected images of shape (N, H, W, C), got shape {tuple(t.shape)}")
    if t.shape[-1] > MAX_CHANNELS:
        raise DiffauditError(
            f"{name}: shape {tuple(t.shape)} does not end in a channel axis (at most {MAX_CHANNELS} values); "
            "images are channels-last (N, H, W, C): permute channel-first tensors, and give greyscale "
            "batches a channel axis (images[..., None])"
        )
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise DiffauditError(f"{name}: expected uint8 pixels (0..255) or floats in [0, 1], got {t.dtype}")
    if t.is_floating_point() and t.numel():
        lo, hi = (float(v) for v in torch.aminmax(t))
        if not (lo >= -FLOAT_RANGE_SLACK and hi <= 1.0 + FLOAT_RANGE_SLACK):
            raise DiffauditError(
                f"{name}: float pixels must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}]; "
                "pass uint8 0..255 as uint8, and map a model's [-1, 1] output with (x + 1) / 2"
            )
    return t


def to_unit_float64(t: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 or [0, 1] float (N, H, W, C) -> float64 in [0, 1] on ``device``."""
    if device is not None:
        t = t.to(device)
    return t.to(torch.float64) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float64)


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("a", "b"), *, batch: bool = False) -> None:
    """Raise :class:`DiffauditError` when the image shapes (H, W, C) (and N with ``batch``) differ."""
    if tuple(a.shape[1:]) != tuple(b.shape[1:]):
        raise DiffauditError(
            f"{names[0]} and {names[1]} have different image shapes (H, W, C): "
            f"{tuple(a.shape[1:])} vs {tuple(b.shape[1:])}; resize one of them (e.g. --image-size)"
        )
    if batch and a.shape[0] != b.shape[0]:
        raise DiffauditError(f"{names[0]} and {names[1]} hold {a.shape[0]} and {b.shape[0]} images; paired distances need equal counts")


def flat_uint8(images: Any, *, name: str = "images") -> torch.Tensor:
    """uint8 images (N, H, W, C) or rows (N, D) -> uint8 (N, D) (a view when contiguous; N may be 0).

    Raises :class:`DiffauditError` naming ``name`` for other dtypes or ranks, and for images whose last
    axis holds more than :data:`MAX_CHANNELS` values (channel-first (N, C, H, W) arrays would otherwise
    be searched as scrambled pixels, as :func:`as_tensor` refuses them too).
    """
    images = _pixels(images)
    t = from_numpy(images) if isinstance(images, np.ndarray) else images
    if not isinstance(t, torch.Tensor):
        raise DiffauditError(f"{name}: expected a uint8 array, got {type(images).__name__}")
    if t.dtype != torch.uint8:
        raise DiffauditError(f"{name}: nearest-neighbour search needs uint8 pixels (0..255), got {t.dtype}")
    if t.ndim == 4:
        if t.shape[-1] > MAX_CHANNELS:
            raise DiffauditError(
                f"{name}: shape {tuple(t.shape)} does not end in a channel axis (at most {MAX_CHANNELS} values); "
                "images are channels-last (N, H, W, C): permute channel-first arrays (N, C, H, W), or pass "
                "flattened rows (N, D)"
            )
        t = t.reshape(t.shape[0], t.shape[1] * t.shape[2] * t.shape[3])
    elif t.ndim != 2:
        raise DiffauditError(f"{name}: expected (N, H, W, C) images or (N, D) rows, got shape {tuple(t.shape)}")
    return t


def image_shape(images: Any) -> tuple[int, int, int] | None:
    """(H, W, C) of uint8 images (N, H, W, C) (arrays, ShardedImages, ImageDatasets), None for rows
    (N, D) or anything whose shape is not known without reading it."""
    if hasattr(images, "images") and hasattr(images, "keys"):
        images = images.images
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        return None
    return tuple(int(x) for x in shape[1:])


def check_same_image_shape(q_shape: tuple | None, r_shape: tuple | None, names: tuple[str, str] = ("queries", "reference")) -> None:
    """Raise :class:`DiffauditError` when both image shapes (H, W, C) are known and differ: equal D
    is not enough (transposed or re-tiled images have it too)."""
    if q_shape is not None and r_shape is not None and tuple(q_shape) != tuple(r_shape):
        raise DiffauditError(
            f"{names[0]} and {names[1]} have different image shapes (H, W, C): {tuple(q_shape)} vs "
            f"{tuple(r_shape)}; image shapes differ (a transposed layout, or images of another size)"
        )
