"""load_dataset_to_disk: a dataset decoded once into .npy parts equals the in-memory load; reuse,
resume after an interruption, mixed channels, skipped files, views, lazy subsets, and sources
rewritten in place."""

from __future__ import annotations

import os

import numpy as np
import pytest

import diffaudit.data.decoded as decoded
from diffaudit.core.errors import DiffauditError
from diffaudit.data import ShardedImages, load_dataset
from diffaudit.data.decoded import load_dataset_to_disk
from diffaudit.data.view import save_view


def assert_same(a, b):
    assert isinstance(b.images, ShardedImages)
    assert a.keys == b.keys and a.source == b.source and a.skipped == b.skipped and a.class_names == b.class_names
    np.testing.assert_array_equal(a.images, np.asarray(b.images))
    assert (a.labels is None) == (b.labels is None) and (a.labels is None or np.array_equal(a.labels, b.labels))
    assert a.captions == b.captions


def test_digits_in_parts_equal_memory_and_are_reused(tmp_path, monkeypatch):
    want = load_dataset("digits", subset=700, subset_seed=3)
    got = load_dataset_to_disk("digits", tmp_path, subset=700, subset_seed=3, part_bytes=192 * 100)
    assert_same(want, got)
    assert len(got.images._parts) == 7  # 100 images of 8x8 per part
    monkeypatch.setattr(decoded, "iter_decoded", lambda *a, **k: pytest.fail("a finished decode is decoded again"))
    assert_same(want, load_dataset_to_disk("digits", tmp_path, subset=700, subset_seed=3, part_bytes=192 * 100))
    other = tmp_path / "other"
    with pytest.raises(BaseException, match="decoded again"):  # other options: another folder, decoded anew
        load_dataset_to_disk("digits", other, subset=700, subset_seed=4)


def test_cifar_resized_equals_memory(cifar10_root, tmp_path):
    opts = dict(subset=300, subset_seed=1, image_size=16, cifar_root=cifar10_root)
    assert_same(load_dataset("cifar10", **opts), load_dataset_to_disk("cifar10", tmp_path, part_bytes=16 * 16 * 3 * 64, **opts))


