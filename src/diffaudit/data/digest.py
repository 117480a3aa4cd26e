"""``dataset_digest``: a short fingerprint of a loaded dataset's pixels, keys and labels; ``image_digests`` and
``shared_images``: which images of one dataset another holds pixel for pixel.

The digest is recorded wherever a result must not outlive the data it came from: the settings of every command
that reads ``--data`` (a resume after the files were rewritten in place is a settings mismatch, not
a silent reuse of cached neighbours, losses, models or prompts) and the loss cache's folder names. A path
names a dataset; only its contents say whether it is still the same one.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from diffaudit.core.identity import text_bytes
from diffaudit.data.dataset import ImageDataset

#: Rows hashed at a time: a memory-mapped dataset is read in slices of this many images, never whole.
DIGEST_ROWS = 4096


def dataset_digest(dataset: ImageDataset, indices: Sequence[int] | np.ndarray | None = None) -> str:
    """SHA-256 (16 hex) of a dataset's image shape, pixels (uint8, row by row), keys, labels and captions.

    Args:
        dataset: images (N, H, W, C) uint8, in memory or a memory-mapped ShardedImages (streamed in
            slices of :data:`DIGEST_ROWS` images, so memory stays bounded).
        indices: only these examples, in this order (e.g. one model's training set); None: all.

    Returns:
        16 lowercase hex characters. The same for the same examples however they are stored; any
        changed pixel, key, label, caption or order changes it. A dataset without captions hashes
        exactly as before captions were included (loss caches named by it stay valid).
    """
    images = dataset.images
    rows = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    h = hashlib.sha256()
    h.update(str((len(rows),) + tuple(images.shape[1:])).encode())
    contiguous = indices is None
    for lo in range(0, len(rows), DIGEST_ROWS):
        block = images[lo:lo + DIGEST_ROWS] if contiguous else images[rows[lo:lo + DIGEST_ROWS]]
        h.update(np.ascontiguousarray(block, dtype=np.uint8).tobytes())
    h.update(text_bytes("\x00".join(dataset.keys[int(i)] for i in rows)))
    if dataset.labels is not None:
        h.update(np.asarray(dataset.labels, dtype=np.int64)[rows].tobytes())
    if dataset.captions is not None:  # prompts, and the conditioning of latent-diffusion losses
        h.update(b"\x00captions\x00" + text_bytes("\x00".join(str(dataset.captions[int(i)]) for i in rows)))
    return h.hexdigest()[:16]


def image_digests(images) -> list[bytes]:
    """One BLAKE2b digest (16 bytes) per image of uint8 (N, H, W, C), in memory or a ShardedImages (read
    in slices of :data:`DIGEST_ROWS`): equal digests are the same pixels, whatever the images' keys."""
    out: list[bytes] = []
    for lo in range(0, len(images), DIGEST_ROWS):
        block = np.ascontiguousarray(images[lo:lo + DIGEST_ROWS], dtype=np.uint8)
        out.extend(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in block)
    return out


def identical_groups(dataset: ImageDataset) -> list[np.ndarray]:
    """The examples ``dataset`` holds more than once: one int64 array of indices (ascending) per image that
    occurs two or more times, pixel for pixel and with the same label (under other keys); [] when none."""
    labels = dataset.labels
    where: dict[tuple[bytes, int], list[int]] = {}
    for i, d in enumerate(image_digests(dataset.images)):
        where.setdefault((d, -1 if labels is None else int(labels[i])), []).append(i)
    return [np.array(v, dtype=np.int64) for v in where.values() if len(v) > 1]


def shared_images(dataset: ImageDataset, others: ImageDataset) -> list[tuple[int, int]]:
    """(index in ``dataset``, index in ``others``) of every image of ``dataset`` that ``others`` holds pixel
    for pixel (the first such image of ``others``), in ``dataset``'s order; images of other sizes share none."""
    if dataset.image_shape != others.image_shape:
        return []
    where: dict[bytes, int] = {}
    for j, d in enumerate(image_digests(others.images)):
        where.setdefault(d, j)
    return [(i, where[d]) for i, d in enumerate(image_digests(dataset.images)) if d in where]
