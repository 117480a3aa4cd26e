"""Canaries: drawn from seeds, inserted the requested number of times, recorded; exposure maths; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.attacks.extraction.verification import VerifySettings
from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed
from diffaudit.data.dataset import ImageDataset
from diffaudit.defenses.canaries import (
    exposure,
    exposure_curve,
    exposure_gaussian,
    insert_canaries,
    make_canaries,
    max_exposure,
    noise_image,
    training_members,
)
from diffaudit.defenses.canary_run import CanaryEval
from diffaudit.models.training import expand_repeats

#: Near pixel-perfect copies only (the paper: below 0.05). Distinct 8x8 digits are so alike that the default
#: copy rule (ratio <= 1) calls some of them near-duplicates of training digits (digits:124 and digits:41,
#: ratio 0.55); tests about drawing from a key-disjoint digits pool use this rule.
PIXEL_COPIES = VerifySettings(rule="l2", delta=0.05)


def test_noise_canaries_are_seeded_per_image():
    a = make_canaries("noise", image_shape=(8, 8, 1), repeats=(1, 4, 16), per_repeat=2, n_reference=5, seed=7)
    b = make_canaries("noise", image_shape=(8, 8, 1), repeats=(1, 4, 16), per_repeat=2, n_reference=5, seed=7)
    assert a.images.shape == (6, 8, 8, 1) and a.reference.shape == (5, 8, 8, 1) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert a.repeats == [1, 1, 4, 4, 16, 16]
    assert len(set(a.keys + a.reference_keys)) == 11
    # canary j alone reproduces from its own seed; references are different draws
    np.testing.assert_array_equal(a.images[3], noise_image(derive_seed(7, "canary-noise", 3), (8, 8, 1)))
    np.testing.assert_array_equal(a.reference[0], noise_image(derive_seed(7, "canary-noise", 6), (8, 8, 1)))
    assert not np.array_equal(a.images, make_canaries("noise", image_shape=(8, 8, 1), repeats=(1, 4, 16), per_repeat=2,
                                                      n_reference=5, seed=8).images)
    assert a.images.min() < 10 and a.images.max() > 245  # uniform over 0..255


def test_heldout_canaries_come_from_the_pool(digits):
    pool, train = digits.subset(range(100, 160)), digits.subset(range(100))
    plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2), n_reference=10, seed=1, pool=pool,
                         training=train, copy_rule=PIXEL_COPIES)
    assert set(plan.sources + plan.reference_sources) <= set(pool.keys)
    assert len(set(plan.sources + plan.reference_sources)) == 12
    with pytest.raises(DiffauditError, match="need a pool"):
        make_canaries("heldout", image_shape=(8, 8, 1), training=train)
    with pytest.raises(DiffauditError, match="need the training set"):
        make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2), n_reference=10, pool=pool)
    with pytest.raises(DiffauditError, match="12 are needed"):
        make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2), n_reference=10, pool=digits.subset(range(5)),
                      training=train)
    with pytest.raises(DiffauditError, match="same size"):
        make_canaries("heldout", image_shape=(16, 16, 1), repeats=(1,), n_reference=2, pool=pool, training=train)
    with pytest.raises(DiffauditError, match="unknown canary kind"):
        make_canaries("stripes", image_shape=(8, 8, 1))
    with pytest.raises(DiffauditError, match="positive"):
        make_canaries("noise", image_shape=(8, 8, 1), repeats=(0, 2))
    with pytest.raises(DiffauditError, match="--n-reference must be at least 2"):  # the Gaussian exposure needs two
        make_canaries("noise", image_shape=(8, 8, 1), n_reference=1)
    with pytest.raises(DiffauditError, match="--per-repeat must be at least 1"):
        make_canaries("noise", image_shape=(8, 8, 1), per_repeat=0)


def test_heldout_pool_of_training_images_is_refused(digits):
    """`--data digits --subset 1000 --canary-pool digits` drew 35 of 64 references and 3 of 4 canaries from the
    training set itself: exposure measured against members."""
    from diffaudit.data import load_dataset

    train = load_dataset("digits", subset=1000)  # what `--data digits --subset 1000` trains on
    with pytest.raises(DiffauditError, match=r"40 of the 68 drawn candidates \(3 of 4 canaries, 37 of 64 never-inserted "
                                             r"references\) are training images: 38 exact copies .* and 2 near-duplicates "
                                             r".*first: 'digits:\d+'"):
        make_canaries("heldout", image_shape=train.image_shape, repeats=(1, 2, 4, 8), n_reference=64, pool=digits,
                      training=train)
    # the same pixels under other keys from another source (an exported copy of the data) are found too
    copy = train.subset(range(60))
    copy = ImageDataset(copy.images, [f"copy/{i}" for i in range(60)], source="copy.npz")
    with pytest.raises(DiffauditError, match=r"first: 'copy/\d+'"):
        make_canaries("heldout", image_shape=train.image_shape, repeats=(1, 2), n_reference=20, pool=copy, training=train)
    plan = make_canaries("heldout", image_shape=train.image_shape, repeats=(1, 2), n_reference=20,
                         pool=digits.subset(sorted(set(range(len(digits))) - {int(k.split(":")[1]) for k in train.keys})),
                         training=train, copy_rule=PIXEL_COPIES)  # disjoint: accepted
    assert not set(plan.sources + plan.reference_sources) & set(train.keys)


def test_training_members_by_pixels_and_by_key_of_the_same_source(digits):
    train = digits.subset(range(10))
    other = digits.images[20:23]
    # candidate 0: a training image's pixels; 1: a training key but other pixels; 2: neither
    images, sources = np.stack([digits.images[4], other[0], other[1]]), ["x", digits.keys[3], "y"]
    assert training_members(images, sources, train, same_source=False) == [0]
    assert training_members(images, sources, train, same_source=True) == [0, 1]  # same spec: key 3 is example 3
    with pytest.raises(DiffauditError, match="training images are"):
        training_members(np.zeros((1, 4, 4, 1), np.uint8), ["z"], train, same_source=False)


def test_canaries_inserted_the_requested_number_of_times_and_recorded(digits):
    ds = digits.subset(range(50))
    reps = (1, 2, 4, 8, 16, 32, 64)
    plan = make_canaries("noise", image_shape=ds.image_shape, repeats=reps, per_repeat=2, n_reference=8, seed=3)
    combined, repeats, record = insert_canaries(ds, plan)
    assert len(combined) == 50 + 14 and combined.keys[:50] == ds.keys
    np.testing.assert_array_equal(combined.images[50:], plan.images)
    assert combined.labels is not None and len(combined.labels) == 64  # canaries get (seeded) labels too
    stream = expand_repeats(np.arange(len(combined)), repeats)  # what training iterates over
    counts = np.bincount(stream, minlength=len(combined))
    assert (counts[:50] == 1).all()
    assert counts[50:].tolist() == [r for r in reps for _ in range(2)]
    assert [c["repeats"] for c in record["canaries"]] == counts[50:].tolist()
    assert [c["index"] for c in record["canaries"]] == list(range(50, 64))
    assert [c["key"] for c in record["canaries"]] == plan.keys
    assert record["repeats_list"] == list(reps) and len(record["reference"]) == 8
    assert not set(r["key"] for r in record["reference"]) & set(combined.keys)  # references never inserted
    with pytest.raises(DiffauditError, match="already has keys"):
        insert_canaries(combined, plan)


def test_exposure_is_the_secret_sharers():
    """Secret Sharer Def. 4: R = the canary and its 64 references, |R| = 65, rank in [1, 65]."""
    ref = np.arange(1.0, 65.0)
    e = exposure(np.array([0.0, 100.0, 32.5, 32.0]), ref)
    # lowest loss: rank 1 -> log2 65; highest: rank 65 -> 0; 32 references below 32.5: rank 33;
    # 32.0 ties one reference with 31 below: rank 1 + 31 + 1/2 = 32.5 = 65 / 2 -> exactly 1 bit
    np.testing.assert_allclose(e, [np.log2(65), 0.0, np.log2(65 / 33), 1.0], rtol=0, atol=1e-12)
    assert max_exposure(64) == np.log2(65)


def test_exposure_bounds_and_examples():
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    e = exposure(np.array([0.5, 8.5, 4.5, 4.0]), ref)
    np.testing.assert_allclose(e, [np.log2(9), 0.0, np.log2(9) - np.log2(5), np.log2(9) - np.log2(4.5)])
    g = exposure_gaussian(np.array([-10.0, 4.5]), ref)
    assert g[0] > np.log2(9) and g[1] == pytest.approx(1.0, abs=1e-9)  # beyond log2|R|; mean loss -> 1 bit
    with pytest.raises(DiffauditError):
        exposure(np.array([1.0]), np.array([]))
    with pytest.raises(DiffauditError, match="non-finite"):
        exposure(np.array([np.nan]), ref)


@settings(deadline=None, max_examples=50)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=30), st.lists(st.floats(0, 10), min_size=2, max_size=8))
def test_exposure_is_bounded_and_decreases_with_loss(ref, canary):
    ref = np.asarray(ref)
    c = np.sort(np.asarray(canary))
    e = exposure(c, ref)
    assert (e <= np.log2(len(ref) + 1) + 1e-12).all() and (e >= -1e-12).all()  # [0, log2 |R|], |R| = n + 1
    assert (np.diff(e) <= 1e-12).all()


def test_exposure_curve_groups_by_repeats():
    curve = exposure_curve([1, 1, 4, 4], np.array([0.0, 1.0, 3.0, 5.0]), [False, False, True, False])
    assert curve == [{"repeats": 1, "n": 2, "mean_exposure": 0.5, "min_exposure": 0.0, "max_exposure": 1.0, "n_extracted": 0},
                     {"repeats": 4, "n": 2, "mean_exposure": 4.0, "min_exposure": 3.0, "max_exposure": 5.0, "n_extracted": 1}]


def test_canaries_cli_end_to_end_on_tiny_model(tmp_path, capsys):
    from diffaudit.cli.main import main

    out = tmp_path / "can"
    args = ["--json", "canaries", "--data", "digits", "--subset", "60", "--repeats", "1,8", "--per-repeat", "2",
            "--n-reference", "8", "--steps", "3", "--batch-size", "16", "--warmup-steps", "0", "--checkpoint-every", "100",
            "--n-samples", "8", "--sample-steps", "2", "--n-draws", "1", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["command"] == "canaries" and r["n_canaries"] == 4 and r["n_reference"] == 8
    assert r["max_exposure"] == pytest.approx(np.log2(9))
    assert [c["repeats"] for c in r["canaries"]] == [1, 1, 8, 8]
    for c in r["canaries"]:
        assert set(c) >= {"key", "kind", "repeats", "loss", "exposure", "extracted"} and c["kind"] == "noise"
        assert 0.0 <= c["exposure"] <= np.log2(9) and isinstance(c["extracted"], bool)
        assert 0 <= c["nearest_l2"] <= 1
    # repeats 0: the never-inserted references, the extraction baseline
    assert [row["repeats"] for row in r["curve"]] == [0, 1, 8] and r["curve"][1]["n"] == 2 and r["curve"][0]["n"] == 8
    # the membership record and the training run agree on what was inserted how often
    record = json.loads((out / "canaries.json").read_text())
    ids = json.loads((out / "model" / "train_ids.json").read_text())
    assert ids["repeats"] == {c["key"]: c["repeats"] for c in record["canaries"]}
    assert all(c["key"] in ids["keys"] for c in record["canaries"])
    assert not any(ref["key"] in ids["keys"] for ref in record["reference"])
    # finished: a re-run returns at once
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["canaries"] == r["canaries"]
    # a result of the earlier exposure definition (log2 n, the canary left out of |R|) is recomputed from
    # the kept model and cached losses: every exposure rises by log2(9/8), nothing is retrained
    old = json.loads((out / "result.json").read_text())
    old["max_exposure"] = 3.0
    for c in old["canaries"]:
        c["exposure"] -= np.log2(9 / 8)
    (out / "result.json").write_text(json.dumps(old))
    weights = (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["max_exposure"] == pytest.approx(np.log2(9))
    assert [c["exposure"] for c in again["canaries"]] == pytest.approx([c["exposure"] for c in r["canaries"]])
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == weights


def test_insert_canaries_shape_mismatch(digits):
    plan = make_canaries("noise", image_shape=(4, 4, 1), repeats=(1,), n_reference=2)
    with pytest.raises(DiffauditError, match="canaries are"):
        insert_canaries(ImageDataset(digits.images[:3], digits.keys[:3]), plan)


def test_summary_line_says_when_extraction_was_not_tested():
    from diffaudit.cli.canaries import _extracted

    assert _extracted({"n_extracted": None}) == "extraction not tested (--n-samples 0)"  # not "None extracted"
    assert _extracted({"n_extracted": 0}) == "0 extracted"


@pytest.mark.parametrize("field, value, message", [
    ("timestep", 1000, r"--timestep must lie in \[0, 999\]"),
    ("timestep", -1, r"--timestep must lie in \[0, 999\]"),
    ("n_draws", 0, r"--n-draws must lie in \[1, 1,000\]"),
    ("n_samples", -1, "--n-samples must be at least 0"),
    ("sample_steps", 0, r"--sample-steps must lie in \[1, 1000\]"),
    ("sample_steps", 1001, r"--sample-steps must lie in \[1, 1000\]"),
    ("micro_batch", 0, "micro_batch must be at least 1"),
    ("delta", 0.0, r"--delta must be in \(0, 1\]"),
    ("rule", "cosine", "--rule must be one of"),
])
def test_canary_evaluation_settings_are_checked(field, value, message):
    CanaryEval().validate(n_train=100)
    with pytest.raises(DiffauditError, match=message):
        CanaryEval(**{field: value}).validate()


def test_ratio_rule_needs_a_neighbourhood_only_when_generations_are_verified():
    with pytest.raises(DiffauditError, match="a training set of 1 image"):
        CanaryEval(rule="ratio").validate(n_train=1)
    CanaryEval(rule="ratio", n_samples=0).validate(n_train=1)
    CanaryEval(rule="l2").validate(n_train=1)


_CLI_BASE = ["canaries", "--data", "digits", "--subset", "60", "--repeats", "1,8", "--per-repeat", "1", "--n-reference", "8",
             "--steps", "3", "--batch-size", "16", "--warmup-steps", "0", "--checkpoint-every", "100", "--n-samples", "0",
             "--n-draws", "1", "--device", "cpu"]


@pytest.mark.parametrize("extra, message", [
    (["--n-reference", "1"], "--n-reference must be at least 2"),
    (["--timestep", "1000"], r"--timestep must lie in \[0, 999\]"),
    (["--n-draws", "0"], r"--n-draws must lie in \[1, 1,000\]"),
    (["--n-samples", "8", "--sample-steps", "0"], "--sample-steps must lie in"),
    (["--n-samples", "8", "--rule", "l2", "--delta", "0"], "--delta must be in"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--subset", "1500", "--kind", "heldout", "--canary-pool", "digits"], r"of the 10 drawn candidates .* are training images"),
    (["--canary-pool", "digits"], "--canary-pool is read by --kind heldout only; --kind noise draws its canaries itself"),
    (["--dp-noise", "0.5", "--grad-clip", "2"], "--grad-clip does nothing under DP-SGD"),
    (["--dp-delta", "1e-5"], "--dp-delta given without --dp-noise or --dp-epsilon"),
])
def test_canaries_cli_refuses_unworkable_settings_before_writing_anything(tmp_path, capsys, extra, message):
    """These used to be refused only after model/ was trained; fixing the value then changed the settings,
    so the training was lost."""
    import re

    from diffaudit.cli.main import main

    out = tmp_path / "can"
    assert main(["--quiet"] + _CLI_BASE + extra + ["--out", str(out)]) == 2
    assert not out.exists()  # no settings recorded, no model trained: the corrected command starts afresh
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_the_result_line_gives_epsilon_as_the_report_does():
    """The line said "epsilon 8" where the report and compare said 7.995."""
    from diffaudit.cli.canaries import _dp_words

    assert "DP-SGD epsilon 7.995 at delta 0.0031" in _dp_words({"dp": {"epsilon": 7.99512, "delta": 0.003125}})
