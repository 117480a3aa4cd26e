"""Decode one image file (bytes) into uint8 pixels (H, W, C), C = 1 or 3.

Modes, as Pillow reports them after opening the file:

- ``1``, ``L``, ``LA``, ``La``: grayscale, C = 1 (alpha dropped).
- ``RGB``: C = 3. ``RGBA``, ``RGBa``, ``RGBX``, ``P``, ``PA``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``:
  converted to RGB by Pillow, C = 3. Alpha is *dropped*, not composited: a transparent pixel keeps
  the colour stored under it (palette images: the palette colour). A load that infers C (no ``mode``)
  counts such a file whose three channels are equal at every pixel as grayscale, as it counts ``LA``
  (:func:`~diffaudit.data.loader.gray_if_equal`).
- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): scaled to 8 bits by ``round(v / 257)``
  (65535 -> 255, 257*k -> k), never clipped (Conventions: pixels). 12-bit scans stored in 16 bits
  (values 0..4095) so read at most 16/255: nearly black. The scale stays (a file does not say its white
  level); a load notes each 16-bit image's largest value (:func:`noting_sixteen_bit`) and warns when
  they all fit in 12 bits (:func:`warn_twelve_bit`). A 16-bit colour PNG (or 16-bit grey + alpha) is
  read by Pillow at 8 bits, its high bytes kept; it is noted alike, its largest value taken as at most
  high byte x 256 + 255 (its IHDR says 16 bits).
- 32-bit integer grayscale ``I`` (a TIFF of 32-bit integers): the file says nothing of its white
  level, so the values say it. Pillow writes an 8-bit image converted to ``I`` (``convert("I")``) with
  its values 0..255, and a 16-bit one with 0..65535: an ``I`` image whose values all lie in [0, 255]
  is used as 8-bit values, unscaled (dividing them by 257 turned such a TIFF almost black); one with
  a value in (255, 65535] is 16-bit, scaled by ``round(v / 257)``; one with a negative value or one
  over 65535 is refused (no white level to scale it by). Decided per image: a 16-bit image converted
  to ``I`` whose values all stay under 256 (under 0.4% of its white: nearly black) reads as 8-bit. A
  PNG opened as ``I`` (older Pillow opened 16-bit grey PNGs so) is 16-bit whatever its values: a
  PNG's bit depth is at most 16.
- 16-bit RGB PNGs: Pillow's decoder itself reduces them to 8-bit ``RGB`` by keeping the high byte
  (``v >> 8``), which equals ``round(v / 257)`` for v = 257*k and differs from it by at most 1
  elsewhere. 16-bit grayscale-with-alpha PNGs (colour type 4) open as ``RGBA`` the same way (grey
  in R, G and B); they are read as grayscale, C = 1, from the high byte.

Only the formats of :data:`IMAGE_EXTENSIONS` are decoded, whatever the bytes claim to be: a file
named ``.png`` that holds PostScript is refused, never handed to another of Pillow's decoders (EPS
would run Ghostscript on untrusted data).
- ``F`` (32-bit float) and anything Pillow cannot convert to RGB: refused.

Images over :data:`MAX_IMAGE_PIXELS` (8192 x 8192) whose file holds more than
:data:`MAX_PIXELS_PER_BYTE` pixels a byte are refused from the size in their header, before any
pixel is decoded. Pillow's own decompression-bomb limit (about 179 megapixels) let a 1.9 MB folder
of four 13000 x 13000 PNGs (343 pixels a byte) take 18 GB of memory. A photograph holds a few
pixels a byte, so a genuine 100- or 150-megapixel photo (about 20-30 MB) still decodes, as it did
before; Pillow's limit still bounds it.

EXIF orientation is not applied: pixels are used as stored (as training pipelines read them).
Every failure raises :class:`BadImageError` carrying the file's name and the reason; the loaders
turn it into a :class:`~diffaudit.core.errors.DiffauditError`, or a recorded skip with ``skip_bad``.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import warning_line

#: File extensions read as images (lower case, without the dot).
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff")

#: Pillow's names of the formats decoded ("JPEG" also opens cameras' multi-picture MPO files).
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY_ALPHA = 4  # IHDR colour type

#: The most pixels (width x height) an image may have when its file is compressed past
#: :data:`MAX_PIXELS_PER_BYTE`; such images are refused before decoding. Decoding takes up to about
#: 8 bytes per pixel at once (an RGBA image converted to RGB), 512 MiB here.
MAX_IMAGE_PIXELS = 8192 * 8192
#: Pixels a byte of file above which a large image is taken for a decompression bomb: photographs
#: (JPEG, PNG, WebP) hold a few pixels a byte; a bomb, hundreds (a flat 13000 x 13000 PNG: 343).
MAX_PIXELS_PER_BYTE = 64

_GRAY_MODES = {"1", "L", "LA", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
_INT32_MODE = "I"
_TO_RGB_MODES = {"RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
#: The largest value of a 12-bit image: 16-bit images that all stay at or under it look dark (<= 16/255).
TWELVE_BIT_MAX = 4095


@dataclass
class SixteenBitSeen:
    """The 16-bit grayscale images a load decoded (before scaling to 8 bits).

    Attributes:
        images: how many were 16-bit (``I;16*``, or ``I`` read as 16-bit; see the module doc).
        max_value: the largest raw value among them, in [0, 65535] (0 when ``images`` is 0).
    """

    images: int = 0
    max_value: int = 0

    def add(self, other: "SixteenBitSeen") -> None:
        """Count ``other``'s images in this one as well."""
        self.images += other.images
        self.max_value = max(self.max_value, other.max_value)


