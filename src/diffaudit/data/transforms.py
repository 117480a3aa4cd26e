"""Per-image geometry (centre crop, square resize) and channel conversion, on uint8 arrays.

Order applied by the loaders: decode -> ``center_crop`` -> ``image_size`` resize -> channel
conversion (``mode``, or L -> RGB when a dataset mixes grayscale and colour images).

- Centre crop: a ``size`` x ``size`` square at the centre (top-left offset ``(H - size) // 2``,
  ``(W - size) // 2``); an image smaller than ``size`` on either side is an error.
- Resize: to ``size`` x ``size`` with Pillow's bilinear filter (which also low-pass filters when
  shrinking, so downsizing does not alias). A non-square image is stretched: centre-crop it first to
  keep its aspect ratio. The built-in 8x8 digits are upsampled by the same bilinear filter.
- Resize to cover (:func:`resize_to_cover`, not applied by the loaders): one scale factor, aspect
  ratio kept, so the image just covers a given size (Stable Diffusion's shorter-side resize).
- Grayscale from RGB: ITU-R 601-2 luma with Pillow's integer rounding,
  ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16`` (identical to ``Image.convert("L")``).
- RGB from grayscale: the gray value copied into the three channels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffaudit.core.errors import DiffauditError


def center_crop(image: np.ndarray, size: int, name: str) -> np.ndarray:
    """The central ``size`` x ``size`` square of uint8 (H, W, C) -> uint8 (size, size, C)."""
    h, w = image.shape[:2]
    if size > h or size > w:
        raise DiffauditError(f"{name}: cannot centre-crop {size}x{size} from a {w}x{h} image (width x height)")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, C), C in {1, 3} -> uint8 (size, size, C), Pillow bilinear (antialiased when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    c = image.shape[2]
    pil = Image.fromarray(image[:, :, 0] if c == 1 else image, mode=None)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return out[:, :, None] if c == 1 else out


def resize_to_cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize by one scale factor, aspect ratio kept, so that the image just covers ``height`` x ``width``.

    Stable Diffusion's training transform before its random square crop: the shorter side is resized
    to the training resolution (a 768x1024 image becomes 512x682 for 512x512 crops). In general the
    side that binds (the larger of ``height / H`` and ``width / W``) becomes exactly ``height`` or
    ``width``; the other side is scaled by the same factor and truncated (as torchvision's ``Resize``
    does), never below its target. Pillow bilinear, as :func:`resize` (antialiased when shrinking).

    Args:
        image: uint8 (H, W, C), C in {1, 3}.
        height, width: the size to cover, positive pixels (a generation's h, w).

    Returns:
        uint8 (H', W', C) with H' >= height, W' >= width and H' == height or W' == width; ``image``
        itself when it already has that size.
    """
    if height < 1 or width < 1:
        raise DiffauditError(f"resize_to_cover needs a positive size to cover; got {height}x{width} (height x width)")
    h, w, c = image.shape
    if height * w >= width * h:  # height binds: H' = height, W' = floor(W * height / H) >= width
        new_h, new_w = height, max(width, w * height // h)
    else:
        new_h, new_w = max(height, h * width // w), width
    if (new_h, new_w) == (h, w):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if c == 1 else image))
    out = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
    return out[:, :, None] if c == 1 else out


def apply_geometry(image: np.ndarray, name: str, *, center_crop_size: int | None, image_size: int | None) -> np.ndarray:
    """Centre crop (when ``center_crop_size``) then resize (when ``image_size``); uint8 (H, W, C) in and out."""
    if center_crop_size is not None:
        image = center_crop(image, center_crop_size, name)
    if image_size is not None:
        image = resize(np.ascontiguousarray(image), image_size)
    return image


def rgb_to_gray(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> uint8 (..., 1): ITU-R 601-2 luma, bit-identical to Pillow's ``convert("L")``."""
    x = images.astype(np.uint32)
    luma = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def gray_to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 1) -> uint8 (..., 3), the gray value in every channel."""
    return np.repeat(images, 3, axis=-1)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., C) with C in {1, 3} -> uint8 (..., ``channels``) (1 or 3)."""
    c = images.shape[-1]
    if c == channels:
        return images
    return rgb_to_gray(images) if channels == 1 else gray_to_rgb(images)


#: The largest image side a load resizes or crops to: 4 times the largest pixel-space diffusion model's
#: (1024), and the largest ``sample_size`` a model folder may give
#: (:data:`~diffaudit.models.config_values.MAX_SAMPLE_SIZE`); 10^11 overflowed Pillow.
MAX_IMAGE_SIDE = 4096


def check_size_option(name: str, value: int | None) -> int | None:
    """Validate an ``image_size`` / ``center_crop`` option: None or a positive int.

    ``name`` is the option's name (``image_size``); an error names it by its flag (``--image-size``), as
    the command line gives it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_IMAGE_SIDE:
        raise DiffauditError(f"--{name.replace('_', '-')} must be a number of pixels in [1, {MAX_IMAGE_SIDE}]; got {value!r}")
    return int(value)
