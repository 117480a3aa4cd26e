"""Canary review fixes: held-out candidates are pairwise distinct (a pool that holds an image twice gave a
"never-inserted" reference identical to a canary); held-out canaries and references keep the pool's labels
(they were inserted under random classes); the references get the extraction fields too (the baseline a
canary's ``nearest_l2`` is compared with); an older ``canaries.json`` still resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.attacks.extraction.verification import VerifySettings
from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed, numpy_rng
from diffaudit.data.dataset import ImageDataset
from diffaudit.defenses.canaries import earlier_record, insert_canaries, make_canaries, reference_row
from diffaudit.defenses.canary_run import CanaryEval, _extraction, _labels_for, run_canary_experiment
from diffaudit.models.training import TrainConfig

#: Near pixel-perfect copies only (as in test_canaries.py): distinct 8x8 digits stay distinct.
PIXEL_COPIES = VerifySettings(rule="l2", delta=0.05)
TINY = dict(preset="tiny", steps=2, batch_size=8, warmup_steps=0, checkpoint_every=10_000, log_every=1)


def _twice(digits, idx: list[int]) -> ImageDataset:
    """The digits ``idx`` each held twice (pool:j and pool:j+len(idx)), with their labels."""
    imgs = np.concatenate([digits.images[idx], digits.images[idx]])
    labels = np.concatenate([digits.labels[idx], digits.labels[idx]])
    return ImageDataset(imgs, [f"pool:{i}" for i in range(len(imgs))], labels=labels, source="twice.npz")


def _pairwise_distinct(images: np.ndarray) -> bool:
    flat = images.reshape(len(images), -1)
    return len({row.tobytes() for row in flat}) == len(flat)


def test_a_pool_holding_images_twice_gives_pairwise_distinct_candidates(digits):
    """10 digits each twice: 8 candidates are drawn among the 20; a repeat of a kept one is replaced."""
    pool, train = _twice(digits, list(range(1500, 1510))), digits.subset(range(100))
    plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 8), n_reference=6, seed=0, pool=pool,
                         training=train, copy_rule=PIXEL_COPIES)
    assert _pairwise_distinct(np.concatenate([plan.images, plan.reference]))
    dups = [s for s in plan.skipped if "duplicate_of" in s]
    assert dups, plan.skipped  # seed 0 draws some image twice (pool:12 and pool:2, ...)
    index = pool.index_of()
    kept = set(plan.sources + plan.reference_sources)
    for s in dups:
        assert s["copy"] == "exact" and s["l2"] == 0.0 and s["duplicate_of"] in kept and s["source"] not in kept
        np.testing.assert_array_equal(pool.images[index[s["source"]]], pool.images[index[s["duplicate_of"]]])
    _, _, record = insert_canaries(train, plan)
    assert record["skipped_pool_images"] == plan.skipped  # canaries.json says what was left out, and why
    # 11 distinct images are not there: refused, saying why
    with pytest.raises(DiffauditError, match=r"nor copies of each other: 10 of the 11 needed .* as copies of another "
                                             r"drawn pool image .* without repeated images"):
        make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 8), n_reference=9, seed=0, pool=pool,
                      training=train, copy_rule=PIXEL_COPIES)


def test_a_near_duplicate_within_the_pool_is_replaced_by_the_copy_rule(digits):
    """A digit and a slightly noisy copy of it in the pool (not in training): the copy rule that calls a
    generation a copy calls the later-drawn one a near-duplicate of the other; it is replaced."""
    base = digits.images[1500:1530]
    noisy = np.clip(base[0].astype(np.float64) + numpy_rng(1).normal(0, 4.0, base[0].shape), 0, 255).round().astype(np.uint8)
    pool = ImageDataset(np.concatenate([base, noisy[None]]), [f"p/{i}" for i in range(31)], source="near.npz")
    train = digits.subset(range(500))
    replaced = []
    for seed in range(6):
        plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2), n_reference=20, seed=seed,
                             pool=pool, training=train)
        assert not {"p/0", "p/30"} <= set(plan.sources + plan.reference_sources)  # never both
        for s in plan.skipped:
            if "duplicate_of" in s:  # by the rule (same-writer digits are near-duplicates too): ratio <= 1
                assert s["copy"] == "near" and s["ratio"] <= 1 and s["duplicate_of"] in plan.sources + plan.reference_sources
        replaced += [s for s in plan.skipped if {s["source"], s.get("duplicate_of")} == {"p/0", "p/30"}]
    assert replaced and all(s["l2"] < 0.05 and s["ratio"] < 0.2 for s in replaced)  # drawn together: one replaced


def test_heldout_canaries_and_references_keep_the_pool_labels(digits):
    pool, train = digits.subset(range(1000, 1100)), digits.subset(range(200))
    plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2, 8), per_repeat=2, n_reference=5, seed=4,
                         pool=pool, training=train, copy_rule=PIXEL_COPIES)
    truth = {k: int(lab) for k, lab in zip(pool.keys, pool.labels)}
    assert plan.labels == [truth[s] for s in plan.sources]
    assert plan.reference_labels == [truth[s] for s in plan.reference_sources]
    combined, _, record = insert_canaries(train, plan)
    assert combined.labels[len(train):].tolist() == plan.labels  # trained as their own class
    assert [c["label"] for c in record["canaries"]] == plan.labels
    assert [r["label"] for r in record["reference"]] == plan.reference_labels
    can, ref = _labels_for(plan, record, train)  # what the loss conditions on
    assert can.tolist() == plan.labels and ref.tolist() == plan.reference_labels
    # noise canaries, and a pool without labels: labels drawn with the seed, as before
    drawn = numpy_rng(derive_seed(4, "canary-labels")).integers(0, 10, size=6).tolist()
    noise = make_canaries("noise", image_shape=digits.image_shape, repeats=(1, 2, 8), per_repeat=2, n_reference=5, seed=4)
    unlabelled = ImageDataset(pool.images, pool.keys, source=pool.source)
    bare = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 2, 8), per_repeat=2, n_reference=5, seed=4,
                         pool=unlabelled, training=train, copy_rule=PIXEL_COPIES)
    for p in (noise, bare):
        assert p.labels is None and p.reference_labels is None
        _, _, rec = insert_canaries(train, p)
        assert [c["label"] for c in rec["canaries"]] == drawn
        assert all("label" not in r for r in rec["reference"])  # the record earlier versions wrote
    # a pool whose labels are not the training set's classes is refused before anything is trained
    other = ImageDataset(pool.images, pool.keys, labels=pool.labels + 5, source=pool.source)
    with pytest.raises(DiffauditError, match=r"--canary-pool labels reach .* but --data has classes 0..9"):
        make_canaries("heldout", image_shape=digits.image_shape, repeats=(1,), n_reference=2, pool=other, training=train,
                      copy_rule=PIXEL_COPIES)
    renamed = ImageDataset(pool.images, pool.keys, labels=pool.labels, source=pool.source,
                           class_names=[f"c{i}" for i in range(10)])
    with pytest.raises(DiffauditError, match="are not --data's"):
        make_canaries("heldout", image_shape=digits.image_shape, repeats=(1,), n_reference=2, pool=renamed, training=train,
                      copy_rule=PIXEL_COPIES)
    # an unconditional model never reads labels: such pools are drawn as before, labels seeded
    for odd in (other, renamed):
        plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1,), n_reference=2, pool=odd,
                             training=train, copy_rule=PIXEL_COPIES, class_conditional=False)
        assert plan.labels is None and len(plan.keys) == 1


def test_references_get_the_extraction_fields_against_the_same_generations(digits):
    """Generations that copy a reference, a canary, and neither: the reference counts as extracted under the
    same rule (as if inserted), its nearest l2 is 0, and the canaries' own verification is unchanged."""
    pool, train = digits.subset(range(1000, 1100)), digits.subset(range(200))
    plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 8), n_reference=4, seed=2, pool=pool,
                         training=train, copy_rule=PIXEL_COPIES)
    combined, _, _ = insert_canaries(train, plan)
    samples = np.stack([plan.reference[2], plan.images[0], np.full(digits.image_shape, 128, np.uint8)])
    ev = CanaryEval(n_samples=3)
    ex = _extraction(samples, combined, plan, ev, "cpu")
    assert ex.canaries == [True, False] and ex.references == [False, False, True, False]
    assert ex.canary_l2[0] == 0 and ex.reference_l2[2] == 0 and (ex.reference_l2[[0, 1, 3]] > 0).all()
    row = reference_row(4, ex.references, ex.reference_l2)
    assert row["repeats"] == 0 and row["n"] == 4 and row["n_extracted"] == 1 and row["min_nearest_l2"] == 0
    assert row["mean_exposure"] is None  # references define exposure; they have none
    assert reference_row(4) == {"repeats": 0, "n": 4, "mean_exposure": None, "min_exposure": None, "max_exposure": None}


