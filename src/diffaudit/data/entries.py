"""What a source lists before anything is decoded: one :class:`Entry` per example.

Every loader (built-ins, folders, shards, npz) first lists its entries in their deterministic
order, without decoding pixels; :func:`diffaudit.data.loader.load_dataset` then takes the seeded
subset, decodes only the chosen entries, and assembles the :class:`ImageDataset`. So ``subset=1000``
of CIFAR-10 decodes 1,000 JPEGs, not 50,000.
"""

from __future__ import annotations

import dataclasses
import gc
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from diffaudit.data.images import BadImageError


@dataclass
class Entry:
    """One example, not yet decoded.

    Attributes:
        key: the stable id (WebDataset key, path relative to the folder, ``npz:<i>``, ``digits:<i>``).
        name: what errors name: the file path, or ``<shard>:<member>``.
        read: returns the pixels, uint8 (H, W, C) with C in {1, 3}; raises :class:`BadImageError`.
        label: the class index, or None.
        caption: the caption, or None.
        problem: when set, the entry is bad for this reason (e.g. a shard sample without an image);
            reading it raises :class:`BadImageError` (skipped and recorded with ``skip_bad``).
        caption_problem: why its caption is missing or unreadable while other entries have one (an
            image without its ``.txt``, a caption that is not UTF-8): the entry is bad for this reason
            too (said after ``problem``), unless a load that does not need captions drops the
            dataset's captions instead (:func:`drop_captions`).
        file: the file the pixels are read from (image file, shard, ``.npz``), or None for data
            held by a package (digits); a decode cache stamps it (size, modification time).
        image_file: the pixels are decoded from an image file (a folder's file, a shard's member),
            whose C follows how the file was stored (a palette or RGBA file decodes to C = 3 even
            when gray): a load that infers C counts one whose channels are equal everywhere as
            grayscale. False for arrays (``.npz`` rows, digits), whose C is the array's.
    """

    key: str
    name: str
    read: Callable[[], np.ndarray]
    label: int | None = None
    caption: str | None = None
    problem: str | None = None
    file: str | None = None
    image_file: bool = False
    caption_problem: str | None = None

    def pixels(self) -> np.ndarray:
        """uint8 (H, W, C) with C in {1, 3}; raises :class:`BadImageError` for a bad entry."""
        if self.problem is not None or self.caption_problem is not None:
            raise BadImageError(self.name, "; ".join(p for p in (self.problem, self.caption_problem) if p is not None))
        return self.read()


@dataclass
class Listing:
    """A source's entries in their deterministic order, plus what was skipped while listing.

    Attributes:
        entries: the examples, in order.
        source: the spec, for messages and ``ImageDataset.source``.
        has_labels: every entry carries a label (entries lacking one are listed with a ``problem``).
        has_captions: every entry carries a caption (idem).
        class_names: names of the label values, or None.
        skipped: (name, reason) of whatever was skipped while listing (``skip_bad`` only).
        caption_files: files the captions were read from other than the entries' own ``file`` (an
            image folder's ``.txt`` beside each image): a decode cache stamps them too.
        dropped_captions: set by :func:`drop_captions` when a load that does not need captions left
            them out: (key of the first entry whose caption is missing or unreadable, why, how many
            entries); None otherwise.
    """

    entries: list[Entry]
    source: str
    has_labels: bool = False
    has_captions: bool = False
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    caption_files: list[str] = field(default_factory=list)
    dropped_captions: tuple[str, str, int] | None = None


def drop_captions(listing: Listing, entries: list[Entry]) -> tuple[Listing, list[Entry]]:
    """For a load that never uses captions: when some of ``entries`` (those a load decodes) lack their
    caption, or hold one that cannot be read, the dataset's captions are left out (``has_captions``
    False, every caption None) and no entry is bad for want of one; ``dropped_captions`` of the listing
    returned says which and how many. Entries already bad for another reason (a sample without an
    image, a missing label) are not counted: they are errors, or skipped, either way. Otherwise (every
    caption there and readable, or no captions at all) ``listing`` and ``entries`` come back as they
    are, so the load is the one that needs captions."""
    if not listing.has_captions:
        return listing, entries
    lacking = [e for e in entries if e.caption_problem is not None and e.problem is None]
    if not lacking:
        return listing, entries
    out = [dataclasses.replace(e, caption=None, caption_problem=None) for e in entries]
    first = lacking[0]
    return dataclasses.replace(listing, has_captions=False,
                               dropped_captions=(first.key, first.caption_problem, len(lacking))), out


def array_entries(images: np.ndarray, prefix: str, name: str, labels: np.ndarray | None = None,
                  captions: list[str] | None = None, file: str | None = None) -> list[Entry]:
    """Entries over the rows of uint8 (N, H, W, C): key ``<prefix>:<i>``, errors name ``<name>[<i>]``;
    ``file``: the file the array was read from, if any."""
    return [
        Entry(
            key=f"{prefix}:{i}",
            name=f"{name}[{i}]",
            read=(lambda i=i: images[i]),
            label=None if labels is None else int(labels[i]),
            caption=None if captions is None else captions[i],
            file=file,
        )
        for i in range(len(images))
    ]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while listing tens of thousands of entries.

    Building 50,000 entries (each a few small objects, none cyclic) otherwise triggers repeated
    full collections over a growing heap, which doubles the time to list CIFAR-10. The previous
    state is restored on exit; reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
