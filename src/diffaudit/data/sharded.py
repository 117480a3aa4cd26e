"""A read-only image array made of several parts (the ``.npy`` shards of a sample store).

:class:`ShardedImages` behaves like a uint8 array (N, H, W, C) for what diffaudit asks of one
(``len``, ``shape``, ``dtype``, indexing by an integer, a slice or an integer array) but reads only
the rows asked for. Parts given as ``.npy`` paths are memory-mapped one at a time and unmapped when
the next is opened, so a command walking over 2^20 generations in blocks holds about one block and
one mapped shard, never the whole set (mapped pages that stay mapped would count as resident).
``np.asarray`` on it reads everything (a copy); code that can stream walks :meth:`ShardedImages.parts`.
:meth:`ShardedImages.take` selects rows without reading them (a dataset's subset stays lazy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import load_npy


@dataclass(frozen=True)
class Rows:
    """Some rows of a part: ``source`` (a uint8 array or an ``.npy`` path) at positions ``rows``."""

    source: np.ndarray | str | Path
    rows: np.ndarray


Part = Union[np.ndarray, str, Path, Rows]

#: :meth:`ShardedImages.take` stays lazy while it makes at most one part per this many rows (or 64).
LAZY_RUN_ROWS = 256


def _open_part(part: Part, *, header_only: bool = False) -> np.ndarray:
    """The part's array: memory-mapped for a path; a :class:`Rows` part is read (a copy) unless only
    its shape is wanted (``header_only``: a zero-copy stand-in of the right shape)."""
    if isinstance(part, Rows):
        src = _open_part(part.source)
        if header_only:
            return np.broadcast_to(np.zeros((), np.uint8), (len(part.rows),) + src.shape[1:])
        return np.asarray(src[part.rows])
    return part if isinstance(part, np.ndarray) else load_npy(part, mmap=True)


class ShardedImages:
    """uint8 images (N, H, W, C) stored as consecutive parts (n_i, H, W, C), N = Σ n_i.

    Args:
        parts: uint8 arrays, paths of ``.npy`` files holding them (read memory-mapped, one open at a
            time), or :class:`Rows` of either, all of one image shape (H, W, C).
        name: what the parts are, for error messages.
    """

    def __init__(self, parts: Sequence[Part], *, name: str = "images"):
        self.name = name
        shapes, kept = [], []
        for p in parts:
            a = _open_part(p, header_only=True)  # a path's header only: no pixel is read
            if a.dtype != np.uint8 or a.ndim != 4 or (shapes and a.shape[1:] != shapes[0][1:]):
                raise DiffauditError(
                    f"{name}: every part must be uint8 (n, H, W, C) of one image shape; got {a.dtype} {a.shape}"
                    + (f" beside {shapes[0][1:]}" if shapes else "")
                )
            if len(a):
                shapes.append(a.shape)
                kept.append(p)
        if not kept:
            raise DiffauditError(f"{name}: no images")
        self._parts: list[Part] = kept
        self._image_shape = tuple(int(x) for x in shapes[0][1:])
        self._starts = np.cumsum([0] + [n for n, *_ in shapes])
        self._open: tuple[int, np.ndarray] | None = None  # the one mapped file part

    @classmethod
    def joined(cls, arrays: Sequence["ShardedImages"], *, name: str = "images") -> "ShardedImages":
        """``arrays`` one after the other (N = Σ N_i), as lazy as they are: their parts, none read."""
        return cls([part for a in arrays for part in a._parts], name=name)

    def _part(self, p: int) -> np.ndarray:
        part = self._parts[p]
        if isinstance(part, np.ndarray):
            return part
        if self._open is None or self._open[0] != p:
            self._open = None  # drop the previous mapping first
            self._open = (p, _open_part(part))
        return self._open[1]

    def take(self, indices: Any) -> "ShardedImages | np.ndarray":
        """The rows at ``indices`` (1-D integers, any order, repeats allowed), in that order.

        Lazy when the indices fall into few runs that stay in one part (a seeded subset, a view in
        dataset order, rows repeated after the others): a :class:`ShardedImages` whose parts are the
        selected rows of these parts (each at most as long as its part), read only when reached.
        Indices that jump between parts more than once per :data:`LAZY_RUN_ROWS` rows (a shuffle)
        give a numpy copy.
        """
        idx = self._positions(indices)
        limit = max(64, len(idx) // LAZY_RUN_ROWS)
        which = np.searchsorted(self._starts, idx, side="right") - 1
        cuts = np.flatnonzero(np.diff(which)) + 1
        if len(idx) == 0 or len(cuts) >= limit:  # too many runs already, before any is cut to size
            return self[idx]
        sizes = np.diff(self._starts)
        pieces = []  # runs within one part, cut to at most that part's size (a part read is bounded)
        for run in np.split(np.arange(len(idx)), cuts):
            n_part = int(sizes[which[run[0]]])
            pieces.extend(run[lo:lo + n_part] for lo in range(0, len(run), n_part))
        if len(pieces) > limit:
            return self[idx]
        parts: list[Part] = []
        for run in pieces:
            p = int(which[run[0]])
            base, local = self._parts[p], idx[run] - self._starts[p]
            n_part = int(sizes[p])
            if len(local) == n_part and np.array_equal(local, np.arange(n_part)):
                parts.append(base)  # the whole part, in order
            elif isinstance(base, Rows):
                parts.append(Rows(base.source, base.rows[local]))
            else:
                parts.append(Rows(base, local))
        return ShardedImages(parts, name=self.name)

    def _positions(self, key: Any) -> np.ndarray:
        """int64 positions from an integer array or boolean mask, negatives wrapped, range-checked."""
        n = len(self)
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"a boolean mask of shape {idx.shape} for {n} images")
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise IndexError(f"index images by an integer, a slice or a 1-D integer array, not {idx.dtype} {idx.shape}")
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"an index is out of range for {n} images")
        return idx

    # -- the array protocol diffaudit uses ---------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]),) + self._image_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def parts(self) -> Iterator[np.ndarray]:
        """The parts in order (their concatenation is the array), each opened when reached."""
        for p in range(len(self._parts)):
            yield self._part(p)
        self._open = None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._range(0, len(self))
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(key)} is out of range for {n} images")
            p = int(np.searchsorted(self._starts, i, side="right")) - 1
            return np.array(self._part(p)[i - self._starts[p]])
        if isinstance(key, slice):
            lo, hi, step = key.indices(n)
            if step != 1:
                return self[np.arange(lo, hi, step)]
            return self._range(lo, hi)
        idx = self._positions(key)
        out = np.empty((len(idx),) + self.shape[1:], dtype=np.uint8)
        which = np.searchsorted(self._starts, idx, side="right") - 1
        for p in np.unique(which):
            sel = which == p
            out[sel] = self._part(int(p))[idx[sel] - self._starts[p]]
        return out

    def _range(self, lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.empty((0,) + self.shape[1:], dtype=np.uint8)
        out = np.empty((hi - lo,) + self._image_shape, dtype=np.uint8)
        p = int(np.searchsorted(self._starts, lo, side="right")) - 1
        while p < len(self._parts) and self._starts[p] < hi:
            a, b = max(lo, self._starts[p]), min(hi, self._starts[p + 1])
            out[a - lo:b - lo] = self._part(p)[a - self._starts[p]:b - self._starts[p]]
            p += 1
        return out

    def __repr__(self) -> str:
        return f"ShardedImages({self.name!r}, shape={self.shape}, parts={len(self._parts)})"


def concat_images(arrays: Sequence["np.ndarray | ShardedImages"], *, name: str = "images") -> "np.ndarray | ShardedImages":
    """The rows of ``arrays`` (each uint8 (n_i, H, W, C), one image shape), one after another: a numpy
    array when every one is, else a :class:`ShardedImages` over their parts (nothing read)."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    parts: list[Part] = []
    for a in arrays:
        parts.extend(a._parts if isinstance(a, ShardedImages) else [a])
    return ShardedImages(parts, name=name)


def is_image_array(x: Any) -> bool:
    """True for a numpy uint8/float array or a :class:`ShardedImages` (what ImageDataset holds)."""
    return isinstance(x, (np.ndarray, ShardedImages))
