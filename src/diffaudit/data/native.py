"""``NativeImages``: a dataset's examples read one at a time, at their own size, never stacked.

:func:`~diffaudit.data.loader.load_dataset` stacks every image into one (N, H, W, C) array, so a
dataset whose images differ in size (caption-matched web images, LAION-like) cannot load without
``image_size`` / ``center_crop``, which distort or discard what a crop-alignment check needs (paper
§4.1: Stable Diffusion was trained on random square crops of shorter-side-resized images). This
reader lists the entries exactly as ``load_dataset`` does (same order, same seeded ``subset``, same
``cifar_root``), so an integer index is the same position in --data, and decodes an image only
when it is indexed (nothing is cached: memory holds one image at a time).

Bad images: indexing one raises a :class:`DiffauditError` naming the file; with ``skip_bad``,
:meth:`NativeImages.read` returns None for it instead and records it in ``skipped`` (positions do
not shift: unlike ``load_dataset``, which drops bad entries, every listed entry keeps its index).
Dataset views (``.view.json``) are refused: read their dataset instead. Captions are never read here,
so an image whose caption is missing or unreadable is not bad (listed with ``need_captions=False``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.identity import text_bytes
from diffaudit.data.images import BadImageError
from diffaudit.data.loader import MODES, list_selected
from diffaudit.data.transforms import to_channels
from diffaudit.data.view import is_view, read_view


class NativeImages:
    """The examples of ``spec`` by position, each uint8 (H, W, C) at its stored size, decoded on access.

    Attributes:
        keys: the stable ids of the listed examples, in ``load_dataset``'s order (after ``subset``).
        source: the spec, for messages.
        skipped: (name, reason) of what was skipped while listing, then of bad images met by
            :meth:`read` with ``skip_bad``.
        bad: positions found unreadable by :meth:`read` with ``skip_bad``.
    """

    def __init__(self, spec: str | os.PathLike, *, subset: int | None = None, subset_seed: int = 0,
                 skip_bad: bool = False, cifar_root: str | os.PathLike | None = None, mode: str | None = None):
        """``mode``: ``"L"`` or ``"RGB"`` converts every image read (C = 1 or 3); None keeps each as stored.

        Raises:
            DiffauditError: a dataset view, a bad ``mode``, a spec that names nothing, an empty source.
        """
        if is_view(spec):
            parts = read_view(spec)
            base = parts[0].spec if len(parts) == 1 else " and ".join(p.spec for p in parts)
            raise DiffauditError(
                f"{spec}: a dataset view cannot be read image by image at each image's own size; pass its dataset "
                f"({base}) as --data instead (map its keys, which stay the same, rather than positions)")
        if mode is not None and mode not in MODES:
            raise DiffauditError(f"mode must be one of {', '.join(MODES)} (or None); got {mode!r}")
        listing, self._entries = list_selected(spec, subset=subset, subset_seed=subset_seed, skip_bad=skip_bad,
                                               cifar_root=cifar_root, need_captions=False)  # it has no captions
        self.source = listing.source
        self.keys = [e.key for e in self._entries]
        self.skipped = list(listing.skipped)
        self.bad: set[int] = set()
        self._skip_bad = skip_bad
        self._channels = None if mode is None else (1 if mode == "L" else 3)

    def __len__(self) -> int:
        return len(self._entries)

    def index_of(self) -> dict[str, int]:
        """Map key -> index."""
        return {k: i for i, k in enumerate(self.keys)}

    def read(self, i: int) -> np.ndarray | None:
        """Example ``i``: uint8 (H, W, C) as stored (C converted when a ``mode`` was given), or None when
        it is bad and ``skip_bad`` is set (recorded in ``skipped`` and ``bad``).

        Raises:
            DiffauditError: a bad image without ``skip_bad`` (naming the file); ``i`` out of range.
        """
        i = int(i)
        if not 0 <= i < len(self._entries):
            raise DiffauditError(f"{self.source}: index {i} is outside the dataset (N = {len(self._entries)})")
        entry = self._entries[i]
        try:
            img = entry.pixels()
        except BadImageError as exc:
            if not self._skip_bad:
                raise DiffauditError(f"{exc}. Fix or remove it, or pass --skip-bad to skip bad images; "
                                     "skips are counted and reported") from None
            if i not in self.bad:
                self.bad.add(i)
                self.skipped.append((exc.name, exc.reason))
            return None
        return img if self._channels is None else to_channels(img, self._channels)

    def __getitem__(self, i: int) -> np.ndarray:
        """Example ``i``, uint8 (H, W, C); raises :class:`DiffauditError` naming the file when it is bad
        (also with ``skip_bad``: a skipped image has no pixels)."""
        img = self.read(i)
        if img is None:
            raise DiffauditError(f"{self._entries[int(i)].name}: skipped as unreadable (--skip-bad); it has no pixels")
        return img

    def digest(self, indices: Sequence[int]) -> str:
        """SHA-256 (16 hex) of every listed key (in order) and of the examples at ``indices`` (each once,
        in increasing order): position, shape and pixels as :meth:`read` gives them, or the bad entry's
        name. Any change of the listing, or of a pixel of those examples, changes it; the other
        examples are not decoded."""
        h = hashlib.sha256(b"native\x00" + str(len(self.keys)).encode())
        h.update(text_bytes("\x00".join(self.keys)))
        for i in sorted({int(i) for i in indices}):
            img = self.read(i)
            if img is None:
                h.update(text_bytes(f"\x00{i} bad {self._entries[i].name}"))
                continue
            h.update(f"\x00{i} {tuple(img.shape)}".encode())
            h.update(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
        return h.hexdigest()[:16]
