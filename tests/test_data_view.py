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
    with pytest.raises(DiffauditError, match="its own loader options; do not pass skip_bad"):
        load_dataset(str(path), skip_bad=True)


def test_view_errors(tmp_path):
    path = save_view(tmp_path / "v.view.json", "digits", {}, ["digits:0", "nope"])
    with pytest.raises(DiffauditError, match="nope"):
        load_dataset(str(path))
    bad = tmp_path / "bad.view.json"
    bad.write_text('{"spec": "digits"}')
    with pytest.raises(DiffauditError, match="not a dataset view"):
        load_dataset(str(bad))


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
