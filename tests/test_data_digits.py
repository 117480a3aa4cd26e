"""The built-in digits: real values, keys, labels, upsampling, subsets."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.subset import choose_subset


def test_digits_shape_values_keys(digits):
    ref = load_digits()
    assert digits.images.shape == (1797, 8, 8, 1) and digits.images.dtype == np.uint8
    assert digits.keys[0] == "digits:0" and digits.keys[-1] == "digits:1796"
    assert digits.images.min() == 0 and digits.images.max() == 255
    np.testing.assert_array_equal(digits.images[..., 0], np.rint(ref.images * 255 / 16))
    # spot values: 16 -> 255, 8 -> 128 (127.5 rounded), 1 -> 16
    assert set(np.unique(digits.images)) == {round(v * 255 / 16 + 1e-9) for v in range(17)}
    np.testing.assert_array_equal(digits.labels, ref.target)
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.source == "digits"


@pytest.mark.parametrize("size", [16, 32])
def test_digits_upsampled(size, digits):
    up = load_dataset("digits", image_size=size, subset=50)
    assert up.images.shape == (50, size, size, 1)
    # bilinear upsampling keeps the mean brightness close and stays within [min, max] of the source
    src = digits.images[[digits.index_of()[k] for k in up.keys]]
    assert abs(float(up.images.mean()) - float(src.mean())) < 4
    assert up.images.max() <= src.max()


def test_digits_rgb(digits):
    rgb = load_dataset("digits", mode="RGB", subset=10, subset_seed=1)
    assert rgb.images.shape == (10, 8, 8, 3)
    assert np.all(rgb.images[..., 0] == rgb.images[..., 2])


def test_subset_determinism(digits):
    a = load_dataset("digits", subset=100, subset_seed=7)
    b = load_dataset("digits", subset=100, subset_seed=7)
    c = load_dataset("digits", subset=100, subset_seed=8)
    assert a.keys == b.keys and np.array_equal(a.images, b.images)
    assert a.keys != c.keys
    pos = [int(k.split(":")[1]) for k in a.keys]
    assert pos == sorted(pos) and len(set(pos)) == 100
    np.testing.assert_array_equal(a.images, digits.images[pos])
    np.testing.assert_array_equal(a.labels, digits.labels[pos])
    np.testing.assert_array_equal(choose_subset(1797, 100, 7), pos)


def test_subset_errors():
    with pytest.raises(DiffauditError, match=r"--subset 1798 asks for more examples than digits has \(1797\)"):
        load_dataset("digits", subset=1798)
    with pytest.raises(DiffauditError, match="--subset must be a positive"):
        load_dataset("digits", subset=0)
    assert len(load_dataset("digits", subset=1797)) == 1797
