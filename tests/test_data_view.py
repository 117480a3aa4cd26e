"""Dataset views: a saved key selection loads as a dataset with the original keys."""

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.view import save_view


def test_view_selects_keys_in_order(tmp_path, digits):
    keys = [digits.keys[5], digits.keys[2], digits.keys[9]]
    path = save_view(tmp_path / "sel.view.json", "digits", {}, keys)
    ds = load_dataset(str(path))
    assert ds.keys == keys
    assert np.array_equal(ds.images, digits.images[[5, 2, 9]])
    assert ds.labels.tolist() == digits.labels[[5, 2, 9]].tolist()


def test_view_keeps_its_loader_options(tmp_path):
    base = load_dataset("digits", subset=20, subset_seed=3, image_size=16)
    path = save_view(tmp_path / "v.view.json", "digits", {"subset": 20, "subset_seed": 3, "image_size": 16}, base.keys[:4])
    ds = load_dataset(str(path))
    assert ds.image_shape == (16, 16, 1) and np.array_equal(ds.images, base.images[:4])
    # per-image options replace the view's (same examples, other pixels); selection options may not differ
    big = load_dataset(str(path), image_size=32, mode="RGB")
    assert big.keys == ds.keys and big.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(big.images, load_dataset("digits", subset=20, subset_seed=3, image_size=32,
                                                           mode="RGB").images[:4])
    with pytest.raises(DiffauditError, match="its own loader options; do not pass --skip-bad"):
        load_dataset(str(path), skip_bad=True)


def test_view_errors(tmp_path):
    path = save_view(tmp_path / "v.view.json", "digits", {}, ["digits:0", "nope"])
    with pytest.raises(DiffauditError, match="nope"):
        load_dataset(str(path))
    bad = tmp_path / "bad.view.json"
    bad.write_text('{"spec": "digits"}')
    with pytest.raises(DiffauditError, match="not a dataset view"):
        load_dataset(str(bad))
    # a part's keys carry its prefix: a key written as the dataset names it is said so
    prefixed = tmp_path / "p.view.json"
    prefixed.write_text('{"view": 1, "parts": [{"spec": "digits", "prefix": "held:", "keys": ["digits:3"]}]}')
    with pytest.raises(DiffauditError, match=r"p.view.json: 1 key is not in digits \(first: 'digits:3'\); a part's keys "
                                             r"carry its prefix: 'held:digits:3'"):
        load_dataset(str(prefixed))


def test_view_of_a_relative_path_loads_from_any_directory(tmp_path, tmp_npz, monkeypatch):
    images = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    tmp_npz(images, name="d6.npz")
    monkeypatch.chdir(tmp_path)
    view = save_view(tmp_path / "out" / "sel.view.json", "d6.npz", {}, ["npz:4", "npz:1"])  # as `audit --data d6.npz`
    monkeypatch.chdir("/")
    assert np.array_equal(load_dataset(str(view)).images, images[[4, 1]])
    # a view written by hand with a path relative to its own folder
    (tmp_path / "out" / "hand.view.json").write_text('{"view": 1, "spec": "../d6.npz", "options": {}, "keys": ["npz:2"]}')
    assert np.array_equal(load_dataset(str(tmp_path / "out" / "hand.view.json")).images, images[[2]])