#: Where the decoder notes 16-bit images, None when no load is listening (:func:`noting_sixteen_bit`).
_SIXTEEN_BIT: ContextVar[SixteenBitSeen | None] = ContextVar("diffaudit_sixteen_bit_seen", default=None)


@contextmanager
def _listening(var: ContextVar, listener: Any) -> Iterator[Any]:
    """``var`` set to ``listener`` within this block, which yields it: where the decoder reports to a load."""
    token = var.set(listener)
    try:
        yield listener
    finally:
        var.reset(token)


def noting_sixteen_bit(seen: SixteenBitSeen) -> ContextManager[SixteenBitSeen]:
    """Within this block every 16-bit grayscale image decoded is counted in ``seen`` (its count, the
    largest raw value); yields ``seen``."""
    return _listening(_SIXTEEN_BIT, seen)


@dataclass
class EncodedBytes:
    """The bytes of the image files :func:`decode_image` decoded within :func:`counting_encoded_bytes`."""

    total: int = 0


#: Where the decoder counts the encoded bytes it reads, None when no load is listening.
_ENCODED: ContextVar[EncodedBytes | None] = ContextVar("diffaudit_encoded_bytes", default=None)


def counting_encoded_bytes(counter: EncodedBytes) -> ContextManager[EncodedBytes]:
    """Within this block every image file decoded adds its size to ``counter`` (a load's decompression
    budget: :func:`~diffaudit.data.loader.iter_decoded`); yields ``counter``."""
    return _listening(_ENCODED, counter)


def _note_sixteen_bit(raw: np.ndarray) -> None:
    """Count the 16-bit image ``raw`` (H, W), values in [0, 65535], where a load listens."""
    seen = _SIXTEEN_BIT.get()
    if seen is not None:
        seen.images += 1
        seen.max_value = max(seen.max_value, int(raw.max()) if raw.size else 0)


def warn_twelve_bit(source: str, seen: SixteenBitSeen) -> None:
    """One warning (:func:`~diffaudit.core.progress.warning_line`, naming the running command where one
    speaks for the data layer) when the 16-bit images of ``source``'s load all fit in 12 bits (largest
    value <= :data:`TWELVE_BIT_MAX`): read at value/257 they look dark (at most 16/255), which a model
    trained on them learns; nothing when no 16-bit image was decoded or one uses more than 12 bits."""
    if seen.images == 0 or seen.max_value > TWELVE_BIT_MAX:
        return
    n = seen.images
    they = f"its {n:,} 16-bit image{'s' if n != 1 else ''}"
    warning_line("", f"{source}: {they} {'all ' if n != 1 else ''}use{'s' if n == 1 else ''} at most 12 bits "
                     f"(largest value {seen.max_value} of 65535): diffaudit reads 16-bit pixels as value/257, so "
                     f"{'they' if n != 1 else 'it'} look{'s' if n == 1 else ''} dark (at most "
                     f"{round(seen.max_value / 257)}/255) to every model and measure; if 4095 is their white "
                     "level, rescale them to the full 16-bit range (value x 65535/4095) or to 8 bits before "
                     "auditing")