def test_canaries_cli_reports_the_reference_baseline(tmp_path, capsys):
    from diffaudit.cli.main import main

    out = tmp_path / "can"
    args = ["--json", "canaries", "--data", "digits", "--subset", "60", "--kind", "heldout", "--canary-pool", "digits",
            "--class-conditional", "--repeats", "1,8", "--n-reference", "6", "--steps", "2", "--batch-size", "8",
            "--warmup-steps", "0", "--checkpoint-every", "100", "--n-samples", "4", "--sample-steps", "2", "--n-draws", "1",
            "--rule", "l2", "--delta", "0.05", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_reference_extracted"] is not None and len(r["references"]) == 6
    for ref in r["references"]:
        assert ref["repeats"] == 0 and isinstance(ref["extracted"], bool) and 0 < ref["nearest_l2"] <= 1
    assert [row["repeats"] for row in r["curve"]] == [0, 1, 8]
    zero = r["curve"][0]
    assert zero["n"] == 6 and zero["n_extracted"] == r["n_reference_extracted"]
    assert zero["min_nearest_l2"] == pytest.approx(min(ref["nearest_l2"] for ref in r["references"]))
    assert r["curve"][1]["min_nearest_l2"] == pytest.approx(r["canaries"][0]["nearest_l2"])
    losses = [ref["loss"] for ref in r["references"]]
    assert r["reference_loss"]["std"] == pytest.approx(np.std(losses, ddof=1))  # as the Gaussian exposure's
    record = json.loads((out / "canaries.json").read_text())
    pool_labels = {k: int(v) for k, v in zip(*_digits_keys_labels())}
    assert [c["label"] for c in record["canaries"]] == [pool_labels[c["source"]] for c in record["canaries"]]
    assert [x["label"] for x in record["reference"]] == [pool_labels[x["source"]] for x in record["reference"]]
    # the report shows the references' row, the baseline the canaries' extraction is read against
    from html import unescape

    from diffaudit.report import build_summary, render_html

    assert build_summary(out)["canaries"]["references"] == {"n": 6, "n_extracted": r["n_reference_extracted"]}
    text = unescape(render_html(out))
    assert "0 (references, never inserted)</td><td>6</td>" in text
    assert f"{r['n_reference_extracted']} / 6 (the false-positive baseline)" in text


def _digits_keys_labels():
    from diffaudit.data import load_dataset

    d = load_dataset("digits")
    return d.keys, d.labels


def test_an_older_canaries_record_with_seeded_labels_still_resumes(digits, tmp_path):
    """A run an earlier version started (held-out canaries under seeded labels, references without a
    label) resumes with the labels its model was trained with; other canaries are still refused."""
    pool, train = digits.subset(range(1000, 1100)), digits.subset(range(60))
    plan = make_canaries("heldout", image_shape=digits.image_shape, repeats=(1, 4), n_reference=4, seed=1, pool=pool,
                         training=train, copy_rule=PIXEL_COPIES)
    config = TrainConfig(class_conditional=True, **TINY)
    ev = CanaryEval(n_samples=0, n_draws=1)
    out = tmp_path / "can"
    from dataclasses import replace

    old = run_canary_experiment(train, replace(plan, labels=None, reference_labels=None), config, out, evaluation=ev)
    saved = json.loads((out / "canaries.json").read_text())
    assert saved == earlier_record(train, plan)[2] and saved != insert_canaries(train, plan)[2]
    weights = out / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    (out / "losses.npz").unlink()  # recomputed with the labels the record holds
    again = run_canary_experiment(train, plan, config, out, evaluation=ev)
    assert weights.stat().st_mtime_ns == stamp  # nothing retrained
    assert json.loads((out / "canaries.json").read_text()) == saved
    assert [c["loss"] for c in again["canaries"]] == pytest.approx([c["loss"] for c in old["canaries"]])
    assert [c["loss"] for c in again["references"]] == pytest.approx([c["loss"] for c in old["references"]])
    saved["canaries"][0]["repeats"] = 2
    (out / "canaries.json").write_text(json.dumps(saved))
    with pytest.raises(DiffauditError, match="records other canaries; use --fresh"):
        run_canary_experiment(train, plan, config, out, evaluation=ev)
