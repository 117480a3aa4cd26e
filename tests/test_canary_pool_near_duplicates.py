"""Heldout canaries: a pool image that is a near-duplicate of a training image (re-encoded, shifted by a
pixel, noisy) is a member, left out of the candidates like an exact copy (a draw that is mostly copies
is refused); a genuinely disjoint pool still passes.

The check used to compare SHA-1 digests of the pixels (and keys), so every case below passed it."""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import zoom

from diffaudit.attacks.extraction.verification import VerifySettings
from diffaudit.core.errors import DiffauditError
from diffaudit.data.dataset import ImageDataset
from diffaudit.defenses.canaries import find_training_copies, make_canaries, training_members


def _smooth_images(n: int, seed: int, size: int = 16) -> np.ndarray:
    """uint8 (n, size, size, 3): random 4x4 colour fields upsampled (smooth, photo-like), one per seed draw."""
    coarse = np.random.default_rng(seed).uniform(0, 255, size=(n, 4, 4, 3))
    return np.clip(zoom(coarse, (1, size / 4, size / 4, 1), order=1), 0, 255).round().astype(np.uint8)


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


def _shifted(img: np.ndarray) -> np.ndarray:
    """One pixel to the right, the first column repeated."""
    return np.concatenate([img[:, :1], img[:, :-1]], axis=1)


