"""An ``.npz`` of images: ``images`` plus optional ``labels`` and ``captions``.

- ``images``: uint8 (N, H, W, C) with C in {1, 3, 4}, or (N, H, W) (grayscale). uint16 arrays are
  16-bit images, scaled by ``round(v / 257)``; one warning when they all fit in 12 bits (as for 16-bit
  files, :func:`~diffaudit.data.images.warn_twelve_bit`). C = 4 drops the alpha channel (as for RGBA files).
- ``labels``: integers (N,), >= 0. ``captions``: strings (N,), a unicode (``U``) or UTF-8 bytes
  (``S``) array. Other arrays are ignored.
- Keys ``npz:<index>`` (the row in the file, kept by subsets).

Read with ``np.load(allow_pickle=False)``: an object array (which would need unpickling, and so
could run code) is refused with a message saying how to store strings instead. Each array's header
is checked against the data the file holds before it is read (:mod:`diffaudit.core.npz_arrays`), so
a huge declared shape is an error naming the array, never a ``MemoryError``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import open_npz
from diffaudit.core.npz_arrays import read_npz_array
from diffaudit.data.entries import Listing, array_entries
from diffaudit.data.images import SixteenBitSeen, scale_16bit, warn_twelve_bit


def _get(npz, path: Path, name: str) -> np.ndarray | None:
    if name not in npz.files:
        return None
    try:
        return read_npz_array(npz, path, name)  # its declared size checked before numpy allocates it
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DiffauditError(
                f"{path}: array {name!r} is an object array, which diffaudit never loads (unpickling can run "
                "code); store strings as a fixed-width array, e.g. np.array(captions, dtype=str)"
            ) from None
        raise DiffauditError(f"{path}: array {name!r} cannot be read ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DiffauditError(f"{path}: array {name!r} is damaged or truncated ({exc})") from None


def read_npz_arrays(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Load and validate ``images`` (-> uint8 (N, H, W, C), C in {1, 3}), ``labels`` (int64 (N,)), ``captions``.

    Raises:
        DiffauditError: missing/unreadable file, missing ``images``, wrong dtype or shape (naming the array).
    """
    path = Path(path)
    npz = open_npz(path, expected="an .npz archive with an `images` array")
    with npz:
        images = _get(npz, path, "images")
        labels = _get(npz, path, "labels")
        captions = _get(npz, path, "captions")
    if images is None:
        raise DiffauditError(f"{path}: no `images` array (it holds {', '.join(npz.files) or 'nothing'})")
    if images.dtype.kind == "u" and images.dtype.itemsize == 2:  # uint16, either byte order
        warn_twelve_bit(str(path), SixteenBitSeen(len(images), int(images.max()) if images.size else 0))
        images = scale_16bit(images)
    if images.dtype != np.uint8:
        raise DiffauditError(f"{path}: `images` must be uint8 pixels 0..255 (or uint16); got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DiffauditError(f"{path}: `images` must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {images.shape}")
    if images.shape[-1] == 4:
        images = images[..., :3]
    n = len(images)
    if labels is not None:
        if labels.ndim != 1 or len(labels) != n or labels.dtype.kind not in "iu":
            raise DiffauditError(f"{path}: `labels` must be integers of shape ({n},); got {labels.dtype} {labels.shape}")
        if len(labels) and labels.min() < 0:
            raise DiffauditError(f"{path}: `labels` must be >= 0; found {labels.min()}")
        labels = labels.astype(np.int64)
    caption_list = None if captions is None else string_list(captions, path, "captions", n)
    return images, labels, caption_list


def string_list(array: np.ndarray, path, name: str, n: int) -> list[str]:
    """A string array (N,) of an npz as N Python strings: unicode (``U``) as is, bytes (``S``) decoded
    as UTF-8. Raises :class:`DiffauditError` naming ``name`` on another dtype, shape or encoding."""
    if array.ndim != 1 or len(array) != n or array.dtype.kind not in "US":
        raise DiffauditError(f"{path}: `{name}` must be strings of shape ({n},); got {array.dtype} {array.shape}")
    if array.dtype.kind == "U":
        return [str(c) for c in array.tolist()]
    try:
        return [c.decode("utf-8") for c in array.tolist()]
    except UnicodeDecodeError as exc:
        raise DiffauditError(f"{path}: `{name}` are bytes that are not UTF-8 ({exc})") from None


def list_npz(path: str | os.PathLike) -> Listing:
    """The rows of the ``.npz`` at ``path`` as entries ``npz:<i>``."""
    images, labels, captions = read_npz_arrays(path)
    return Listing(
        entries=array_entries(images, "npz", str(path), labels=labels, captions=captions, file=str(path)),
        source=str(path),
        has_labels=labels is not None,
        has_captions=captions is not None,
    )