def test_interrupted_decode_resumes_after_its_last_part(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = decoded.save_npy_atomic

    def dies_on_the_fourth(path, array):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(path, array)

    monkeypatch.setattr(decoded, "save_npy_atomic", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        load_dataset_to_disk("digits", tmp_path, part_bytes=192 * 300)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    written = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.npy")}
    assert sorted(written) == ["part-000000.npy", "part-000001.npy", "part-000002.npy"]
    assert not (folder / "done.json").exists()

    seen = []
    real_iter = decoded.iter_decoded
    monkeypatch.setattr(decoded, "iter_decoded", lambda entries, *a, **k: (seen.append(len(entries)), real_iter(entries, *a, **k))[1])
    got = load_dataset_to_disk("digits", tmp_path, part_bytes=192 * 300)
    assert seen == [1797 - 900]  # only the entries after the three finished parts
    assert_same(load_dataset("digits"), got)
    assert {p: folder.joinpath(p).stat().st_mtime_ns for p in written} == written  # finished parts untouched


def test_gray_parts_become_rgb_when_colour_follows_and_skips_are_recorded(write_images, tmp_path):
    files = {f"{i:02d}.png": np.full((8, 8), 10 * i, dtype=np.uint8) for i in range(6)}
    files["07.png"] = b"corrupt"
    files["09.png"] = np.full((8, 8, 3), (99, 30, 200), dtype=np.uint8)  # colour (an equal-channel RGB file is gray)
    root = write_images(files)
    with pytest.raises(DiffauditError, match="07.png"):
        load_dataset_to_disk(root, tmp_path / "c")
    want = load_dataset(root, skip_bad=True)
    got = load_dataset_to_disk(root, tmp_path / "c", skip_bad=True, part_bytes=192 * 2)
    assert got.images.shape == (7, 8, 8, 3) and len(got.skipped) == 1
    assert_same(want, got)
    assert_same(load_dataset(root, skip_bad=True, mode="L"), load_dataset_to_disk(root, tmp_path / "c", skip_bad=True, mode="L"))


def test_view_and_fresh(tmp_path):
    view = save_view(tmp_path / "members.view.json", "digits", {"subset": 50, "subset_seed": 2},
                     load_dataset("digits", subset=50, subset_seed=2).keys[10:30])
    assert_same(load_dataset(view), load_dataset_to_disk(view, tmp_path / "cache", part_bytes=192 * 8))
    assert_same(load_dataset(view, image_size=4), load_dataset_to_disk(view, tmp_path / "small", image_size=4))
    (folder,) = (tmp_path / "cache").iterdir()
    (folder / "stale").write_text("from before")
    load_dataset_to_disk(view, tmp_path / "cache", part_bytes=192 * 8)
    assert (folder / "stale").exists()
    assert_same(load_dataset(view), load_dataset_to_disk(view, tmp_path / "cache", fresh=True, part_bytes=192 * 8))
    assert not (folder / "stale").exists()  # fresh decodes into an emptied folder


def test_subset_of_lazy_images_stays_lazy_unless_shuffled(tmp_path):
    ds = load_dataset_to_disk("digits", tmp_path, part_bytes=192 * 100)
    full = np.asarray(ds.images)
    pick = np.array([3, 4, 99, 100, 101, 250, 1796])
    sub = ds.subset(pick)
    assert isinstance(sub.images, ShardedImages) and len(sub.images._parts) == 4
    np.testing.assert_array_equal(np.asarray(sub.images), full[pick])
    np.testing.assert_array_equal(sub.images[[6, 0, 2]], full[pick[[6, 0, 2]]])
    assert sub.keys == [ds.keys[i] for i in pick]
    nested = sub.subset([1, 2, 5])
    np.testing.assert_array_equal(np.asarray(nested.images), full[pick[[1, 2, 5]]])
    few_runs = ds.subset([5, 1, 9, 150, 120, 3])  # any order inside a part: still lazy, 3 parts
    assert isinstance(few_runs.images, ShardedImages) and len(few_runs.images._parts) == 3
    np.testing.assert_array_equal(np.asarray(few_runs.images), full[[5, 1, 9, 150, 120, 3]])
    repeats = np.r_[np.arange(1797), np.repeat([7, 500], 150)]  # rows repeated after the rest
    repeated = ds.images.take(repeats)
    assert isinstance(repeated, ShardedImages) and len(repeated) == 1797 + 300
    assert max(len(part) for part in repeated.parts()) <= 100  # no part longer than its source part
    np.testing.assert_array_equal(np.asarray(repeated), full[repeats])
    jumpy = np.random.default_rng(0).permutation(1797)[:400]  # a shuffle jumps between parts at almost every row
    shuffled = ds.subset(jumpy)
    assert isinstance(shuffled.images, np.ndarray)
    np.testing.assert_array_equal(shuffled.images, full[jumpy])
    whole_part = ds.subset(np.arange(100, 200))
    assert whole_part.images._parts == [ds.images._parts[1]]  # a whole part is kept as the file


@pytest.mark.parametrize("kind", ["folder", "shard", "npz"])
def test_source_rewritten_in_place_is_decoded_again(kind, write_images, write_tar, encode_image, tmp_npz, tmp_path):
    """Same keys, new pixels: the cache notices (file size / modification time) and replaces the old decode."""
    def write(value):
        images = [np.full((8, 8, 3), value + i, dtype=np.uint8) for i in range(5)]
        if kind == "folder":
            return write_images({f"{i}.png": im for i, im in enumerate(images)})
        if kind == "shard":
            return write_tar(tmp_path / "s.tar", [(f"k{i}.png", encode_image(im)) for i, im in enumerate(images)])
        return tmp_npz(np.stack(images))

    cache = tmp_path / "cache"
    spec = write(10)
    first = load_dataset_to_disk(spec, cache, part_bytes=192 * 2)
    assert_same(load_dataset(spec), first)
    (old,) = cache.iterdir()
    spec = write(200)  # same names, same keys, other pixels
    for f in (spec.iterdir() if spec.is_dir() else [spec]):  # a later modification time, whatever the clock's resolution
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    got = load_dataset_to_disk(spec, cache, part_bytes=192 * 2)
    assert_same(load_dataset(spec), got)
    assert int(np.asarray(got.images).min()) == 200
    assert [p.name for p in cache.iterdir()] != [old.name] and len(list(cache.iterdir())) == 1  # the old decode is gone
    np.testing.assert_array_equal(np.asarray(load_dataset_to_disk(spec, cache).images), np.asarray(got.images))


def test_an_edited_caption_beside_an_image_is_decoded_again(write_images, tmp_path):
    """An image folder's captions are .txt files beside its images: editing one is other data, never the
    cached caption (the pixels' files are untouched)."""
    root = write_images({f"{i}.png": np.full((8, 8, 3), i, dtype=np.uint8) for i in range(3)})
    for i in range(3):
        (root / f"{i}.txt").write_text(f"photo {i}", encoding="utf-8")
    cache = tmp_path / "cache"
    assert load_dataset_to_disk(root, cache).captions == ["photo 0", "photo 1", "photo 2"]
    caption = root / "1.txt"
    caption.write_text("a new caption", encoding="utf-8")
    st = caption.stat()
    os.utime(caption, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # whatever the clock's resolution
    got = load_dataset_to_disk(root, cache)
    assert got.captions == ["photo 0", "a new caption", "photo 2"] == load_dataset(root).captions
    assert len(list(cache.iterdir())) == 1  # the old decode is gone


def test_one_relative_name_in_two_folders_is_two_datasets(write_images, tmp_path, monkeypatch):
    """`--data train` run from two folders: two decodes side by side, neither deleting the other's."""
    cache = tmp_path / "cache"
    for parent, value in (("a", 10), ("b", 200)):
        (tmp_path / parent).mkdir()
        write_images({"x.png": np.full((4, 4, 3), value, np.uint8)}, root=tmp_path / parent / "train")
    seen = {}
    for parent in ("a", "b", "a", "b"):
        monkeypatch.chdir(tmp_path / parent)
        ds = load_dataset_to_disk("train", cache)
        seen.setdefault(parent, int(np.asarray(ds.images)[0, 0, 0, 0]))
        assert int(np.asarray(ds.images)[0, 0, 0, 0]) == seen[parent]
    assert seen == {"a": 10, "b": 200} and len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_another_pillow_decodes_again(tmp_path, monkeypatch):
    import PIL

    load_dataset_to_disk("digits", tmp_path, subset=50)
    monkeypatch.setattr(PIL, "__version__", "0.0-other")
    calls = []
    real = decoded.iter_decoded
    monkeypatch.setattr(decoded, "iter_decoded", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    load_dataset_to_disk("digits", tmp_path, subset=50)
    assert calls and len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1  # the older decode is removed
