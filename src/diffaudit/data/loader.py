"""``load_dataset``: one entry point for every dataset spec.

Specs, tried in this order:

1. ``digits``, ``cifar10``, ``cifar10-test``: built-ins (:mod:`diffaudit.data.builtin`); a folder
   that happens to carry one of these names is read as ``./digits``.
2. A brace pattern or a path ending ``.tar`` (``.tar.gz``, ``.tgz``...): WebDataset shards
   (:mod:`diffaudit.data.shards`).
3. A path ending ``.npz``: :mod:`diffaudit.data.npz`.
4. A folder: :mod:`diffaudit.data.folder`.

Pipeline: list the source's entries in their deterministic order (no decoding) -> seeded subset
(``subset``/``subset_seed``: positions chosen among all listed entries, in source order) -> decode
each chosen entry -> centre crop -> resize -> channel conversion -> stack. Bad entries (corrupt,
truncated, unreadable) raise a :class:`DiffauditError` naming the file, or with ``skip_bad`` are
skipped and recorded in ``ImageDataset.skipped``; a subset that meets bad entries is that much
smaller (it is never topped up, so the chosen positions stay those of the seed). An image whose
caption is missing or unreadable (while others have one) is such a bad entry, except in a load with
``need_captions=False`` (a caller that never uses captions: verify, dedup), which keeps it and leaves
out the captions of the whole dataset, saying so once (:func:`say_dropped_captions`); with every
caption there, that load is the one that needs them.

Channels: with ``mode="L"`` or ``"RGB"`` every image is converted (see
:mod:`diffaudit.data.transforms`); without ``mode`` a dataset that mixes grayscale and colour
images is converted to RGB, and a dataset of grayscale images stays C = 1. An image file stored in a
colour mode (palette, RGBA, RGB) whose three channels are equal at every pixel counts as grayscale
beside grayscale images (:func:`gray_if_equal`, :class:`ChannelsSeen`): a folder of grayscale scans
with one gray palette or RGBA file stays C = 1, while one truly coloured file still makes it RGB. A
dataset stored in colour modes only stays C = 3 as stored, gray-looking or not (a model trained on it
takes 3 channels). Alpha is dropped as before (:mod:`diffaudit.data.images`), so only the colour
channels decide.

16-bit images: read at ``round(v / 257)`` (:mod:`diffaudit.data.images`); when every 16-bit grayscale
image of a load fits in 12 bits (largest value <= 4095), one warning says so
(:func:`~diffaudit.data.images.warn_twelve_bit`; a uint16 ``.npz`` alike, :mod:`diffaudit.data.npz`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from diffaudit.core import decompression
from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import bytes_text, progress_bar, warning_once
from diffaudit.data.builtin import BUILTIN_NAMES, list_cifar10, list_digits
from diffaudit.data.dataset import ImageDataset, concat_datasets, say_skipped
from diffaudit.data.entries import Entry, Listing, drop_captions, gc_paused
from diffaudit.data.folder import list_folder
from diffaudit.data.images import (BadImageError, EncodedBytes, SixteenBitSeen, counting_encoded_bytes, noting_sixteen_bit,
                                   warn_twelve_bit)
from diffaudit.data.local_paths import check_local
from diffaudit.data.npz import list_npz
from diffaudit.data.shards import is_shard_spec, list_shard_pattern
from diffaudit.data.subset import choose_subset
from diffaudit.data.transforms import apply_geometry, check_size_option, to_channels
from diffaudit.data.view import ViewPart, is_view, read_view

MODES = ("L", "RGB")
#: Loader options that only transform each image (a view's keys stay valid under any of them).
PER_IMAGE_OPTIONS = ("image_size", "center_crop", "mode")


def list_source(spec: str | os.PathLike, *, skip_bad: bool = False, cifar_root: str | os.PathLike | None = None,
                need_captions: bool = True) -> Listing:
    """The entries of ``spec`` (see the module doc for the dispatch order), not decoded.

    ``need_captions=False``: an entry whose caption is missing or unreadable is not bad; the captions of
    every entry are left out instead (:func:`~diffaudit.data.entries.drop_captions`).

    Raises:
        DiffauditError: the spec names nothing readable (with what was expected).
    """
    listing = _list_source(spec, skip_bad=skip_bad, cifar_root=cifar_root)
    if not need_captions:
        listing, entries = drop_captions(listing, listing.entries)
        listing.entries = entries  # a new listing when captions were left out (else the same one)
    return listing


def _list_source(spec: str | os.PathLike, *, skip_bad: bool, cifar_root: str | os.PathLike | None) -> Listing:
    s = os.fspath(spec)
    if s == "digits":
        return list_digits()
    if s in BUILTIN_NAMES:
        return list_cifar10(s, cifar_root, skip_bad=skip_bad)
    check_local(s)
    if is_shard_spec(s):
        return list_shard_pattern(s, skip_bad=skip_bad)
    path = Path(s).expanduser()
    if s.lower().endswith(".npz"):
        return list_npz(path)
    if path.is_dir():
        return list_folder(path, source=s)
    if path.exists():
        raise DiffauditError(
            f"{s}: not a dataset: expected a folder of images, WebDataset shards (.tar or a brace pattern) "
            "or an .npz with an `images` array"
        )
    raise DiffauditError(
        f"dataset {s!r} not found: expected a built-in name ({', '.join(BUILTIN_NAMES)}), a folder of images, "
        "WebDataset shards (.tar, or a brace pattern like shards-{000000..000004}.tar) or an .npz file"
    )


def load_dataset(
    spec: str | os.PathLike,
    *,
    image_size: int | None = None,
    center_crop: int | None = None,
    subset: int | None = None,
    subset_seed: int = 0,
    mode: str | None = None,
    skip_bad: bool = False,
    cifar_root: str | os.PathLike | None = None,
    need_captions: bool = True,
) -> ImageDataset:
    """Load a dataset into memory.

    Args:
        spec: ``digits``, ``cifar10``, ``cifar10-test``, a folder, shards (``x-{000000..000004}.tar``) or ``x.npz``.
        image_size: resize every image to ``image_size`` x ``image_size`` (bilinear), after the crop.
        center_crop: first crop the central ``center_crop`` x ``center_crop`` square.
        subset: keep a seeded random ``subset`` of the examples (in source order).
        subset_seed: seed of the subset.
        mode: ``"L"`` (grayscale, C = 1) or ``"RGB"`` (C = 3); None keeps grayscale datasets
            grayscale (beside grayscale images, an image file whose colour channels are equal
            everywhere counts as grayscale: :class:`ChannelsSeen`) and converts mixed ones to RGB.
        skip_bad: skip bad images and damaged shards (recorded in ``.skipped``) instead of failing.
        cifar_root: folder of the CIFAR-10 shards (else ``$DIFFAUDIT_CIFAR10``, else searched).
        need_captions: False for a caller that never uses captions (verify compares pixels): an image
            whose caption is missing or unreadable (a folder's image without its ``.txt``, a shard's
            sample without its ``.txt``) is then kept, not bad, and the dataset's captions are left
            out (``captions`` None), said once in a warning naming the first such image and how many.
            When every caption is there and readable, the load is exactly the one with True (same
            captions, same :func:`~diffaudit.data.digest.dataset_digest`). Image problems (an
            undecodable file, a missing ``.cls`` label) are bad entries either way. Not a recorded
            setting: a view never stores it.

    Returns:
        :class:`ImageDataset` with uint8 images (N, H, W, C), C in {1, 3}, values in [0, 255];
        ``keys`` the stable ids; ``labels`` int64 (N,) or None; ``captions`` or None.

    Raises:
        DiffauditError: bad options, a spec that names nothing, bad input (naming the file), images of
            different sizes without ``image_size``, or an empty result.
    """
    if is_view(spec):
        return load_view(spec, load_dataset, image_size=image_size, center_crop=center_crop, subset=subset,
                         subset_seed=subset_seed, mode=mode, skip_bad=skip_bad, cifar_root=cifar_root,
                         need_captions=need_captions)
    image_size, center_crop = check_options(image_size, center_crop, mode)
    listing, entries = list_selected(spec, subset=subset, subset_seed=subset_seed, skip_bad=skip_bad, cifar_root=cifar_root,
                                     need_captions=need_captions)
    say_dropped_captions(listing)
    skipped = list(listing.skipped)
    kept, pixels = [], []
    sixteen_bit, seen = SixteenBitSeen(), ChannelsSeen()
    for _, entry, img in iter_decoded(entries, listing.source, skipped, center_crop=center_crop, image_size=image_size,
                                      skip_bad=skip_bad, channels_seen=seen if mode is None else None,
                                      sixteen_bit=sixteen_bit):
        if pixels:
            check_same_size(listing.source, kept[0].name, pixels[0].shape, entry.name, img.shape)
        kept.append(entry)
        pixels.append(img)
    if not kept:
        raise no_readable_images(listing.source, skipped)
    channels = dataset_channels(mode, seen, listing.source)
    h, w = pixels[0].shape[:2]
    images = np.empty((len(pixels), h, w, channels), dtype=np.uint8)
    for i, img in enumerate(pixels):
        images[i] = to_channels(img, channels)
    warn_twelve_bit(listing.source, sixteen_bit)
    return say_skipped(assemble(listing, kept, images, skipped), asked=subset)


def check_options(image_size, center_crop, mode) -> tuple[int | None, int | None]:
    """Validated (image_size, center_crop); raises :class:`DiffauditError` for a bad ``mode``."""
    image_size = check_size_option("image_size", image_size)
    center_crop = check_size_option("center_crop", center_crop)
    if mode is not None and mode not in MODES:
        raise DiffauditError(f"mode must be one of {', '.join(MODES)} (or None); got {mode!r}")
    return image_size, center_crop


def list_selected(spec, *, subset, subset_seed, skip_bad, cifar_root,
                  need_captions: bool = True) -> tuple[Listing, list[Entry]]:
    """The source's listing and the entries a load decodes (the seeded subset, else all); raises
    :class:`DiffauditError` for an empty source. ``need_captions=False``: captions are left out when one
    of the entries decoded lacks its caption (:func:`~diffaudit.data.entries.drop_captions`; the
    listing's ``dropped_captions`` says so), so a subset whose captions are all there keeps them."""
    listing = list_source(spec, skip_bad=skip_bad, cifar_root=cifar_root)
    entries = listing.entries
    if not entries:
        extra = f" ({len(listing.skipped)} skipped: {listing.skipped[0][0]}: {listing.skipped[0][1]})" if listing.skipped else ""
        raise DiffauditError(f"{listing.source}: the dataset is empty (no examples){extra}")
    if subset is not None:
        entries = [entries[i] for i in choose_subset(len(entries), subset, subset_seed, listing.source)]
    if not need_captions:
        listing, entries = drop_captions(listing, entries)
    return listing, entries


def say_dropped_captions(listing: Listing) -> None:
    """One warning (:func:`~diffaudit.core.progress.warning_once`: a command that loads its data twice, and
    its report in the same process, says it once) when a load that needs no captions left them out
    (``listing.dropped_captions``), naming the first image lacking one and how many do."""
    if listing.dropped_captions is None:
        return
    key, reason, n = listing.dropped_captions
    warning_once("", f"{listing.source}: {n:,} image{' has' if n == 1 else 's have'} no caption ({key}: {reason}); "
                 "captions are not used here, so those of every image are left out and no image is dropped for lacking one")


def iter_decoded(entries: list[Entry], source: str, skipped: list[tuple[str, str]], *, center_crop, image_size,
                 skip_bad: bool, channels_seen: ChannelsSeen | None = None,
                 sixteen_bit: SixteenBitSeen | None = None) -> Iterator[tuple[int, Entry, np.ndarray]]:
    """(position in ``entries``, entry, uint8 (H, W, C) after crop and resize) per readable entry, with a
    progress bar; a bad entry raises, or with ``skip_bad`` is appended to ``skipped``.

    ``channels_seen`` (a load that infers C): counts each image's kind (:meth:`ChannelsSeen.note`), and
    an image file's (H, W, 3) whose channels are equal everywhere comes as (H, W, 1), decided per image
    once decoded (each is decoded once; :meth:`ChannelsSeen.channels` then gives the dataset's C).
    ``sixteen_bit``: counts the 16-bit grayscale images decoded and their largest raw value."""
    seen = sixteen_bit if sixteen_bit is not None else SixteenBitSeen()
    encoded, kept = EncodedBytes(), 0  # image files' bytes decoded, and the pixels kept from them
    with progress_bar(f"load {source}", len(entries), unit="img") as bar, gc_paused():
        for i, entry in enumerate(entries):
            try:
                before = encoded.total
                with noting_sixteen_bit(seen), counting_encoded_bytes(encoded):
                    raw = entry.pixels()
                img = apply_geometry(raw, entry.name, center_crop_size=center_crop, image_size=image_size)
                if channels_seen is not None:
                    img = channels_seen.note(img, image_file=entry.image_file)
                if encoded.total > before:  # decoded from a file now (not a decode cache's pixels)
                    kept += img.nbytes
                    _check_decompression(source, kept, encoded.total)
            except BadImageError as exc:
                if not skip_bad:
                    raise DiffauditError(
                        f"{exc}. Fix or remove it, or pass --skip-bad to skip bad images; "
                        "skips are counted and reported"
                    ) from None
                skipped.append((exc.name, exc.reason))
                continue
            finally:
                bar.advance(1)
            yield i, entry, img


def _check_decompression(source: str, kept: int, encoded: int) -> None:
    """Refuse a load whose decoded pixels (``kept`` bytes, after crop and resize) outgrow the image files
    they came from (``encoded`` bytes) by the rule of compressed shards (:mod:`diffaudit.core.decompression`):
    each image passes the per-image limit (:data:`~diffaudit.data.images.MAX_IMAGE_PIXELS`), yet six flat
    8192 x 8192 PNGs, 1.2 MB in all, held 1.2 GB of pixels and took 10.9 GB to deduplicate. Not a bad image
    (no single one is), so never skipped; --image-size keeps the pixels small."""
    if kept > decompression.decompressed_limit(encoded):
        raise DiffauditError(
            f"{source}: its images decode to more than {bytes_text(kept)} of pixels from {bytes_text(encoded)} of "
            f"files, over {decompression.MAX_DECOMPRESSION_RATIO} times their size: refused as a decompression bomb. Real images "
            "compress a few times; if these are genuine (large flat images), --image-size loads them smaller")


class ImagesDifferInSize(DiffauditError):
    """A dataset's images differ in (H, W), so they cannot be stacked into one array (callers that can
    read them one at a time, :mod:`diffaudit.data.native`, catch exactly this case)."""


def check_same_size(source: str, first_name: str, first_shape, name: str, shape) -> None:
    """Raise :class:`ImagesDifferInSize`, which explains --image-size, when an image's (H, W) differs from the first's."""
    if tuple(shape[:2]) != tuple(first_shape[:2]):
        raise ImagesDifferInSize(
            f"{source}: images differ in size: {first_name} is {first_shape[1]}x{first_shape[0]} but {name} is "
            f"{shape[1]}x{shape[0]} (width x height); pass --image-size to resize "
            "them all, with --center-crop to keep their aspect ratio"
        )


def no_readable_images(source: str, skipped: list[tuple[str, str]]) -> DiffauditError:
    return DiffauditError(f"{source}: no readable images ({len(skipped)} skipped, first: {skipped[0][0]}: {skipped[0][1]})")


@dataclass
class ChannelsSeen:
    """How the images of a load that infers C were stored, to choose its C (:meth:`channels`).

    Attributes:
        gray: images that decode to C = 1 (grayscale modes, 16-bit, grayscale arrays).
        equal: image files that decode to C = 3 (palette, RGBA, RGB...) with the three channels equal
            at every pixel: gray stored in a colour mode.
        colour: images with C = 3 whose channels differ somewhere.
    """

    gray: int = 0
    equal: int = 0
    colour: int = 0

    def note(self, image: np.ndarray, *, image_file: bool) -> np.ndarray:
        """Count ``image``, uint8 (H, W, C), C in {1, 3}; returns it, as (H, W, 1) when it is an image
        file whose channels are equal everywhere (:func:`gray_if_equal`: the same values)."""
        if image.shape[-1] == 1:
            self.gray += 1
            return image
        gray = gray_if_equal(image) if image_file else image
        if gray.shape[-1] == 1:
            self.equal += 1
        else:
            self.colour += 1
        return gray

    def add(self, other: "ChannelsSeen") -> None:
        """Count ``other``'s images in this one as well."""
        self.gray += other.gray
        self.equal += other.equal
        self.colour += other.colour

    def channels(self) -> int:
        """The dataset's C: 3 when an image is colour, or when every image was stored in a colour mode
        (equal channels and no grayscale image: kept C = 3 as stored); else 1."""
        return 3 if self.colour or (self.equal and not self.gray) else 1


def gray_if_equal(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) whose three channels are equal at every pixel -> its first channel, uint8
    (H, W, 1) (the same values: ``rgb_to_gray`` and ``gray_to_rgb`` of it give them back); any other
    image (C = 1, or colours that differ somewhere) unchanged."""
    if image.shape[-1] != 3:
        return image
    r = image[..., 0]
    if np.array_equal(r, image[..., 1]) and np.array_equal(r, image[..., 2]):
        return np.ascontiguousarray(image[..., :1])
    return image


def dataset_channels(mode: str | None, seen: ChannelsSeen, source: str | None = None) -> int:
    """C of a loaded dataset: 1 for mode L, 3 for RGB; without a mode, as its images were stored
    (``seen``, :meth:`ChannelsSeen.channels`). Given the ``source``, a grey dataset that a few colour images
    make RGB is warned of once (a scan folder with a stray colour file trains a colour model)."""
    if mode is not None:
        return 1 if mode == "L" else 3
    grey = seen.gray + seen.equal
    if source is not None and seen.gray and 0 < seen.colour < grey:  # grey files that the colour ones make RGB
        n = seen.colour
        warning_once("", f"{source}: {n:,} of its {n + grey:,} images {'is' if n == 1 else 'are'} in colour and the "
                     f"other {grey:,} grey, so every image is loaded as RGB (3 channels; a model trained on them takes "
                     "colour): --mode L loads them all grey, --mode RGB says colour is meant")
    return seen.channels()


def assemble(listing: Listing, kept: list[Entry], images, skipped: list[tuple[str, str]]) -> ImageDataset:
    """The :class:`ImageDataset` of the decoded entries ``kept`` and their ``images``."""
    return ImageDataset(
        images=images,
        keys=[e.key for e in kept],
        labels=np.array([e.label for e in kept], dtype=np.int64) if listing.has_labels else None,
        captions=[e.caption for e in kept] if listing.has_captions else None,
        source=listing.source,
        skipped=skipped,
        class_names=listing.class_names,
    )


def load_dataset_parts(spec: str | os.PathLike, **options) -> tuple[ImageDataset, list[tuple[ViewPart, list[str]]]]:
    """:func:`load_dataset` ``(spec, **options)``, and the datasets it is made of, ``[(part, its keys in the
    dataset), ...]``: ``spec`` with the options given, or each dataset of a view (:func:`load_view_parts`).
    A view of some of its examples is written from these parts (a view may not name another view)."""
    if is_view(spec):
        return load_view_parts(spec, load_dataset, **options)
    ds = load_dataset(spec, **options)
    recorded = {k: v for k, v in options.items() if v not in (None, False) and k != "need_captions"}  # no view stores it
    return ds, [(ViewPart(str(spec), recorded), list(ds.keys))]


def load_view(path, load: Callable[..., ImageDataset], *, subset, subset_seed, cifar_root, need_captions: bool = True,
              **given) -> ImageDataset:
    """Load a view file: each of its datasets loaded by ``load(spec, **options)`` with the view's own
    options, its keys prefixed and restricted to the part's keys (in order), one after another
    (:func:`~diffaudit.data.dataset.concat_datasets`). Per-image options given here (``image_size``,
    ``center_crop``, ``mode``) replace the view's, since they change pixels, not which examples the
    keys name; any other option that differs from the view's is an error. ``subset`` then draws from
    the whole view. ``need_captions`` (not a view's option) is given to each dataset's load."""
    return load_view_parts(path, load, subset=subset, subset_seed=subset_seed, cifar_root=cifar_root,
                           need_captions=need_captions, **given)[0]


def load_view_parts(path, load: Callable[..., ImageDataset], *, subset=None, subset_seed=0, cifar_root=None,
                    need_captions: bool = True, **given) -> tuple[ImageDataset, list[tuple[ViewPart, list[str]]]]:
    """:func:`load_view`, and the datasets the view is made of: ``[(part, its keys in the dataset), ...]``,
    each part with the options it was loaded with, so that a view of some of these examples can be written
    with :func:`~diffaudit.data.view.save_parts_view` (a view may not name another view)."""
    parts = read_view(path)
    per_image = {k: v for k, v in given.items() if k in PER_IMAGE_OPTIONS and v is not None}
    loaded, used = [], []
    for i, part in enumerate(parts):
        overridden = [k for k, v in given.items()
                      if k not in per_image and v not in (None, False) and part.options.get(k) != v]
        if overridden:
            raise DiffauditError(f"{path}: a dataset view carries its own loader options; do not pass "
                                 f"{', '.join('--' + k.replace('_', '-') for k in overridden)}")
        options = dict(part.options, **per_image)
        if cifar_root is not None:
            options = dict(options, cifar_root=cifar_root)
        where = path if len(parts) == 1 else f"{path}: part {i}"
        try:
            base = load(part.spec, need_captions=need_captions, **options)
        except DiffauditError as exc:  # a message about the part's spec or its options: say which view holds them
            raise DiffauditError(f"{where} ({part.spec}): {exc}") from None
        if part.prefix:
            base = dataclasses.replace(base, keys=[part.prefix + k for k in base.keys])
        if part.keys is not None:
            index = base.index_of()
            missing = [k for k in part.keys if k not in index]
            if missing:
                # keys are written prefixed: a key of the dataset as it names it is said so
                bare = part.prefix and part.prefix + missing[0] in index
                hint = f"; a part's keys carry its prefix: {part.prefix + missing[0]!r}" if bare else ""
                raise DiffauditError(f"{where}: {len(missing)} key{'s are' if len(missing) > 1 else ' is'} not in "
                                     f"{part.spec} (first: {missing[0]!r}){hint}")
            base = base.subset([index[k] for k in part.keys])
        loaded.append(base)
        used.append(dataclasses.replace(part, options=options))
    ds = loaded[0] if len(loaded) == 1 else concat_datasets(loaded, str(path))
    ds.source = str(path)
    if subset is not None:
        ds = ds.subset(choose_subset(len(ds), subset, subset_seed, str(path)))
    kept = set(ds.keys)
    return ds, [(part, [k for k in base.keys if k in kept]) for part, base in zip(used, loaded)]
