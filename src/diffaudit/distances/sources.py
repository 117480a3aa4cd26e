"""Blocks of uint8 image rows, streamed from arrays, memory maps, datasets or iterables.

Nearest-neighbour search reads its queries once and its reference set once per group of query
blocks (as many as its memory budget holds), so neither side has to fit in memory: both are
sequences of uint8 blocks (n, H, W, C) or (n, D).

- queries: an array (numpy, memory-mapped ``.npy``, torch), a ShardedImages (a sample store read
  lazily), an ImageDataset, or any iterable of uint8 arrays; re-chunked to ``block`` rows.
- reference: an array or ImageDataset (random access), a ShardedImages (streamed part by part, or
  read once when it is small enough to keep prepared on the device), a list of arrays, or a
  zero-argument callable returning a fresh iterator of arrays (re-iterated once per group of query
  blocks).

Every block of one source must have the same values per image, and the same image shape (H, W, C)
where blocks are given as images; the image shape is recorded (``shape`` sinks, and
:attr:`ReferenceSource.image_shape`) so that the searches can refuse queries and references of
different layouts with the same number of values.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.data.sharded import ShardedImages
from diffaudit.distances.images import flat_uint8, image_shape


def _unwrap(x: Any) -> Any:
    """An ImageDataset's images, anything else unchanged."""
    return x.images if hasattr(x, "images") and hasattr(x, "keys") else x


def _is_array(x: Any) -> bool:
    return isinstance(_unwrap(x), (np.ndarray, torch.Tensor))


def _lazy(x: Any) -> ShardedImages | None:
    x = _unwrap(x)
    return x if isinstance(x, ShardedImages) else None


def _record_shape(sink: dict | None, arr: Any, name: str) -> None:
    """Put ``arr``'s image shape (H, W, C) in ``sink["shape"]`` (first seen), refusing a block whose
    known image shape differs from an earlier one's."""
    if sink is None:
        return
    shape = image_shape(arr)
    if shape is None:
        return
    seen = sink.get("shape")
    if seen is None:
        sink["shape"] = shape
    elif seen != shape:
        raise DiffauditError(f"{name}: a block has images of shape {shape}, the first had {seen} (mixed image shapes)")


def rechunk(blocks: Iterable[Any], block: int, *, name: str, shape: dict | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, uint8 (n ≤ block, D)) from an iterable of uint8 arrays of any sizes, in order.

    ``shape``: a dict that receives the blocks' image shape (H, W, C) under "shape" (see module docstring).
    """
    buf: list[torch.Tensor] = []
    have, offset, dim = 0, 0, None
    shape = {} if shape is None else shape
    for arr in blocks:
        t = flat_uint8(arr, name=name)
        _record_shape(shape, arr, name)
        if dim is None:
            dim = t.shape[1]
        elif t.shape[1] != dim:
            raise DiffauditError(f"{name}: a block has {t.shape[1]} values per image, the first had {dim} (mixed image sizes)")
        while t.shape[0]:
            take = min(block - have, t.shape[0])
            buf.append(t[:take])
            have += take
            t = t[take:]
            if have == block:
                out = buf[0] if len(buf) == 1 else torch.cat(buf)
                yield offset, out
                offset += out.shape[0]
                buf, have = [], 0
    if have:
        out = buf[0] if len(buf) == 1 else torch.cat(buf)
        yield offset, out


def iter_blocks(source: Any, block: int, *, name: str, shape: dict | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, uint8 (n, D) block) over ``source`` (an array, ShardedImages, or an iterable of arrays);
    ``shape`` as in :func:`rechunk`."""
    lazy = _lazy(source)
    if lazy is not None:
        yield from rechunk(lazy.parts(), block, name=name, shape=shape)
        return
    if _is_array(source):
        t = flat_uint8(source, name=name)
        _record_shape(shape, source, name)
        for lo in range(0, t.shape[0], block):
            yield lo, t[lo:lo + block]
        return
    if callable(source):
        source = source()
    yield from rechunk(source, block, name=name, shape=shape)