class BadImageError(DiffauditError):
    """An image that cannot be decoded. ``name`` is the file (or shard member); ``reason`` says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def scale_16bit(values: np.ndarray) -> np.ndarray:
    """16-bit values in [0, 65535] -> uint8 ``round(v / 257)`` (65535 -> 255; 257*k -> k). Same shape."""
    v = np.asarray(values)
    return np.rint(v.astype(np.float64) / 257.0).astype(np.uint8)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode the encoded image ``data`` (PNG, JPEG, BMP, WebP, TIFF...).

    Args:
        data: the file's bytes.
        name: the file's name, used in errors.

    Returns:
        uint8 array (H, W, C), C = 1 (grayscale) or 3 (RGB), values in [0, 255].

    Raises:
        BadImageError: unreadable, truncated or corrupt data, an unsupported mode, or more pixels than
            :data:`MAX_IMAGE_PIXELS` (checked from the header, before decoding).
    """
    counter = _ENCODED.get()
    if counter is not None:
        counter.total += len(data)
    try:
        with _open(data) as im:
            _check_pixel_count(im.size, len(data), name)
            im.load()
            if im.mode == "RGBA" and _png_colour_type(data) == _PNG_GREY_ALPHA:  # 16-bit grey + alpha
                arr = _checked(np.asarray(im)[:, :, :1], name, "LA (16-bit)")
            else:
                arr = image_to_array(im, name)
            if im.mode in ("RGB", "RGBA") and _png_bit_depth(data) == 16:  # 16-bit colour (or grey + alpha)
                _note_sixteen_bit(arr.astype(np.int64) * 256 + 255)  # Pillow kept the high bytes: at most this
            return arr
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(name, f"not a recognised image format ({len(data)} bytes; read as "
                                  f"{', '.join(PILLOW_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(name, f"refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is a bad image
        reason = str(exc) or type(exc).__name__
        raise BadImageError(name, f"corrupt or truncated image ({type(exc).__name__}: {reason})") from None


def _open(data: bytes) -> Image.Image:
    """``data`` opened (header only) by the decoders of :data:`PILLOW_FORMATS`.

    Pillow warns (on stderr) from about 89 megapixels: a compressed bomb that large is refused by
    :func:`_check_pixel_count` with an error that says what to do, and a photograph that large decodes,
    so its warning is silenced here rather than printed beside that error or on every large photo."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)


def _check_pixel_count(size: tuple[int, int], n_bytes: int, name: str) -> None:
    """Refuse an image whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels from a file of
    ``n_bytes`` holding more than :data:`MAX_PIXELS_PER_BYTE` pixels a byte (before decoding it)."""
    width, height = size
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS and pixels > MAX_PIXELS_PER_BYTE * max(1, n_bytes):
        raise BadImageError(
            name, f"{width}x{height} is {pixels:,} pixels, over diffaudit's limit of {MAX_IMAGE_PIXELS:,} per image "
                  f"(diffaudit.data.images.MAX_IMAGE_PIXELS) for a file compressed this far ({n_bytes:,} bytes, "
                  f"{pixels // max(1, n_bytes):,} pixels a byte, where a photograph holds a few), which keeps a small "
                  "file from taking gigabytes of memory when decoded; downscale it to use it"
        )


def image_to_array(im: Image.Image, name: str) -> np.ndarray:
    """A loaded Pillow image -> uint8 (H, W, C), C in {1, 3}, following the module's mode rules."""
    mode = im.mode
    if mode == "L":
        arr = np.asarray(im)
    elif mode in _GRAY_MODES:
        arr = np.asarray(im.convert("L"))
    elif mode == "RGB":
        arr = np.asarray(im)
    elif mode in _SIXTEEN_BIT_MODES:
        raw = np.asarray(im)
        _note_sixteen_bit(raw)
        arr = scale_16bit(raw)
    elif mode == _INT32_MODE:
        arr = _int32_to_8bit(np.asarray(im), name, sixteen_bit=im.format == "PNG")
    elif mode in _TO_RGB_MODES:
        arr = np.asarray(im.convert("RGB"))
    else:
        raise BadImageError(name, f"unsupported image mode {mode!r} (use 8- or 16-bit grayscale, RGB or RGBA)")
    return _checked(arr, name, mode)


def _int32_to_8bit(raw: np.ndarray, name: str, *, sixteen_bit: bool) -> np.ndarray:
    """Mode ``I`` values (H, W), int32 -> uint8 (H, W): as they are when all lie in [0, 255] (unless
    ``sixteen_bit``: the file says 16 bits), else ``round(v / 257)`` when all lie in [0, 65535]; see the
    module doc.

    Raises:
        BadImageError: a value outside [0, 65535] (negative, or beyond 16 bits: no white level known).
    """
    low, high = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
    if low < 0 or high > 65535:
        raise BadImageError(
            name, f"mode I (32-bit integer) values span [{low}, {high}], outside the 16-bit range [0, 65535] that "
                  "diffaudit scales to 8 bits (a 32-bit image has no white level to scale it by); save it as 8- or "
                  "16-bit grayscale"
        )
    if high <= 255 and not sixteen_bit:
        return raw.astype(np.uint8)
    _note_sixteen_bit(raw)
    return scale_16bit(raw)


def _png_bit_depth(data: bytes) -> int | None:
    """The bit depth per sample in a PNG's IHDR (1, 2, 4, 8 or 16); None if not a PNG."""
    if len(data) >= 26 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        return data[24]
    return None


def _png_colour_type(data: bytes) -> int | None:
    """The colour type in a PNG's IHDR (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA); None if not a PNG."""
    if len(data) >= 26 and data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        return data[25]
    return None


def _checked(arr: np.ndarray, name: str, mode: str) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> contiguous (H, W, C), C in {1, 3}; BadImageError otherwise."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise BadImageError(name, f"decoded to an unexpected array {arr.dtype} {arr.shape} (mode {mode})")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(name, "image has zero width or height")
    return np.ascontiguousarray(arr)
