"""Inpainting masks for the reconstruction attack (paper Section 5.2, Figure 11).

A mask is a float32 array (H, W) with values in {0, 1}: **1 = known pixel** (kept from the original),
**0 = pixel to inpaint** (docs/architecture.md, Conventions: masks). A mask is named after the region that is *hidden*:

- ``left``   the left half is inpainted, the right half known (the paper's setting);
  ``right``, ``top``, ``bottom`` likewise. For an odd width (height) the hidden half is the
  ``W // 2`` (``H // 2``) columns (rows) on that side.
- ``random`` one of the four half-planes above, chosen per target from
  ``derive_seed(seed, "mask", target_index)``: the paper's "random halves" read as a random
  orientation of a half-image. (A random half of the *pixels* would turn the attack into easy
  interpolation between neighbouring known pixels, which says little about memorization.)
- ``center`` a centred rectangle of ``H // 2`` x ``W // 2`` pixels (a quarter of the image) is
  inpainted, the border known.
- a path to an image file (PNG, ...) of exactly H x W pixels: **nonzero = known**; colour images
  count a pixel as known when any colour channel is nonzero (an alpha channel is ignored).

Every mask goes through :func:`validate_mask`: wrong size, values other than 0/1, nothing known or
nothing to inpaint are :class:`~diffaudit.core.errors.DiffauditError` naming the mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed

HALF_SIDES = ("left", "right", "top", "bottom")
MASK_KINDS = (*HALF_SIDES, "random", "center")


def half_mask(height: int, width: int, side: str) -> np.ndarray:
    """Mask hiding the ``side`` half ("left", "right", "top", "bottom"): float32 (H, W), 1 = known."""
    _check_size(height, width)
    if side not in HALF_SIDES:
        raise DiffauditError(f"unknown half {side!r}; choose one of {', '.join(HALF_SIDES)}")
    m = np.ones((height, width), dtype=np.float32)
    hw, hh = width // 2, height // 2
    if side == "left":
        m[:, :hw] = 0
    elif side == "right":
        m[:, width - hw:] = 0
    elif side == "top":
        m[:hh, :] = 0
    else:
        m[height - hh:, :] = 0
    return m


def random_half_side(seed: int, target_index: int) -> str:
    """The half hidden by the ``random`` mask of target ``target_index``: seeded, reproducible alone."""
    return HALF_SIDES[derive_seed(int(seed), "mask", int(target_index)) % len(HALF_SIDES)]


def center_mask(height: int, width: int) -> np.ndarray:
    """Mask hiding the centred ``H // 2`` x ``W // 2`` rectangle: float32 (H, W), 1 = known."""
    _check_size(height, width)
    m = np.ones((height, width), dtype=np.float32)
    hh, hw = height // 2, width // 2
    top, left = (height - hh) // 2, (width - hw) // 2
    m[top:top + hh, left:left + hw] = 0
    return m


def load_mask_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """Read a mask image of exactly ``height`` x ``width`` pixels; nonzero = known.

    Returns float32 (H, W) in {0, 1}, validated.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                a = np.asarray(im)
            elif im.mode in ("LA", "La"):
                a = np.asarray(im.getchannel(0))
            else:
                a = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DiffauditError(f"mask image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DiffauditError(f"mask image {path} cannot be read as an image: {exc}") from None
    if a.ndim == 3:
        a = (a != 0).any(axis=-1)
    if a.shape != (height, width):
        raise DiffauditError(
            f"mask image {path} is {a.shape[1]}x{a.shape[0]} pixels (W x H); the images are {width}x{height}"
        )
    return validate_mask((a != 0).astype(np.float32), height, width, name=f"mask image {path}")


def make_mask(spec: str, height: int, width: int, *, seed: int = 0, target_index: int = 0) -> np.ndarray:
    """The mask named by ``spec`` (a kind in :data:`MASK_KINDS` or an image path) for an H x W image.

    ``seed`` and ``target_index`` only matter for ``random``. Returns float32 (H, W), 1 = known.
    """
    if spec in HALF_SIDES:
        m = half_mask(height, width, spec)
    elif spec == "random":
        m = half_mask(height, width, random_half_side(seed, target_index))
    elif spec == "center":
        m = center_mask(height, width)
    elif Path(spec).suffix or "/" in spec or Path(spec).exists():
        return load_mask_image(spec, height, width)
    else:
        raise DiffauditError(
            f"unknown mask {spec!r}: choose one of {', '.join(MASK_KINDS)} or give the path of a mask image"
        )
    return validate_mask(m, height, width, name=f"mask {spec!r}")


def describe_mask(spec: str, *, seed: int = 0, target_index: int = 0) -> str:
    """What ``spec`` hides for this target, for results ("left", "center", "random:top", a path)."""
    if spec == "random":
        return f"random:{random_half_side(seed, target_index)}"
    return spec


def validate_mask(mask, height: int, width: int, *, name: str = "mask") -> np.ndarray:
    """Check a mask and return it as float32 (H, W) in {0, 1}.

    Raises :class:`DiffauditError` naming ``name`` when the shape is not (height, width), a value is
    not 0 or 1, no pixel is known (all zeros) or no pixel is left to inpaint (all ones).
    """
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    elif m.ndim == 3 and m.shape[-1] == 1:  # (H, W, 1), as an image's channel axis
        m = m[..., 0]
    if m.shape != (height, width):
        raise DiffauditError(f"{name} has shape {tuple(m.shape)}; the images need ({height}, {width}) (H, W)")
    m = m.astype(np.float32)
    if not np.isin(m, (0.0, 1.0)).all():
        raise DiffauditError(f"{name} must hold only 0 (inpaint) and 1 (known); found other values")
    n_known = int(m.sum())
    if n_known == 0:
        raise DiffauditError(f"{name} marks no pixel as known (all zeros): there is nothing to inpaint from")
    if n_known == m.size:
        raise DiffauditError(f"{name} marks every pixel as known (all ones): there is nothing to inpaint")
    return m


def _check_size(height: int, width: int) -> None:
    if int(height) < 2 or int(width) < 2:
        raise DiffauditError(f"masks need images of at least 2x2 pixels; got {width}x{height}")
