"""The in-memory dataset every command consumes.

An :class:`ImageDataset` holds uint8 pixels (N, H, W, C), C in {1, 3}, one stable string id per
example (its WebDataset key, its file path relative to the dataset root, or ``npz:<index>``), and
optional labels and captions. An example's integer index is its position in the dataset as loaded
(loading is deterministic for the same spec and options).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import stage_line
from diffaudit.core.results import note_skipped
from diffaudit.data.sharded import ShardedImages, concat_images, is_image_array


@dataclass
class ImageDataset:
    """Images with stable ids.

    Attributes:
        images: uint8 array (N, H, W, C), C = 1 (grayscale) or 3 (RGB), or a :class:`ShardedImages` over
            memory-mapped parts (a sample store read lazily: rows are read when indexed).
        keys: N stable ids (strings).
        labels: int64 array (N,) or None.
        captions: N strings or None.
        source: the spec it was loaded from (for results and error messages).
        skipped: (name, reason) of every input skipped with ``skip_bad`` (never a silent drop).
        class_names: names of the label values (``class_names[label]``), or None when unknown.
    """

    images: "np.ndarray | ShardedImages"
    keys: list[str]
    labels: np.ndarray | None = None
    captions: list[str] | None = None
    source: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check shapes and types; raises :class:`DiffauditError` naming the offending field."""
        im = self.images
        if not is_image_array(im) or im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] not in (1, 3):
            raise DiffauditError(
                f"{self.source or 'dataset'}: images must be a uint8 array (N, H, W, C) with C in (1, 3); "
                f"got {getattr(im, 'dtype', type(im))} {getattr(im, 'shape', '')}"
            )
        if im.shape[1] < 1 or im.shape[2] < 1:
            raise DiffauditError(f"{self.source or 'dataset'}: images have no pixels (height x width {im.shape[1]}x{im.shape[2]})")
        n = len(im)
        if len(self.keys) != n:
            raise DiffauditError(f"{self.source}: {len(self.keys)} keys for {n} images")
        if len(set(self.keys)) != n:
            raise DiffauditError(f"{self.source}: keys are not unique")
        if self.labels is not None and len(self.labels) != n:
            raise DiffauditError(f"{self.source}: {len(self.labels)} labels for {n} images")
        if self.captions is not None and len(self.captions) != n:
            raise DiffauditError(f"{self.source}: {len(self.captions)} captions for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices) -> "ImageDataset":
        """The examples at ``indices`` (positions), in that order, keeping their keys (lazy images stay
        lazy unless the positions jump between parts often, see :meth:`ShardedImages.take`)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            images=self.images.take(idx) if isinstance(self.images, ShardedImages) else self.images[idx],
            keys=[self.keys[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            source=self.source,
            skipped=list(self.skipped),
            class_names=None if self.class_names is None else list(self.class_names),
        )

    def index_of(self) -> dict[str, int]:
        """Map key -> index."""
        return {k: i for i, k in enumerate(self.keys)}


def concat_datasets(parts: list[ImageDataset], source: str) -> ImageDataset:
    """The examples of ``parts``, one dataset after another, as one dataset named ``source``.

    Keys must stay unique (a part's keys can be prefixed before, as a dataset view's parts are).
    Labels are kept when every part has them under the same class names (else None: an unconditional
    model never reads them; a class-conditional one is then refused for want of labels), captions
    when every part has them.

    Raises:
        DiffauditError: the parts differ in image size or channels (naming --image-size and --mode),
            or a key is in two parts (naming it).
    """
    shapes = {p.image_shape for p in parts}
    if len(shapes) > 1:
        named = ", ".join(f"{p.source}: {'x'.join(map(str, p.image_shape))}" for p in parts)
        raise DiffauditError(f"{source}: its datasets differ in image shape (H x W x C: {named}); give --image-size "
                             "(and --center-crop) for one size, --mode RGB or L for one number of channels")
    seen: dict[str, str] = {}
    for p in parts:
        for k in p.keys:
            if k in seen:
                raise DiffauditError(f"{source}: the key {k!r} is in both {seen[k]} and {p.source}: keys must name one "
                                     "example (give one of them a prefix)")
            seen[k] = p.source
    names = {None if p.class_names is None else tuple(p.class_names) for p in parts}
    labelled = all(p.labels is not None for p in parts) and len(names) == 1
    return ImageDataset(
        images=concat_images([p.images for p in parts], name=source),
        keys=[k for p in parts for k in p.keys],
        labels=np.concatenate([p.labels for p in parts]) if labelled else None,
        captions=[c for p in parts for c in p.captions] if all(p.captions is not None for p in parts) else None,
        source=source,
        skipped=[x for p in parts for x in p.skipped],
        class_names=parts[0].class_names if labelled and parts[0].class_names is not None else None,
    )


def _uint8_images(images: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """``images`` as a tensor, checked to be uint8 (N, H, W, C) with C in (1, 3) as :class:`ImageDataset`
    holds them: float pixels in [0, 1] became almost all -1 in model space, and an (N, C, H, W) array was
    permuted into nonsense, both without an error."""
    t = torch.as_tensor(np.ascontiguousarray(images)) if not isinstance(images, torch.Tensor) else images
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] not in (1, 3):
        raise DiffauditError(f"{what} takes uint8 images of shape (N, H, W, C), channels last with C 1 or 3; got "
                             f"{str(t.dtype).removeprefix('torch.')} of shape {tuple(t.shape)} (float pixels: "
                             "(x * 255).round().astype(np.uint8); channels first: .transpose(0, 2, 3, 1))")
    return t


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1] (the models' pixel range): x / 127.5 - 1.

    Raises :class:`DiffauditError` for any other dtype or layout (:func:`_uint8_images`)."""
    return _uint8_images(images, "to_model_space").permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1] (the distances' pixel range): x / 255.

    Raises :class:`DiffauditError` for any other dtype or layout (:func:`_uint8_images`)."""
    return _uint8_images(images, "to_unit").permute(0, 3, 1, 2).float().div(255.0)


def from_model_space(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded, clipped: (x + 1) * 127.5.

    Raises :class:`DiffauditError` for integer input (uint8 pixels are already images: each became 255)."""
    if not x.is_floating_point() or x.ndim != 4:
        raise DiffauditError(f"from_model_space takes float model-space images (N, C, H, W) in [-1, 1]; got "
                             f"{str(x.dtype).removeprefix('torch.')} of shape {tuple(x.shape)}")
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


#: Where a dataset's captions come from, for the errors of what needs them.
CAPTION_SOURCES = ("a .txt file beside each image of a folder (beach.txt for beach.png), WebDataset shards' .txt "
                   "members, or an .npz's `captions` array")

#: Where a dataset's labels (its classes) come from, for the errors of what needs them.
LABEL_SOURCES = ("one sub-folder per class in a folder (DATA/CLASS/*.png), WebDataset shards' .cls members, an "
                 ".npz's `labels` array, or a built-in dataset (digits, cifar10)")

#: (source, skipped names) already said in this process: a command that loads its data twice says it once.
_SAID: set[tuple[str, tuple[str, ...]]] = set()


def _one_name(path) -> str:
    """``path`` as one name however it is written (absolute, symlinks resolved) where it exists."""
    return os.path.realpath(path) if os.path.exists(str(path)) else str(path)


def say_skipped(dataset: ImageDataset, asked: int | None = None) -> ImageDataset:
    """Say on stderr how many inputs ``--skip-bad`` skipped, naming the first with its reason (once
    per source, however its path is written, and process), and note them for the running command's results
    (:func:`~diffaudit.core.results.note_skipped`); returns ``dataset``. ``asked``: the ``--subset`` size, said
    beside the images loaded when bad ones among those it chose leave fewer (a subset is not topped up)."""
    if dataset.skipped:
        note_skipped(str(dataset.source), dataset.skipped)  # listed in the running command's results
        # a folder named two ways (an audit's stages are given it absolute) is one source
        key = (_one_name(dataset.source), tuple(_one_name(name) for name, _ in dataset.skipped))
        if key not in _SAID:
            _SAID.add(key)
            n = len(dataset.skipped)
            name, reason = dataset.skipped[0]
            fewer = (f" of the {asked:,} --subset chose (not topped up, so the seed's choice stays the same)"
                     if asked is not None and len(dataset) < asked else "")
            stage_line(f"{dataset.source}: --skip-bad skipped {n} bad input{'s' * (n != 1)} (first: {name}: "
                       f"{reason}); {len(dataset):,} image{'' if len(dataset) == 1 else 's'} loaded{fewer}")
    return dataset