def _jpeg(img: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    return out.reshape(img.shape)


def _old_check(images: np.ndarray, training: ImageDataset) -> list[int]:
    """The check before, for a pool from another source than the training data: same pixels (SHA-1 of the
    uint8 rows)."""
    digests = {hashlib.sha1(np.ascontiguousarray(t).tobytes()).digest() for t in training.images}
    return [j for j, img in enumerate(images) if hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest() in digests]


@pytest.fixture(scope="module")
def training() -> ImageDataset:
    imgs = _smooth_images(300, seed=0)
    return ImageDataset(imgs, [f"train/{i}" for i in range(len(imgs))], source="train.npz")


def _near_duplicates(training: ImageDataset) -> tuple[np.ndarray, list[int]]:
    """A noisy copy, a one-pixel shift and a JPEG re-encoding of training images 5, 17 and 42."""
    src = [5, 17, 42]
    imgs = np.stack([_noisy(training.images[5], 4.0, seed=1), _shifted(training.images[17]), _jpeg(training.images[42])])
    return imgs, src


def _pool(images: np.ndarray, name: str = "pool") -> ImageDataset:
    return ImageDataset(np.ascontiguousarray(images), [f"{name}/{i}" for i in range(len(images))], source=f"{name}.npz")


@pytest.mark.parametrize("rule", [None, VerifySettings(rule="l2", delta=0.15)], ids=["ratio", "l2"])
def test_each_kind_of_near_duplicate_is_a_training_member(training, rule):
    near, src = _near_duplicates(training)
    fresh = _smooth_images(4, seed=99)
    images = np.concatenate([near, fresh])
    keys = [f"pool/{i}" for i in range(len(images))]
    assert _old_check(images, training) == []  # what the digest check let through
    found = find_training_copies(images, keys, training, same_source=False, copy_rule=rule)
    assert found.exact == [] and found.near == [0, 1, 2] and found.members == [0, 1, 2]
    assert found.nearest[:3].tolist() == src  # each found next to its own source image
    assert (found.l2[:3] < 0.1).all() and (found.ratio[:3] < 0.7).all(), (found.l2, found.ratio)
    assert (found.ratio[3:] > 1).all() and (found.l2[3:] > 0.15).all()  # the fresh images are far from everything
    assert training_members(images, keys, training, same_source=False, copy_rule=rule) == [0, 1, 2]


def test_near_duplicates_in_a_draw_are_left_out_and_replaced(training):
    """4 copies (3 near, 1 exact) and 12 other images; 12 are needed: whichever copies the seeded draw takes
    are replaced, so the candidates are exactly the 12 others, and the plan names what it left out."""
    near, _ = _near_duplicates(training)
    pool = _pool(np.concatenate([near, training.images[[7]], _smooth_images(12, seed=5)]))
    plan = make_canaries("heldout", image_shape=training.image_shape, repeats=(1, 2), n_reference=10, seed=3, pool=pool,
                         training=training)
    assert sorted(plan.sources + plan.reference_sources) == sorted(f"pool/{i}" for i in range(4, 16))
    assert plan.skipped and {s["source"] for s in plan.skipped} <= {"pool/0", "pool/1", "pool/2", "pool/3"}
    for s in plan.skipped:
        assert s["copy"] == ("exact" if s["source"] == "pool/3" else "near") and s["l2"] < 0.1
        assert s["nearest"] == {"pool/0": "train/5", "pool/1": "train/17", "pool/2": "train/42", "pool/3": "train/7"}[s["source"]]
    # a pool without copies draws what it always drew: the replacements only replace
    clean = _pool(_smooth_images(16, seed=5))
    again = make_canaries("heldout", image_shape=training.image_shape, repeats=(1, 2), n_reference=10, seed=3,
                          pool=clean, training=training)
    assert again.skipped == [] and len(set(again.sources + again.reference_sources)) == 12
    with pytest.raises(DiffauditError, match="holds too few images that are not training images .* 12 of the 14 needed"):
        make_canaries("heldout", image_shape=training.image_shape, repeats=(1, 2), n_reference=12, seed=3, pool=pool,
                      training=training)


def test_a_draw_that_is_mostly_copies_is_refused_with_counts_distance_and_threshold(training):
    near, _ = _near_duplicates(training)
    pool = _pool(np.concatenate([near, training.images[[7]], _smooth_images(2, seed=5)]))  # 6 images: every one drawn
    with pytest.raises(DiffauditError) as err:
        make_canaries("heldout", image_shape=training.image_shape, repeats=(1, 2), n_reference=4, seed=3, pool=pool,
                      training=training)
    msg = str(err.value)
    assert re.search(r"4 of the 6 drawn candidates \(\d of 2 canaries, \d of 4 never-inserted references\) are "
                     r"training images: 1 exact copy \(same key or identical pixels\) and 3 near-duplicates", msg), msg
    assert "ratio <= 1 (--rule ratio" in msg and "alpha = 0.5 times the mean l2 to its 50 nearest" in msg
    closest = re.search(r"closest near-duplicate: 'pool/(\d)', l2 (0\.\d{4}) \(ratio (0\.\d{3})\) from training image "
                        r"'train/(\d+)'", msg)
    assert closest and closest.group(1) in "012" and float(closest.group(2)) < 0.1
    assert closest.group(4) in ("5", "17", "42")
    # the ℓ2 rule names its δ
    with pytest.raises(DiffauditError, match=r"3 near-duplicates .*l2 to the nearest training image <= delta = 0\.15 "
                                             r"\(--rule l2 --delta 0\.15\)"):
        make_canaries("heldout", image_shape=training.image_shape, repeats=(1, 2), n_reference=4, seed=3, pool=pool,
                      training=training, copy_rule=VerifySettings(rule="l2", delta=0.15))


def test_a_disjoint_pool_passes_under_either_rule(training):
    pool = _pool(_smooth_images(40, seed=7))
    for rule in (None, VerifySettings(rule="l2", delta=0.15)):
        plan = make_canaries("heldout", image_shape=training.image_shape, repeats=(1, 2, 4), n_reference=20, seed=2,
                             pool=pool, training=training, copy_rule=rule)
        assert len(plan.images) == 3 and len(plan.reference) == 20


def test_the_l2_threshold_decides_a_moderately_noisy_copy(training):
    """A copy with noise sigma 15/255 lies about 0.06 from its source: a copy at delta 0.15, not at 0.05."""
    pool = _pool(np.concatenate([_noisy(training.images[3], 15.0, seed=4)[None], _smooth_images(3, seed=8)]))
    found = find_training_copies(pool.images, pool.keys, training, same_source=False,
                                 copy_rule=VerifySettings(rule="l2", delta=0.15))
    assert found.near == [0] and 0.05 < found.l2[0] < 0.08
    assert find_training_copies(pool.images, pool.keys, training, same_source=False,
                                copy_rule=VerifySettings(rule="l2", delta=0.05)).near == []
    plan = make_canaries("heldout", image_shape=training.image_shape, repeats=(1,), n_reference=3, pool=pool,
                         training=training, copy_rule=VerifySettings(rule="l2", delta=0.05))
    assert sorted(plan.sources + plan.reference_sources) == sorted(pool.keys)


def test_noisy_and_reencoded_digits_are_found_and_never_drawn(digits):
    """Real 8x8 digits: a training digit with slight noise, or saved as a JPEG, from a pool under other keys."""
    train = digits.subset(range(500))
    copies = np.stack([_noisy(train.images[i], 6.0, seed=i) for i in (10, 20, 30)] + [_jpeg(train.images[40], 90)])
    keys = [f"copy/{i}" for i in range(len(copies))]
    assert _old_check(copies, train) == []
    found = find_training_copies(copies, keys, train, same_source=False)
    assert found.exact == [] and found.near == [0, 1, 2, 3] and found.nearest.tolist() == [10, 20, 30, 40]
    pool = ImageDataset(np.concatenate([copies, digits.images[1500:1530]]), keys + [f"other/{i}" for i in range(30)],
                        source="pool.npz")
    for seed in range(4):
        plan = make_canaries("heldout", image_shape=train.image_shape, repeats=(1, 2), n_reference=12, pool=pool,
                             training=train, seed=seed)
        assert not any(k.startswith("copy/") for k in plan.sources + plan.reference_sources)
        assert all(s["copy"] == "near" for s in plan.skipped)


def test_cifar10_test_images_that_are_near_duplicates_of_training_images(cifar10_root):
    """CIFAR-10's test split holds re-encoded or shifted copies of training photographs (about 0.07 from
    them in l2): the default rule finds them. Other test images as close in l2 (0.05 to 0.07: smooth skies,
    grass) are not copies by the ratio rule, which compares with each image's own neighbourhood."""
    from diffaudit.data import load_dataset

    train, test = load_dataset("cifar10"), load_dataset("cifar10-test")
    dups = {"airplane_0690": "airplane_4430", "bird_0343": "bird_1369", "bird_0305": "bird_0698",
            "horse_0736": "horse_0972", "bird_0277": "bird_1701", "airplane_0811": "airplane_4129"}
    others = ["bird_0666", "airplane_0507", "deer_0381", "bird_0946", "frog_0037"]
    index = test.index_of()
    keys = list(dups) + others
    images = np.asarray(test.images[[index[k] for k in keys]])
    assert _old_check(images, train) == []
    found = find_training_copies(images, keys, train, same_source=False)
    assert found.exact == [] and found.near == list(range(len(dups)))
    assert [train.keys[i] for i in found.nearest[:len(dups)]] == list(dups.values())
    assert (found.l2 < 0.08).all()  # every one of them within 0.15, the l2 rule's delta
    assert (found.ratio[len(dups):] > 1.2).all()


def test_canaries_cli_refuses_a_pool_of_near_duplicates_before_writing_anything(tmp_path, tmp_npz, capsys):
    from diffaudit.cli.main import main
    from diffaudit.data import load_dataset

    train = load_dataset("digits", subset=200)  # what `--data digits --subset 200` trains on
    copies = np.stack([_noisy(train.images[i], 6.0, seed=i) for i in range(10)])
    pool = tmp_npz(copies, name="pool.npz")
    base = ["--quiet", "canaries", "--data", "digits", "--subset", "200", "--kind", "heldout", "--canary-pool", str(pool),
            "--repeats", "1,8", "--n-reference", "8", "--steps", "3", "--n-samples", "0", "--device", "cpu"]
    for extra, words in (([], "ratio <= 1 (--rule ratio"), (["--rule", "l2", "--delta", "0.1"], "(--rule l2 --delta 0.1)")):
        out = tmp_path / f"can{len(extra)}"
        assert main(base + extra + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "10 of the 10 drawn candidates" in err and "0 exact copies" in err and "10 near-duplicates" in err, err
        assert words in err and "closest near-duplicate: 'npz:" in err and "Traceback" not in err
        assert not out.exists()


def test_the_canaries_record_lists_skipped_images_only_when_there_are_some(training):
    """canaries.json keeps the shape earlier versions wrote when nothing was skipped (a resumed run
    compares its record whole), and names the skipped pool images when there were any."""
    from diffaudit.defenses.canaries import insert_canaries

    near, _ = _near_duplicates(training)
    with_copies = _pool(np.concatenate([near, training.images[[7]], _smooth_images(12, seed=5)]))
    for pool, skipped in ((_pool(_smooth_images(16, seed=5)), False), (with_copies, True)):
        plan = make_canaries("heldout", image_shape=training.image_shape, repeats=(1, 2), n_reference=10, seed=3,
                             pool=pool, training=training)
        _, _, record = insert_canaries(training, plan)
        assert ("skipped_pool_images" in record) == skipped
        if skipped:
            assert record["skipped_pool_images"] == plan.skipped