def test_view_of_two_datasets_prefixes_keys_and_keeps_the_rows(tmp_path, cifar10_root):
    """CIFAR-10's train and test splits name images alike (`deer_0042` in both): a part's prefix keeps them apart."""
    from diffaudit.data.view import ViewPart, save_parts_view

    opts = {"subset": 60, "cifar_root": str(cifar10_root), "image_size": 8}
    train = load_dataset("cifar10", **opts)
    test = load_dataset("cifar10-test", cifar_root=str(cifar10_root), image_size=8)
    assert set(train.keys) & set(test.keys)  # the reason for prefixes: the splits share names (class_0000 to _0999)
    path = save_parts_view(tmp_path / "both.view.json", [
        ViewPart("cifar10", opts), ViewPart("cifar10-test", {"cifar_root": str(cifar10_root), "image_size": 8},
                                            keys=["test:" + k for k in test.keys[:5]], prefix="test:")])
    both = load_dataset(str(path))
    assert both.keys == train.keys + ["test:" + k for k in test.keys[:5]]
    assert np.array_equal(both.images, np.concatenate([train.images, test.images[:5]]))
    assert both.labels.tolist() == train.labels.tolist() + test.labels[:5].tolist()
    assert both.source == str(path)
    # --subset draws from the whole view, --image-size replaces every part's
    assert len(load_dataset(str(path), subset=7)) == 7 and load_dataset(str(path), image_size=4).image_shape == (4, 4, 3)
    unprefixed = save_parts_view(tmp_path / "clash.view.json", [
        ViewPart("cifar10", opts), ViewPart("cifar10-test", {"cifar_root": str(cifar10_root), "image_size": 8})])
    with pytest.raises(DiffauditError, match=r"the key '[a-z]+_0\d{3}' is in both cifar10 and cifar10-test: .*\(give one of them a prefix\)"):
        load_dataset(str(unprefixed))


def test_view_of_two_datasets_errors_and_lazy_parts(tmp_path):
    from diffaudit.data.decoded import load_dataset_to_disk
    from diffaudit.data.sharded import ShardedImages
    from diffaudit.data.view import ViewPart, read_view, save_parts_view

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8), labels=np.arange(6))
    np.savez(tmp_path / "b.npz", images=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8))  # no labels
    np.savez(tmp_path / "c.npz", images=rng.integers(0, 256, (4, 6, 6, 1), dtype=np.uint8))
    path = save_parts_view(tmp_path / "ab.view.json", [ViewPart(str(tmp_path / "a.npz"), {}),
                                                      ViewPart(str(tmp_path / "b.npz"), {}, prefix="b/")])
    ab = load_dataset(str(path))
    assert ab.keys[5:7] == ["npz:5", "b/npz:0"] and ab.labels is None  # labels only when every part has them
    decoded = load_dataset_to_disk(str(path), tmp_path / "cache")  # memory-mapped parts stay lazy, one after another
    assert isinstance(decoded.images, ShardedImages) and decoded.keys == ab.keys
    assert np.array_equal(np.asarray(decoded.images), ab.images)
    assert [p.prefix for p in read_view(path)] == ["", "b/"]
    sizes = save_parts_view(tmp_path / "ac.view.json", [ViewPart(str(tmp_path / "a.npz"), {}),
                                                       ViewPart(str(tmp_path / "c.npz"), {}, prefix="c/")])
    with pytest.raises(DiffauditError, match=r"differ in image shape .*8x8x1.*6x6x1.*--image-size"):
        load_dataset(str(sizes))
    assert load_dataset(str(sizes), image_size=8).image_shape == (8, 8, 1)
    bad = tmp_path / "bad.view.json"
    for text, message in (('{"view": 1, "parts": []}', "non-empty list"),
                          ('{"view": 1, "parts": [{"spec": "digits", "prefix": 3}]}', "part 0: prefix must be a string"),
                          ('{"view": 1, "parts": [{"spec": "x.view.json"}]}', "part 0: a view may not point to another view"),
                          ('{"view": 1, "parts": [{"spec": "digits", "keys": "digits:0"}]}', "keys must be a list"),
                          # a typo in an option was a TypeError from the loader
                          ('{"view": 1, "parts": [{"spec": "digits", "options": {"bogus": 1}}]}',
                           r"part 0: unknown option 'bogus' \(a view's options are image_size, "),
                          ('{"view": 2, "parts": [{"spec": "digits"}]}', "a dataset view of version 2, which this"),
                          # the loader's own refusal says which view and which part
                          ('{"view": 1, "parts": [{"spec": "digits"}, {"spec": "nonexist", "prefix": "n:"}]}',
                           r"bad.view.json: part 1 \(nonexist\): ")):
        bad.write_text(text)
        with pytest.raises(DiffauditError, match=message):
            load_dataset(str(bad))