def peek_dim(source: Any, *, name: str) -> tuple[int | None, Any]:
    """Values per image of a query source, read from its shape or its first block, and the source to
    iterate instead of ``source`` (a one-shot iterable is read once: its first block is put back).
    None for an empty iterable."""
    lazy = _lazy(source)
    if lazy is not None:
        return int(np.prod(lazy.shape[1:])), source
    if _is_array(source):
        return int(flat_uint8(source, name=name).shape[1]), source
    if callable(source):
        source = source()
    if isinstance(source, (list, tuple)):
        return (int(flat_uint8(source[0], name=name).shape[1]) if len(source) else None), source
    it = iter(source)
    for first in it:
        return int(flat_uint8(first, name=name).shape[1]), itertools.chain([first], it)
    return None, ()


class ReferenceSource:
    """A re-iterable reference set. ``size`` (rows), ``dim`` (values per image) and ``image_shape``
    ((H, W, C), None for rows (N, D)) are known at once for arrays and ShardedImages, ``dim`` and
    ``image_shape`` also for a list of blocks (from its first block); for a callable they are learnt
    from the first block read, and ``size`` after the first full pass."""

    def __init__(self, source: Any, *, name: str = "reference"):
        self.name = name
        self._lazy = _lazy(source)
        self._array = flat_uint8(source, name=name) if _is_array(source) else None
        self.image_shape: tuple[int, int, int] | None = None
        if self._lazy is not None:
            self.size, self.dim = len(self._lazy), int(np.prod(self._lazy.shape[1:]))
            self.image_shape = image_shape(self._lazy)
            self._source: Any = self._lazy.parts
            return
        if self._array is None and not (callable(source) or isinstance(source, (list, tuple))):
            raise DiffauditError(
                f"{name}: pass an array, a dataset, a list of arrays or a callable returning an iterator "
                "(a one-shot generator cannot be re-read for every query block)"
            )
        self._source = source
        self.size: int | None = None if self._array is None else int(self._array.shape[0])
        self.dim: int | None = None if self._array is None else int(self._array.shape[1])
        if self._array is not None:
            self.image_shape = image_shape(_unwrap(source))
        elif isinstance(source, (list, tuple)) and len(source):
            self.dim = int(flat_uint8(source[0], name=name).shape[1])
            self.image_shape = image_shape(source[0])
        elif isinstance(source, (list, tuple)):
            self.size = 0

    def blocks(self, block: int) -> Iterator[tuple[int, torch.Tensor]]:
        src: Any = self._array if self._array is not None else self._source
        n = 0
        sink: dict = {}
        for off, t in iter_blocks(src, block, name=self.name, shape=sink):
            if self.dim is None:
                self.dim = int(t.shape[1])
            elif t.shape[1] != self.dim:
                raise DiffauditError(f"{self.name}: a block has {t.shape[1]} values per image, the first had {self.dim} "
                                     "(mixed image sizes)")
            if self.image_shape is None and "shape" in sink:
                self.image_shape = sink["shape"]
            n = off + t.shape[0]
            yield off, t
        self.size = n

    @property
    def random_access(self) -> torch.Tensor | None:
        """The whole reference as uint8 (N, D) when it was given as an array (ShardedImages are read
        into memory at the first call: ask :attr:`known_bytes` first), else None."""
        if self._array is None and self._lazy is not None:
            self._array = flat_uint8(np.asarray(self._lazy), name=self.name)
        return self._array

    @property
    def known_bytes(self) -> int | None:
        """uint8 bytes of the whole reference when known without reading it (arrays, ShardedImages)."""
        if self._array is None and self._lazy is None:
            return None  # a stream: its size is learnt only by reading it
        return self.size * self.dim


QuerySource = Any
RefSource = Any
BlockFactory = Callable[[], Iterable[Any]]
