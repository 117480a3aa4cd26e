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
