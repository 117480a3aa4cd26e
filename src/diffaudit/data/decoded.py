"""``load_dataset_to_disk``: decode a dataset once into ``.npy`` parts and read it memory-mapped.

For training sets larger than memory (verification against millions of images, paper §5.1), the
decoded pixels go to uint8 ``.npy`` parts (N_i, H, W, C) of at most ``part_bytes`` in a cache folder,
and the returned :class:`ImageDataset` holds a :class:`ShardedImages` over them: commands read the rows
they need, and the nearest-neighbour search streams the parts. The result equals
:func:`~diffaudit.data.loader.load_dataset` with the same options (same keys, labels, captions,
pixels, channels, skipped entries).

Layout of ``<cache>/<options digest>-<contents digest>/`` (options: the spec and the loader options;
contents: Pillow's version, the listed keys and each source file's path, size and modification time,
an image folder's caption files included):

- ``part-000000.npy`` + ``part-000000.json`` (keys, labels, captions, skipped entries, and how many
  listed entries were consumed up to the end of this part): written atomically, the ``.json`` last;
- ``done.json`` once every entry is decoded.

An interrupted decode resumes after its last complete part; a finished one is reused by later calls
with the same spec, options and contents. A source file added, removed, rewritten or touched changes
the contents digest: the dataset is decoded again, and the older decode of the same spec and options
is deleted (``fresh=True`` decodes again regardless). Without ``mode``, parts decoded before the first
colour image are rewritten as RGB at the end, as the in-memory loader converts a mixed dataset; parts
of gray image files stored in a colour mode, written as RGB until a grayscale image came, are
rewritten as grayscale (:class:`~diffaudit.data.loader.ChannelsSeen`: the C the in-memory loader
chooses). Each part's ``.json`` counts its 16-bit grayscale images and their largest value,
``done.json`` the whole decode's, so that a load from a finished decode warns of 12-bit images as a
decoding load does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import PIL

from diffaudit.core.identity import text_bytes
from diffaudit.core.io import load_npy, make_private_dir, read_json, remove_stale_temps, save_npy_atomic, write_json_atomic
from diffaudit.data.builtin import BUILTIN_NAMES
from diffaudit.data.dataset import ImageDataset, say_skipped
from diffaudit.data.entries import Entry
from diffaudit.data.images import SixteenBitSeen, warn_twelve_bit
from diffaudit.data.loader import (
    ChannelsSeen,
    check_options,
    check_same_size,
    dataset_channels,
    iter_decoded,
    list_selected,
    load_view,
    no_readable_images,
    say_dropped_captions,
)
from diffaudit.data.sharded import ShardedImages
from diffaudit.data.transforms import to_channels
from diffaudit.data.view import is_view

#: Largest decoded part file (uint8 bytes).
PART_BYTES = 256 << 20
#: Named in the contents digest of a decode that infers C (no ``mode``): decodes made before gray image
#: files stored in a colour mode counted as grayscale (beside grayscale ones) may hold other channels,
#: and are redone.
_INFERRED_CHANNELS = "inferred channels: equal-channel image files are gray"


def _folder_name(spec: str, options: dict[str, Any], entries: list[Entry], caption_files: Sequence[str] = ()) -> str:
    """``<options digest>-<contents digest>``: the spec and options, then the decoder (Pillow's
    version: another may decode JPEGs to other pixels; without ``mode``, :data:`_INFERRED_CHANNELS`),
    the keys and the stamp (path, size,
    modification time in ns) of every file the entries are read from, and of the files their captions
    come from (``caption_files``: an image folder's ``.txt`` files; an edited caption is other data)."""
    head = hashlib.sha256(json.dumps({"spec": spec, "options": options}, sort_keys=True).encode())
    body = hashlib.sha256(f"pillow {PIL.__version__}\0".encode())
    if options.get("mode") is None:
        body.update(f"{_INFERRED_CHANNELS}\0".encode())
    for e in entries:
        body.update(text_bytes(e.key) + b"\0")
    files = [e.file for e in entries if e.file is not None] + list(caption_files)
    for f in dict.fromkeys(files):  # each file once, in order
        try:
            st = os.stat(f)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        body.update(text_bytes(f"{f}\0{stamp}\0"))
    return f"{head.hexdigest()[:16]}-{body.hexdigest()[:16]}"


def _spec_key(spec: str | os.PathLike) -> str:
    """The spec as the cache names it: a built-in name as is, a path (or shard pattern) absolute, so
    ``--data train`` run from two folders names two datasets (and neither deletes the other's decode)."""
    s = os.fspath(spec)
    return s if s in BUILTIN_NAMES else os.path.abspath(os.path.expanduser(s))


def _remove_older_decodes(folder: Path) -> None:
    """Delete the other decodes of the same spec and options (their source files have changed since)."""
    prefix = folder.name.split("-")[0] + "-"
    for other in folder.parent.glob(prefix + "*"):
        if other != folder and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


def _part_name(i: int) -> str:
    return f"part-{i:06d}"


def _finished_parts(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The consecutive parts whose ``.npy`` and ``.json`` are both written, in order."""
    out = []
    while True:
        name = _part_name(len(out))
        npy, meta = folder / f"{name}.npy", folder / f"{name}.json"
        if not (npy.is_file() and meta.is_file()):
            return out
        out.append((npy, read_json(meta)))


def load_dataset_to_disk(
    spec: str | os.PathLike,
    cache: str | os.PathLike,
    *,
    image_size: int | None = None,
    center_crop: int | None = None,
    subset: int | None = None,
    subset_seed: int = 0,
    mode: str | None = None,
    skip_bad: bool = False,
    cifar_root: str | os.PathLike | None = None,
    fresh: bool = False,
    part_bytes: int = PART_BYTES,
    need_captions: bool = True,
) -> ImageDataset:
    """Like :func:`~diffaudit.data.loader.load_dataset`, with the pixels decoded into ``cache``.

    Args:
        spec, image_size, center_crop, subset, subset_seed, mode, skip_bad, cifar_root: as there.
        cache: the cache folder (created owner-only); one subfolder per spec and options, named
            also by the contents (keys, source files' sizes and modification times).
        fresh: decode again even when a finished or partial decode is there.
        part_bytes: largest part, in bytes (at least one image per part).
        need_captions: as there; a decode that left the captions out is a decode of its own (its
            folder's options say so), while one with every caption there is shared with loads that
            need them.

    Returns:
        :class:`ImageDataset` whose ``images`` is a :class:`ShardedImages` over the parts.
    """
    if is_view(spec):
        return load_view(spec, lambda s, **o: load_dataset_to_disk(s, cache, fresh=fresh, part_bytes=part_bytes, **o),
                         image_size=image_size, center_crop=center_crop, subset=subset, subset_seed=subset_seed,
                         mode=mode, skip_bad=skip_bad, cifar_root=cifar_root, need_captions=need_captions)
    image_size, center_crop = check_options(image_size, center_crop, mode)
    listing, entries = list_selected(spec, subset=subset, subset_seed=subset_seed, skip_bad=skip_bad, cifar_root=cifar_root,
                                     need_captions=need_captions)
    say_dropped_captions(listing)
    options = {"image_size": image_size, "center_crop": center_crop, "subset": subset, "subset_seed": subset_seed,
               "mode": mode, "skip_bad": skip_bad}
    if listing.dropped_captions is not None:  # its entries differ from those of a load that needs captions:
        options["captions_left_out"] = True  # never the folder of such a load (which --skip-bad may have cut)
    folder = Path(cache) / _folder_name(_spec_key(spec), options, entries, listing.caption_files)
    if fresh and folder.exists():
        shutil.rmtree(folder)
    if not folder.exists():
        _remove_older_decodes(folder)
    make_private_dir(folder)

    if not (folder / "done.json").is_file():
        remove_stale_temps(folder)  # a part being written when the last decode was killed
        _decode(folder, listing, entries, mode=mode, skip_bad=skip_bad, center_crop=center_crop, image_size=image_size,
                part_bytes=part_bytes)
    done = read_json(folder / "done.json")
    warn_twelve_bit(listing.source, SixteenBitSeen(*done.get("sixteen_bit", (0, 0))))
    parts = _finished_parts(folder)
    keys = [k for _, m in parts for k in m["keys"]]
    return say_skipped(ImageDataset(
        images=ShardedImages([p for p, _ in parts], name=listing.source),
        keys=keys,
        labels=np.array([x for _, m in parts for x in m["labels"]], dtype=np.int64) if listing.has_labels else None,
        captions=[x for _, m in parts for x in m["captions"]] if listing.has_captions else None,
        source=listing.source,
        skipped=[tuple(x) for x in done["skipped"]],
        class_names=listing.class_names,
    ))


def _decode(folder: Path, listing, entries, *, mode, skip_bad, center_crop, image_size, part_bytes) -> None:
    """Decode the entries not yet in a finished part, part by part; then make channels uniform and
    write ``done.json`` (the skipped entries; ``sixteen_bit``: [16-bit grayscale images, their largest
    value], summed over the parts). Each part's ``.json`` also counts its images by how they were stored
    (``channels_seen``: [gray, equal, colour], :class:`~diffaudit.data.loader.ChannelsSeen`), so that a
    resumed decode chooses C as one decode would."""
    parts = _finished_parts(folder)
    consumed = parts[-1][1]["consumed"] if parts else 0
    skipped = [tuple(x) for x in listing.skipped] + [tuple(x) for _, m in parts for x in m["skipped"]]
    first = (parts[0][1]["first"], tuple(load_npy(parts[0][0], mmap=True).shape[1:])) if parts else None
    sixteen_bit, seen = SixteenBitSeen(), ChannelsSeen()  # of the finished parts, then of each part written
    for p, m in parts:
        sixteen_bit.add(SixteenBitSeen(*m.get("sixteen_bit", (0, 0))))
        stored = m.get("channels_seen") or ([0, 0, 1] if load_npy(p, mmap=True).shape[-1] == 3 else [1, 0, 0])
        seen.add(ChannelsSeen(*stored))
    # the part being decoded: iter_decoded counts in these same objects, emptied after each part
    part_sixteen_bit, part_seen = SixteenBitSeen(), ChannelsSeen()
    buf: list[tuple[Any, np.ndarray]] = []
    part_skipped: list[tuple[str, str]] = []  # iter_decoded appends the entries it skips
    rows = None

    def flush(next_consumed: int) -> None:
        nonlocal buf
        seen.add(part_seen)
        channels = dataset_channels(mode, seen)
        images = np.stack([to_channels(img, channels) for _, img in buf])
        name = _part_name(len(parts))
        save_npy_atomic(folder / f"{name}.npy", images)
        meta = {"first": first[0], "keys": [e.key for e, _ in buf], "labels": [e.label for e, _ in buf],
                "captions": [e.caption for e, _ in buf], "skipped": list(part_skipped), "consumed": next_consumed,
                "sixteen_bit": [part_sixteen_bit.images, part_sixteen_bit.max_value],
                "channels_seen": [part_seen.gray, part_seen.equal, part_seen.colour]}
        write_json_atomic(folder / f"{name}.json", meta)  # last: the part counts once its .json is there
        parts.append((folder / f"{name}.npy", meta))
        skipped.extend(part_skipped)
        sixteen_bit.add(part_sixteen_bit)
        buf = []
        part_skipped.clear()  # the same list iter_decoded appends to
        part_sixteen_bit.images, part_sixteen_bit.max_value = 0, 0
        part_seen.gray, part_seen.equal, part_seen.colour = 0, 0, 0

    for i, entry, img in iter_decoded(entries[consumed:], listing.source, part_skipped, center_crop=center_crop,
                                      image_size=image_size, skip_bad=skip_bad,
                                      channels_seen=part_seen if mode is None else None, sixteen_bit=part_sixteen_bit):
        if first is None:
            first = (entry.name, img.shape)
        check_same_size(listing.source, first[0], first[1], entry.name, img.shape)
        buf.append((entry, img))
        rows = rows or max(1, part_bytes // (img.shape[0] * img.shape[1] * 3))
        if len(buf) == rows:
            flush(consumed + i + 1)
    if buf:
        flush(len(entries))
    skipped.extend(part_skipped)  # bad entries after the last image (redone on a resume)
    if not parts:
        raise no_readable_images(listing.source, skipped)
    channels = dataset_channels(mode, seen, listing.source)
    for path, _ in parts:  # parts decoded before the first colour image (or the first grayscale one)
        if load_npy(path, mmap=True).shape[-1] != channels:
            save_npy_atomic(path, to_channels(load_npy(path), channels))
    write_json_atomic(folder / "done.json", {"skipped": skipped,
                                             "sixteen_bit": [sixteen_bit.images, sixteen_bit.max_value]})
