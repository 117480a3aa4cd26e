"""``dataset_digest``: the same examples give the same digest however they are stored; any change differs.
``shared_images``: images one dataset holds pixel for pixel."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from diffaudit.data import load_dataset
from diffaudit.data import digest as digest_module
from diffaudit.data.decoded import load_dataset_to_disk
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.digest import dataset_digest, image_digests, shared_images


@pytest.fixture()
def npz(tmp_path):
    ds = load_dataset("digits", subset=50)
    path = tmp_path / "d.npz"
    np.savez(path, images=ds.images, labels=ds.labels)
    return path


def test_same_in_memory_memory_mapped_and_in_any_slice_size(npz, tmp_path, monkeypatch):
    mem = load_dataset(str(npz))
    disk = load_dataset_to_disk(str(npz), tmp_path / "cache", part_bytes=7 * 8 * 8 * 3)  # 7 images per part: 8 parts
    assert len(list(disk.images.parts())) == 8
    want = dataset_digest(mem)
    assert dataset_digest(disk) == want
    monkeypatch.setattr(digest_module, "DIGEST_ROWS", 3)  # slices that straddle the parts
    assert dataset_digest(disk) == dataset_digest(mem) == want


def test_the_loss_cache_names_keep_their_digest(npz):
    """The loss cache names its folders by this digest: its definition is the shape, the pixels, the
    keys and the labels, in that order (losses cached by earlier versions stay valid)."""
    ds = load_dataset(str(npz))
    h = hashlib.sha256(str(ds.images.shape).encode())
    h.update(ds.images.tobytes())
    h.update("\x00".join(ds.keys).encode("utf-8"))
    h.update(np.asarray(ds.labels, dtype=np.int64).tobytes())
    assert dataset_digest(ds) == h.hexdigest()[:16]


def test_indices_digest_the_selected_examples_in_order(npz):
    ds = load_dataset(str(npz))
    idx = [7, 3, 41]
    assert dataset_digest(ds, idx) == dataset_digest(ds.subset(idx))
    assert dataset_digest(ds, idx) != dataset_digest(ds, [3, 7, 41])
    assert dataset_digest(ds, np.arange(len(ds))) == dataset_digest(ds)


def test_any_pixel_key_or_label_changes_it(npz):
    ds = load_dataset(str(npz))
    want = dataset_digest(ds)
    pixel = load_dataset(str(npz))
    pixel.images[49, 7, 7, 0] ^= 1
    key = load_dataset(str(npz))
    key.keys[0] = "other"
    label = load_dataset(str(npz))
    label.labels[0] += 1
    unlabelled = load_dataset(str(npz))
    unlabelled.labels = None
    captioned = load_dataset(str(npz))
    captioned.captions = ["a digit"] * len(captioned)
    recaptioned = load_dataset(str(npz))
    recaptioned.captions = ["a digit"] * (len(recaptioned) - 1) + ["another"]
    got = [dataset_digest(d) for d in (pixel, key, label, unlabelled, captioned, recaptioned)]
    assert want not in got and len(set(got)) == 6


def test_shared_images_are_found_by_pixels_not_keys():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    b = np.concatenate([a[[4]], rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8), a[[1]], a[[4]]])
    b[2] = a[3]
    b[2, 0, 0, 0] ^= 1  # one bit apart: another image
    ours = ImageDataset(a, [f"x:{i}" for i in range(6)])
    theirs = ImageDataset(b, [f"x:{i}" for i in range(5)])  # the same keys name other pixels
    assert shared_images(ours, theirs) == [(1, 3), (4, 0)]  # the first of equal images
    assert shared_images(theirs, ours) == [(0, 4), (3, 1), (4, 4)]
    assert shared_images(ours, ImageDataset(a[:, :2], ours.keys)) == []  # other sizes
    assert len(set(image_digests(a))) == 6 and image_digests(b)[0] == image_digests(b)[4]
