"""Canaries: drawn from seeds, inserted the requested number of times, recorded; exposure maths; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed
from diffaudit.data.dataset import ImageDataset
from diffaudit.defenses.canaries import (
    exposure,
    exposure_curve,
    exposure_gaussian,
    insert_canaries,
    make_canaries,
    noise_image,
)
from diffaudit.models.training import expand_repeats


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
    pool = digits.subset(range(100, 160))
    plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2), n_reference=10, seed=1, pool=pool)
    assert set(plan.sources + plan.reference_sources) <= set(pool.keys)
    assert len(set(plan.sources + plan.reference_sources)) == 12
    with pytest.raises(DiffauditError, match="need a pool"):
        make_canaries("heldout", image_shape=(8, 8, 1))
    with pytest.raises(DiffauditError, match="12 are needed"):
        make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2), n_reference=10, pool=digits.subset(range(5)))
    with pytest.raises(DiffauditError, match="same size"):
        make_canaries("heldout", image_shape=(16, 16, 1), repeats=(1,), n_reference=2, pool=pool)
    with pytest.raises(DiffauditError, match="unknown canary kind"):
        make_canaries("stripes", image_shape=(8, 8, 1))
    with pytest.raises(DiffauditError, match="positive"):
        make_canaries("noise", image_shape=(8, 8, 1), repeats=(0, 2))


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


def test_exposure_bounds_and_examples():
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    e = exposure(np.array([0.5, 8.5, 4.5, 4.0]), ref)
    np.testing.assert_allclose(e, [3.0, 3.0 - np.log2(9), 3.0 - np.log2(5), 3.0 - np.log2(4.5)])
    g = exposure_gaussian(np.array([-10.0, 4.5]), ref)
    assert g[0] > 3.0 and g[1] == pytest.approx(1.0, abs=1e-9)  # beyond log2|R|; mean loss -> 1 bit
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
    assert (e <= np.log2(len(ref)) + 1e-12).all() and (e >= np.log2(len(ref)) - np.log2(len(ref) + 1) - 1e-12).all()
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
    assert [c["repeats"] for c in r["canaries"]] == [1, 1, 8, 8]
    for c in r["canaries"]:
        assert set(c) >= {"key", "kind", "repeats", "loss", "exposure", "extracted"} and c["kind"] == "noise"
        assert 3.0 - np.log2(9) - 1e-9 <= c["exposure"] <= 3.0 and isinstance(c["extracted"], bool)
        assert 0 <= c["nearest_l2"] <= 1
    assert [row["repeats"] for row in r["curve"]] == [1, 8] and r["curve"][0]["n"] == 2
    # the membership record and the training run agree on what was inserted how often
    record = json.loads((out / "canaries.json").read_text())
    ids = json.loads((out / "model" / "train_ids.json").read_text())
    assert ids["repeats"] == {c["key"]: c["repeats"] for c in record["canaries"]}
    assert all(c["key"] in ids["keys"] for c in record["canaries"])
    assert not any(ref["key"] in ids["keys"] for ref in record["reference"])
    # finished: a re-run returns at once
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["canaries"] == r["canaries"]


def test_insert_canaries_shape_mismatch(digits):
    plan = make_canaries("noise", image_shape=(4, 4, 1), repeats=(1,), n_reference=2)
    with pytest.raises(DiffauditError, match="canaries are"):
        insert_canaries(ImageDataset(digits.images[:3], digits.keys[:3]), plan)


def test_summary_line_says_when_extraction_was_not_tested():
    from diffaudit.cli.canaries import _extracted

    assert _extracted({"n_extracted": None}) == "extraction not tested (--n-samples 0)"  # not "None extracted"
    assert _extracted({"n_extracted": 0}) == "0 extracted"
