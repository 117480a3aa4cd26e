"""Image folders: flat and class layouts, keys, order, empty and ambiguous folders, sizes, crop/resize."""

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset


def img(value, h=8, w=8, c=3):
    return np.full((h, w, c), value, dtype=np.uint8) if c > 1 else np.full((h, w), value, dtype=np.uint8)


def test_flat_folder_sorted_keys_ignores_other_files(write_images):
    root = write_images({"b.png": img(20), "a.jpg": img(10), "c.BMP": img(30), "z.webp": img(40), "t.tif": img(50)})
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    ds = load_dataset(root)
    assert ds.keys == ["a.jpg", "b.png", "c.BMP", "t.tif", "z.webp"]
    assert ds.labels is None and ds.class_names is None and ds.skipped == []
    assert ds.images.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(ds.images[[1, 2, 3], 0, 0, 0], [20, 30, 50])  # lossless formats exact
    assert abs(int(ds.images[0, 0, 0, 0]) - 10) <= 2  # JPEG
    assert ds.source == str(root)


def test_class_subfolders_give_labels_and_posix_keys(write_images):
    root = write_images({
        "dog/2.png": img(1), "dog/1.png": img(2), "cat/x.png": img(3), "cat/deep/y.png": img(4), "cat-b/z.png": img(5),
    })
    (root / "empty_class").mkdir()
    ds = load_dataset(root)
    assert ds.class_names == ["cat", "cat-b", "dog"]
    assert ds.keys == ["cat/deep/y.png", "cat/x.png", "cat-b/z.png", "dog/1.png", "dog/2.png"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [4, 3, 5, 2, 1])
    again = load_dataset(root)
    assert again.keys == ds.keys and np.array_equal(again.images, ds.images)


def test_mixed_layout_is_an_error(write_images):
    root = write_images({"top.png": img(1), "cls/a.png": img(2)})
    with pytest.raises(DiffauditError, match=r"mixes images at the top level \(top\.png\).*cls/a\.png"):
        load_dataset(root)


