"""Verification on real CIFAR-10 images: rules, unique counting, duplicates, eidetic k, baseline,
crop alignment and FID."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from diffaudit.attacks.extraction.crops import crop_aligned_l2
from diffaudit.attacks.extraction.verification import VerifySettings, auto_rule, check_prompt_map, verify
from diffaudit.core.errors import DiffauditError
from diffaudit.distances.frechet import fid_from_file, frechet_distance, gaussian_stats
from helpers import cifar_images, noisy_copies


@pytest.fixture(scope="module")
def world():
    train = cifar_images(300, "train")
    train[200] = train[5]  # an exact duplicate
    train[201] = noisy_copies(train[5], 1, 9, sigma=0.01)[0]  # a near-duplicate (ℓ2 ≈ 0.01)
    test = cifar_images(400, "test")
    samples = np.concatenate([noisy_copies(train[5], 15, 1), test[:100], noisy_copies(train[42], 12, 2)])
    ids = [f"s{i}" for i in range(len(samples))]
    keys = [f"train:{i}" for i in range(300)]
    return dict(train=train, test=test, samples=samples, ids=ids, keys=keys)


def test_ratio_rule_counts_each_training_image_once(world):
    v = verify(world["samples"], world["ids"], world["train"], world["keys"])
    assert v.settings.rule == "ratio" and v.neighbors == 50
    assert v.n_extracting_samples == 27 and v.unique_extracted == 2
    first, second = v.extracted
    assert first.sample == "s0" and first.train_id in (5, 200, 201)
    assert sorted([first.train_id] + first.duplicates) == [5, 200, 201]  # collapsed into one image
    assert first.eidetic_k == 3 and first.n_matching_samples == 15
    assert second.sample == "s115" and second.train_id == 42 and second.train_key == "train:42"
    assert second.eidetic_k == 1 and second.duplicates == [] and second.n_matching_samples == 12
    assert 0 < first.ratio < 0.5 and first.l2 < 0.03
    assert v.is_extracted[15:115].sum() == 0  # unrelated test images are not extracted
    assert np.all(np.isfinite(v.ratio))


def test_each_image_keeps_the_closest_generation_counted_for_it(world):
    """The count credits the first extracting generation (paper §5.1); the closest of those counted is kept
    beside it, with the training image it matched, as the strongest evidence to show."""
    exact = world["samples"].copy()
    exact[120] = world["train"][42]  # a pixel-exact copy among the generations of image 42, after the first (s115)
    ids = list(world["ids"])
    v = verify(exact, ids, world["train"], world["keys"])
    second = v.extracted[1]
    assert second.sample == "s115" and second.l2 > 0.01  # still credited to its first, a noisy copy
    assert second.closest_sample == "s120" and second.closest_l2 == 0.0 and second.closest_train_key == "train:42"
    assert second.closest_train_id == 42 and second.closest_ratio == 0.0
    first = v.extracted[0]  # 15 noisy copies of image 5 (or its duplicates): the nearest one of them
    d = {s: float(np.sqrt(np.mean((world["samples"][int(s[1:])] / 255.0 - world["train"][first.closest_train_id] / 255.0) ** 2)))
         for s in [f"s{i}" for i in range(15)]}
    assert first.closest_sample == min(d, key=d.get) and first.closest_l2 == pytest.approx(min(d.values()), abs=1e-4)
    assert first.closest_l2 <= first.l2


def test_l2_rule_and_delta(world):
    v = verify(world["samples"], world["ids"], world["train"], world["keys"], settings=VerifySettings(rule="l2"))
    by_sample = {e.sample: e for e in v.extracted}
    assert by_sample["s0"].train_id in (5, 200, 201) and by_sample["s115"].train_id == 42
    # plain ℓ2 ≤ 0.15 also accepts some smooth, low-contrast unrelated images (why the paper normalises
    # by the neighbourhood for CIFAR-10): they are test images, never near-copies
    others = [e for e in v.extracted if e.sample not in ("s0", "s115")]
    assert all(15 <= e.sample_index < 115 and 0.05 < e.l2 <= 0.15 and e.ratio > 1 for e in others)
    tight = verify(world["samples"], world["ids"], world["train"], world["keys"],
                   settings=VerifySettings(rule="l2", delta=0.005))
    assert tight.unique_extracted == 0  # the copies are ≈ 0.02 away


def test_duplicates_not_collapsed_with_tiny_dup_delta(world):
    v = verify(world["samples"], world["ids"], world["train"], world["keys"],
               settings=VerifySettings(dup_delta=1e-9))
    # the exact duplicate (distance 0) still collapses; the 0.01-away near-duplicate does not
    assert v.unique_extracted in (2, 3)
    first = v.extracted[0]
    assert 201 not in first.duplicates or first.train_id == 201


def test_duplicates_are_not_chained_through_an_image_between_two_matches():
    # A and B are 0.196 apart (distinct at dup_delta 0.1), Y lies 0.098 from each: A and B both count,
    # and a generation matching Y counts as A, credited before it (Y is A's duplicate)
    a, y, b = (np.full((8, 8, 3), v, np.uint8) for v in (100, 125, 150))
    others = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    train = np.concatenate([np.stack([a, y, b]), others])
    keys = [f"t{i}" for i in range(len(train))]
    v = verify(np.stack([a, b, y]), ["ga", "gb", "gy"], train, keys, settings=VerifySettings(rule="l2"))
    assert v.n_extracting_samples == 3 and v.unique_extracted == 2
    first, second = v.extracted
    assert (first.sample, first.train_id, first.n_matching_samples, first.duplicates) == ("ga", 0, 2, [1])
    assert (second.sample, second.train_id, second.n_matching_samples, second.duplicates) == ("gb", 2, 1, [1])
    assert first.eidetic_k == 2 and second.eidetic_k == 2


def test_baseline_of_unseen_images_extracts_nothing(world):
    base = world["test"][100:400]
    v = verify(world["samples"], world["ids"], base, [f"test:{i}" for i in range(300)])
    assert v.unique_extracted == 0


def test_settings_validation():
    for kw, name in [({"delta": 0}, "--delta"), ({"delta": 2}, "--delta"), ({"eidetic_delta": -1}, "--eidetic-delta"),
                     ({"rule": "cosine"}, "--rule"), ({"alpha": 0}, "--alpha"), ({"n_neighbors": 0}, "--n-neighbors"),
                     ({"n_neighbors": 1}, "--n-neighbors 1")]:
        with pytest.raises(DiffauditError, match=name):
            VerifySettings(**kw).validate()
    # with n = 1 the ratio is 1/α whatever the distance: refused, for the ratio rule only
    with pytest.raises(DiffauditError, match="a training set of 1 image"):
        VerifySettings().neighbourhood(1)
    # S holds every training image when there are fewer than n (a generation is none of them)
    assert VerifySettings().neighbourhood(2) == 2 and VerifySettings().neighbourhood(49) == 49
    assert VerifySettings().neighbourhood(51) == 50 and VerifySettings(rule="l2").neighbourhood(1) == 1
    assert VerifySettings(rule="l2", n_neighbors=1).validate().n_neighbors == 1


def test_auto_rule_is_the_papers_rule_for_the_kind_of_model():
    assert auto_rule("stable-diffusion", ["0", "1"])[0] == "l2"  # what a store records comes first
    assert auto_rule("pixel", ["a photo of a cat"])[0] == "ratio"
    assert auto_rule(None, None)[0] == "ratio"
    assert auto_rule(None, ["3", "7", "3"])[0] == "ratio"  # class indices: a class-conditional pixel model's
    assert auto_rule(None, ["3", "a photo of a cat"])[0] == "l2"


def test_crop_alignment_finds_the_window(world):
    big = np.asarray(Image.fromarray(world["train"][7]).resize((40, 40)))
    gen = big[5:37, 3:35]
    d, off = crop_aligned_l2(gen, big)
    assert d == 0.0 and off == (5, 3)
    noisy = noisy_copies(gen, 1, 4)[0]
    d2, off2 = crop_aligned_l2(noisy, big)
    assert off2 == (5, 3) and 0 < d2 < 0.03
    assert abs(d2 - np.sqrt(((noisy / 255 - big[5:37, 3:35] / 255) ** 2).mean())) < 1e-12
    with pytest.raises(DiffauditError, match="smaller than the generation"):
        crop_aligned_l2(big, gen)
    # the prompt map: each prompt checked against its own training images
    train = np.stack([big, np.asarray(Image.fromarray(world["train"][8]).resize((40, 40)))])
    checks = check_prompt_map(np.stack([noisy, gen]), ["g0", "g1"], ["cat", "dog"], {"cat": [1, 0], "dog": [1]},
                              train, ["t0", "t1"], resize="none")  # windows of the image as stored
    assert checks[0]["train_id"] == 0 and checks[0]["extracted"] and checks[0]["offset"] == [5, 3]
    assert checks[1]["train_id"] == 1 and not checks[1]["extracted"]


def test_frechet_distance(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 4))
    b = rng.normal(size=(4000, 4)) + 1.0  # mean shifted by 1 in each of 4 dims: FID ≈ 4
    ma, sa = gaussian_stats(a)
    assert frechet_distance(ma, sa, ma, sa) == pytest.approx(0.0, abs=1e-6)
    mb, sb = gaussian_stats(b)
    assert frechet_distance(ma, sa, mb, sb) == pytest.approx(4.0, abs=0.3)
    np.savez(tmp_path / "f.npz", samples=a, reference=b)
    assert fid_from_file(tmp_path / "f.npz") == pytest.approx(frechet_distance(ma, sa, mb, sb))
    np.savez(tmp_path / "bad.npz", x=a)
    with pytest.raises(DiffauditError, match="expected arrays"):
        fid_from_file(tmp_path / "bad.npz")
