"""``.npz`` datasets: layouts, labels and captions, refusing pickles, bad arrays."""

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset


def test_npz_rgb_with_labels_and_captions(tmp_npz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    path = tmp_npz(images, labels=[3, 1, 4, 1, 5], captions=np.array(["a cat", "ünïcode", "", "x", "y"]))
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.images, images)
    assert ds.keys == [f"npz:{i}" for i in range(5)]
    np.testing.assert_array_equal(ds.labels, [3, 1, 4, 1, 5])
    assert ds.captions[1] == "ünïcode"
    sub = load_dataset(path, subset=2, subset_seed=3)
    idx = [int(k.split(":")[1]) for k in sub.keys]
    assert idx == sorted(idx)
    np.testing.assert_array_equal(sub.images, images[idx])
    assert sub.captions == [ds.captions[i] for i in idx]


def test_npz_gray_3d_bytes_captions_rgba_and_uint16(tmp_npz):
    gray = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    ds = load_dataset(tmp_npz(gray, captions=np.array([b"one", b"two"])))
    assert ds.images.shape == (2, 3, 3, 1) and ds.captions == ["one", "two"]
    rgba = np.zeros((1, 2, 2, 4), np.uint8)
    rgba[..., :3] = 7
    rgba[..., 3] = 255
    assert np.all(load_dataset(tmp_npz(rgba, name="rgba.npz")).images == 7)
    deep = np.array([[[65535, 25700]]], dtype=np.uint16)
    np.testing.assert_array_equal(load_dataset(tmp_npz(deep, name="deep.npz")).images[0, 0, :, 0], [255, 100])
    big_endian = deep.astype(">u2")  # saved by a big-endian machine, or written with an explicit order
    np.testing.assert_array_equal(load_dataset(tmp_npz(big_endian, name="be.npz")).images[0, 0, :, 0], [255, 100])


def test_npz_object_array_refused_without_unpickling(tmp_npz):
    images = np.zeros((2, 2, 2), np.uint8)
    path = tmp_npz(images, captions=np.array(["a", None], dtype=object))
    with pytest.raises(DiffauditError, match=r"data\.npz: array 'captions' is an object array.*never loads"):
        load_dataset(path)


@pytest.mark.parametrize("kwargs,match", [
    ({"images": np.zeros((2, 2, 2), np.float32)}, r"`images` must be uint8"),
    ({"images": np.zeros((2, 2), np.uint8)}, r"`images` must have shape"),
    ({"images": np.zeros((2, 2, 2, 2), np.uint8)}, r"`images` must have shape"),
    ({"images": np.zeros((2, 2, 2), np.uint8), "labels": [1, 2, 3]}, r"`labels` must be integers of shape \(2,\)"),
    ({"images": np.zeros((2, 2, 2), np.uint8), "labels": [0, -1]}, r"`labels` must be >= 0"),
    ({"images": np.zeros((2, 2, 2), np.uint8), "captions": [1, 2]}, r"`captions` must be strings"),
    ({"images": np.zeros((0, 2, 2), np.uint8)}, r"the dataset is empty"),
    ({"images": np.zeros((4, 0, 0), np.uint8)}, r"images have no pixels \(height x width 0x0\)"),
    ({"images": np.zeros((4, 3, 0, 3), np.uint8)}, r"images have no pixels"),
])
def test_npz_bad_arrays(tmp_npz, kwargs, match):
    with pytest.raises(DiffauditError, match=match):
        load_dataset(tmp_npz(**kwargs))


def test_npz_missing_images_truncated_and_absent(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, pixels=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DiffauditError, match=r"other\.npz: no `images` array \(it holds pixels\)"):
        load_dataset(p)
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((50, 8, 8), np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DiffauditError, match=r"cut\.npz"):
        load_dataset(cut)
    with pytest.raises(DiffauditError, match=r"gone\.npz does not exist"):
        load_dataset(tmp_path / "gone.npz")


def test_samples_npz_prompts_as_bytes_or_text(tmp_path):
    from diffaudit.store.read import read_samples

    path = tmp_path / "s.npz"
    images = np.zeros((3, 4, 4, 3), np.uint8)
    np.savez(path, images=images, prompts=np.array(["a cat", "a dog", "café".encode()], dtype="S"))
    assert read_samples(str(path)).captions == ["a cat", "a dog", "café"]  # not "b'a cat'"
    np.savez(path, images=images, prompts=np.array(["a cat", "a dog", "café"]))
    assert read_samples(str(path)).captions == ["a cat", "a dog", "café"]
    with pytest.raises(DiffauditError, match="--subset with per-image prompts"):
        read_samples(str(path), subset=2)
    np.savez(path, images=images, prompts=np.array(["a", "b"]))
    with pytest.raises(DiffauditError, match=r"`prompts` must be strings of shape \(3,\)"):
        read_samples(str(path))
    np.savez(path, images=images, prompts=np.arange(3))
    with pytest.raises(DiffauditError, match="`prompts` must be strings"):
        read_samples(str(path))