def test_a_folder_of_shards_is_said_to_be_given_by_their_paths(tmp_path):
    """`--data FOLDER_OF_SHARDS` said only "the folder holds no images"."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-000000.tar").write_bytes(b"")
    with pytest.raises(DiffauditError, match=r"It holds 1 tar shard \(part-000000.tar, ...\): give WebDataset shards by a path"):
        load_dataset(shards)


def test_empty_folder_and_store_hint(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DiffauditError, match=r"empty: the folder holds no images"):
        load_dataset(tmp_path / "empty")
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    with pytest.raises(DiffauditError, match="sample store"):
        load_dataset(store)


def test_a_url_is_refused_with_what_to_do_not_looked_for_on_disk(tmp_path):
    """A URL as --data (a dataset on S3, say) is said to need a local or mounted path, not reported as a
    missing "s3:/bucket/..." shard of this disk."""
    from diffaudit.data.decoded import load_dataset_to_disk

    for spec in ("s3://bucket/train-{000000..000002}.tar", "gs://b/images", "https://host/x.npz", "s3://b/x.view.json"):
        for load in (load_dataset, lambda s: load_dataset_to_disk(s, tmp_path / "cache")):
            with pytest.raises(DiffauditError, match="read from a local or mounted path, not a URL") as err:
                load(spec)
            assert str(err.value).startswith(spec + ":")
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4, 1), dtype=np.uint8))
    for url in (f"file://{tmp_path}/x.npz", f"file://localhost{tmp_path}/x.npz"):
        with pytest.raises(DiffauditError, match=f"given by its path, not a file:// URL \\({tmp_path}/x.npz\\)"):
            load_dataset(url)
    with pytest.raises(DiffauditError, match="given by its path, not a file:// URL$"):
        load_dataset("file://otherhost/x.npz")


def test_unknown_spec_and_non_dataset_file(tmp_path):
    with pytest.raises(DiffauditError, match=r"dataset 'nope-xyz' not found: expected a built-in name"):
        load_dataset("nope-xyz")
    f = tmp_path / "file.csv"
    f.write_text("1,2")
    with pytest.raises(DiffauditError, match=r"file\.csv: not a dataset"):
        load_dataset(f)


def test_mixed_sizes_name_two_files_and_resize_fixes_them(write_images):
    root = write_images({"a.png": img(9, 8, 8), "b.png": img(9, 8, 8), "c.png": img(9, 12, 10)})
    with pytest.raises(DiffauditError, match=r"a\.png is 8x8 but .*c\.png is 10x12.*--image-size"):
        load_dataset(root)
    ds = load_dataset(root, image_size=4)
    assert ds.images.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(ds.images, 9)  # a constant image stays constant through bilinear resizing


def test_center_crop_then_resize(write_images):
    a = np.zeros((6, 10), np.uint8)
    a[1:5, 3:7] = 200  # the central 4x4 square of a 6x10 image (offsets (6-4)//2=1, (10-4)//2=3)
    root = write_images({"a.png": a})
    crop = load_dataset(root, center_crop=4)
    assert crop.images.shape == (1, 4, 4, 1)
    np.testing.assert_array_equal(crop.images, 200)
    both = load_dataset(root, center_crop=4, image_size=2)
    assert both.images.shape == (1, 2, 2, 1) and np.all(both.images == 200)
    with pytest.raises(DiffauditError, match=r"a\.png: cannot centre-crop 7x7 from a 10x6 image"):
        load_dataset(root, center_crop=7)
    with pytest.raises(DiffauditError, match=r"--image-size must be a number of pixels in \[1, 4096\]"):
        load_dataset(root, image_size=0)


def test_subset_of_folder_applies_before_decoding(write_images):
    files = {f"{i:02d}.png": img(i) for i in range(20)}
    files["07.png"] = b"corrupt"
    root = write_images(files)
    # a subset that avoids the corrupt file never decodes it
    from diffaudit.data.subset import choose_subset

    seed = next(s for s in range(100) if 7 not in choose_subset(20, 5, s))
    ds = load_dataset(root, subset=5, subset_seed=seed)
    assert len(ds) == 5 and ds.skipped == []
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [int(k[:2]) for k in ds.keys])


def test_folder_names_with_braces_are_folders(tmp_path, monkeypatch):
    from PIL import Image

    from diffaudit.data.shards import is_shard_spec

    for name in ("run{1}", "run{1,2}", "a..b{x}"):
        folder = tmp_path / name
        folder.mkdir()
        Image.fromarray(img(10)).save(folder / "a.png")
        sub = tmp_path / "sub"
        sub.mkdir(exist_ok=True)
        monkeypatch.chdir(sub)
        assert load_dataset(f"../{name}").keys == ["a.png"]  # relative, with '..': still the folder
    assert is_shard_spec("s-{000000..000004}.tar") and is_shard_spec("s-{a,b}.tar") and is_shard_spec("x.tar.gz")
    assert not is_shard_spec(str(tmp_path / "run{1}"))


def test_a_sample_store_given_as_data_is_refused_even_with_images_exported_into_it(tmp_path):
    """`verify --samples gens --data gens`, with `export --out gens/png` done before, read the exported PNGs as a
    training set and reported every generation as an extracted copy of itself. A store is never a dataset."""
    from PIL import Image

    from diffaudit.core.errors import DiffauditError
    from diffaudit.data import load_dataset

    store = tmp_path / "gens"
    (store / "shards").mkdir(parents=True)
    (store / "manifest.json").write_text("{}")
    (store / "png").mkdir()
    Image.new("L", (8, 8)).save(store / "png" / "p0-i0.png")
    with pytest.raises(DiffauditError, match="gens is a sample store .*give it as --samples"):
        load_dataset(str(store))
    assert len(load_dataset(str(store / "png"))) == 1  # the exported images themselves are a folder like any
