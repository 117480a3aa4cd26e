"""Inpainting masks: shapes, the hidden region of each kind, seeded random halves, mask images, errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diffaudit.core.errors import DiffauditError
from diffaudit.sampling.masks import (
    HALF_SIDES, MASK_KINDS, center_mask, describe_mask, half_mask, load_mask_image, make_mask, random_half_side,
    validate_mask,
)


def test_left_half_hides_the_left_columns():
    m = make_mask("left", 8, 8)
    assert m.dtype == np.float32 and m.shape == (8, 8)
    assert (m[:, :4] == 0).all() and (m[:, 4:] == 1).all()


@pytest.mark.parametrize("side,hidden", [
    ("left", (slice(None), slice(0, 3))), ("right", (slice(None), slice(4, 7))),
    ("top", (slice(0, 2), slice(None))), ("bottom", (slice(3, 5), slice(None))),
])
def test_halves_on_odd_sizes(side, hidden):
    m = half_mask(5, 7, side)  # H = 5, W = 7: the hidden half is W // 2 = 3 columns or H // 2 = 2 rows
    expected = np.ones((5, 7), np.float32)
    expected[hidden] = 0
    assert np.array_equal(m, expected)


def test_center_hides_a_centred_quarter():
    m = center_mask(8, 8)
    assert (m[2:6, 2:6] == 0).all() and m.sum() == 64 - 16
    m = center_mask(9, 6)  # 4 x 3 hole, centred
    assert m.sum() == 54 - 12 and (m[2:6, 1:4] == 0).all()


def test_random_half_is_seeded_per_target():
    sides = [random_half_side(0, i) for i in range(40)]
    assert set(sides) == set(HALF_SIDES)  # every orientation occurs
    assert sides == [random_half_side(0, i) for i in range(40)]  # reproducible
    assert sides != [random_half_side(1, i) for i in range(40)]  # the seed matters
    for i in range(5):
        assert np.array_equal(make_mask("random", 8, 8, seed=0, target_index=i), half_mask(8, 8, sides[i]))
        assert describe_mask("random", seed=0, target_index=i) == f"random:{sides[i]}"


@settings(deadline=None, max_examples=60)
@given(h=st.integers(2, 40), w=st.integers(2, 40), kind=st.sampled_from(MASK_KINDS), seed=st.integers(0, 2**31))
def test_every_kind_is_binary_with_something_known_and_something_hidden(h, w, kind, seed):
    m = make_mask(kind, h, w, seed=seed, target_index=seed % 7)
    assert m.shape == (h, w) and m.dtype == np.float32
    assert set(np.unique(m)) == {0.0, 1.0}
    hidden = int((m == 0).sum())
    if kind == "center":
        assert hidden == (h // 2) * (w // 2)
    else:
        assert hidden in ((h // 2) * w, h * (w // 2))


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_mask_image_nonzero_is_known(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[:, 5:] = 255
    a[0, 0] = 3  # any nonzero value counts as known
    m = load_mask_image(_png(tmp_path / "m.png", a), 8, 8)
    assert m[0, 0] == 1 and (m[:, 5:] == 1).all() and m.sum() == 8 * 3 + 1
    assert np.array_equal(make_mask(str(tmp_path / "m.png"), 8, 8), m)


def test_colour_mask_image_any_channel_counts(tmp_path):
    a = np.zeros((6, 6, 3), np.uint8)
    a[:3, :, 2] = 200  # only blue
    m = load_mask_image(_png(tmp_path / "c.png", a), 6, 6)
    assert (m[:3] == 1).all() and (m[3:] == 0).all()


def test_mask_image_of_the_wrong_size_is_refused(tmp_path):
    path = _png(tmp_path / "big.png", np.full((10, 12), 255, np.uint8))
    with pytest.raises(DiffauditError, match=r"big\.png is 12x10 pixels.*8x8"):
        make_mask(str(path), 8, 8)


def test_all_zero_mask_image_is_refused(tmp_path):
    path = _png(tmp_path / "empty.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DiffauditError, match=r"empty\.png marks no pixel as known"):
        make_mask(str(path), 8, 8)


def test_all_ones_mask_image_is_refused(tmp_path):
    path = _png(tmp_path / "full.png", np.full((8, 8), 7, np.uint8))
    with pytest.raises(DiffauditError, match=r"full\.png marks every pixel as known.*nothing to inpaint"):
        make_mask(str(path), 8, 8)


def test_unreadable_and_missing_mask_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DiffauditError, match="cannot be read"):
        make_mask(str(bad), 8, 8)
    with pytest.raises(DiffauditError, match="does not exist"):
        make_mask(str(tmp_path / "missing.png"), 8, 8)


def test_unknown_kind_names_the_choices():
    with pytest.raises(DiffauditError, match="unknown mask 'diagonal'.*left"):
        make_mask("diagonal", 8, 8)


@pytest.mark.parametrize("mask,match", [
    (np.ones((8, 7)), r"shape \(8, 7\).*\(8, 8\)"),
    (np.zeros((8, 8)), "no pixel as known"),
    (np.ones((8, 8)), "nothing to inpaint"),
    (np.full((8, 8), 0.5), "only 0"),
])
def test_validate_mask_errors(mask, match):
    with pytest.raises(DiffauditError, match=match):
        validate_mask(mask, 8, 8, name="my mask")


def test_validate_mask_names_the_mask():
    with pytest.raises(DiffauditError, match="^my mask "):
        validate_mask(np.zeros((8, 8)), 8, 8, name="my mask")


def test_the_command_lists_every_mask_kind():
    from diffaudit.cli.inpaint import MASK_CHOICES

    assert MASK_CHOICES == ", ".join(MASK_KINDS)
