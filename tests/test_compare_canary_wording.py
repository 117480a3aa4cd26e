"""Wording found in a user walkthrough: ``compare`` concludes nothing about privacy from an attack at
chance or saturated, and warns about canary runs whose exposures do not compare; a bootstrap interval of
width zero at the end of the range is said to be perfect separation, not too few examples; a canary pool
refused for near-duplicates alone says so and how to set the rule; canary counts agree in number; the
timestep-sweep alt text names every timestep tied for the highest value."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffaudit.attacks.extraction.verification import VerifySettings
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.core.results import write_result
from diffaudit.defenses.compare import compare_summaries
from diffaudit.report.compare_table import format_rows


def _mia(auc: float, nonmembers_loss: float, ci=None) -> dict:
    """A summary with one loss attack: its AUC (and [low, high] interval), its held-out loss."""
    entry = {"auc": auc, "tpr_at_fpr": {"0.01": auc / 2, "0.001": None}, "n_nonmembers": 1765,
             "mean_loss": {"members": 0.01, "nonmembers": nonmembers_loss, "gap": nonmembers_loss - 0.01}}
    if ci is not None:
        entry["ci"] = {"auc": {"low": ci[0], "high": ci[1]}}
    return {"mia": {"loss": entry}}


def _table(a: dict, b: dict) -> str:
    return format_rows(compare_summaries(a, b), "plain", "dp")


def test_a_loss_rise_against_a_model_attacked_at_chance_concludes_nothing():
    """audit-plain against audit-dp: both at chance, the DP model's loss 1.58x higher. There was no
    measured leakage to remove, so neither "bought no privacy" nor "bought privacy" can be said."""
    text = _table(_mia(0.518, 0.5427, ci=(0.479, 0.555)), _mia(0.479, 0.8563, ci=(0.436, 0.520)))
    assert "dp's model denoises never-seen images 1.58x worse than plain's" in text
    assert "bought no" not in text and "is bought" not in text
    assert ("but the attack cannot tell what that bought: plain's model is itself attacked at chance (AUC 0.518 "
            "[0.479, 0.555], an interval that holds 0.5), so there was no measured leakage to remove") in text
    # without an interval, the summary's notion of chance: an AUC below 0.6
    assert "AUC 0.550, below 0.6 (no interval recorded)" in _table(_mia(0.55, 0.5), _mia(0.54, 0.9))
    # a side attacked at chance beside one attacked measurably better: the lost quality did buy nothing
    worse = _table(_mia(0.518, 0.5427, ci=(0.479, 0.555)), _mia(0.9, 0.8563, ci=(0.85, 0.95)))
    assert "yet it is attacked no less well (AUC 0.900 against 0.518): the quality it lost bought no privacy" in worse
    # a model at chance after the rise, beside one that leaked: the defence's reading stands
    dp = _table(_mia(0.95, 0.5427, ci=(0.9, 0.99)), _mia(0.5, 0.8563, ci=(0.45, 0.55)))
    assert "its lower leakage (AUC 0.500 against 0.950) is bought, at least in part, with sample quality" in dp


def test_a_loss_rise_between_two_saturated_attacks_concludes_nothing():
    """audit-m against audit-m-long: AUC 1.000 on both; the attack cannot show a difference."""
    text = _table(_mia(1.0, 0.7317, ci=(1.0, 1.0)), _mia(1.0, 0.8549, ci=(1.0, 1.0)))
    assert "bought no" not in text
    assert ("but the attack cannot tell what that bought: it identifies every member of both (AUC 1.000 against "
            "1.000), so it is saturated") in text
    # one side below 1.0 within noise is no saturation: the reading as before
    near = _table(_mia(1.0, 0.7317, ci=(1.0, 1.0)), _mia(0.99, 0.8549, ci=(0.97, 1.0)))
    assert "attacked about as well (AUC 0.990 against 1.000, within noise)" in near


def test_the_compare_note_on_intervals_every_resample_agreed_on_says_why():
    perfect = _table(_mia(1.0, 0.7, ci=(1.0, 1.0)), _mia(1.0, 0.71, ci=(1.0, 1.0)))
    assert ("[x, x]: every bootstrap resample gave the same value (at 1.000 or 100%: the attack identifies every one "
            "of these members, and resampling them cannot bound a perfect score from below): not certainty") in perfect
    assert "too few examples" not in perfect
    inside = _table(_mia(0.75, 0.7, ci=(0.75, 0.75)), _mia(0.9, 0.71, ci=(0.8, 0.97)))
    assert "[x, x]: every bootstrap resample gave the same value (too few examples to bound it): not certainty" in inside
    both = _table(_mia(0.0, 0.7, ci=(0.0, 0.0)), _mia(0.75, 0.71, ci=(0.75, 0.75)))
    assert "(at 0: the attack identifies none of these members" in both and "; elsewhere: too few examples" in both


def _canaries(root, kind: str, n_reference: int):
    """A canaries result folder as the command writes it (settings with --kind and --n-reference)."""
    settings = {"data": "digits", "data_options": {"subset": 64}, "kind": kind, "n_reference": n_reference,
                "data_digest": "900bc87329e5fb12"}
    cans = [{"key": "canary/x/0000", "repeats": 1, "exposure": 1.0, "extracted": False}]
    write_result(root / "result.json", "canaries", settings, {"seed": 0}, kind=kind, n_train=64, n_canaries=1,
                 n_reference=n_reference, max_exposure=math.log2(n_reference + 1), n_extracted=0, canaries=cans, curve=[])
    return root


def _compare(capsys, a, b) -> tuple[list[str], str]:
    assert main(["--json", "compare", str(a), str(b), "--labels", "a,b"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)["warnings"], captured.err


def test_compare_warns_about_canary_runs_of_another_kind_or_reference_count(tmp_path, capsys):
    heldout = _canaries(tmp_path / "h1", "heldout", 16)
    warnings, err = _compare(capsys, heldout, _canaries(tmp_path / "noise", "noise", 16))
    assert len(warnings) == 1 and warnings[0].startswith(
        "a and b inserted canaries of different kinds, a heldout and b noise (--kind)")
    assert "compare runs of the same --kind" in warnings[0] and err == f"diffaudit compare: warning: {warnings[0]}\n"
    warnings, _ = _compare(capsys, heldout, _canaries(tmp_path / "h64", "heldout", 64))
    assert len(warnings) == 1 and warnings[0].startswith(
        "a and b measured exposure against different numbers of never-inserted references, a 16 and b 64 "
        "(--n-reference): their exposure ceilings, log2(n_reference + 1), differ (4.087 and 6.022 bits)")
    assert len(_compare(capsys, heldout, _canaries(tmp_path / "n64", "noise", 64))[0]) == 2
    assert _compare(capsys, heldout, _canaries(tmp_path / "same", "heldout", 16)) == ([], "")


@pytest.fixture(scope="module")
def digits16():
    """What `--data digits --subset 64 --image-size 16` trains on, and `--canary-pool digits` at that size."""
    from diffaudit.data import load_dataset

    return load_dataset("digits", subset=64, image_size=16), load_dataset("digits", image_size=16)


def test_a_pool_refused_for_near_duplicates_alone_says_so_and_how_to_set_the_rule(digits16):
    """The walkthrough's command: 4 of the 5 drawn digits are near-duplicates by the ratio rule, none a
    training image; the message blamed the pool. It now says neither is exact and what to change."""
    from diffaudit.defenses.canaries import make_canaries

    train, pool = digits16
    with pytest.raises(DiffauditError) as caught:
        make_canaries("heldout", image_shape=train.image_shape, repeats=(1,), n_reference=4, pool=pool, training=train)
    msg = str(caught.value)
    assert "overlaps the training data" not in msg
    assert msg.startswith("--canary-pool images are too near the training data by the copy rule, though none of those "
                          "drawn is a training image: 4 of the 5 drawn candidates (1 of 1 canary, 3 of 4 never-inserted "
                          "references) are near-duplicates of one: 0 exact copies")
    assert "among 64 training images of 16x16 px distinct images of a common kind can be that near" in msg
    assert "then pass --rule l2 --delta D, D below the near-duplicates' l2 (0.0896 to 0.1448)" in msg
    assert "this refusal rests on the first 5 candidates drawn (canaries + --n-reference)" in msg
    # either way out the message names works
    for rule, n_reference in ((VerifySettings(rule="l2", delta=0.08), 4), (None, 60)):
        plan = make_canaries("heldout", image_shape=train.image_shape, repeats=(1,), n_reference=n_reference, pool=pool,
                             training=train, copy_rule=rule)
        assert not set(plan.sources + plan.reference_sources) & set(train.keys)
    with pytest.raises(DiffauditError, match=r"then pass a smaller --delta D, D below the near-duplicates' l2"):
        make_canaries("heldout", image_shape=train.image_shape, repeats=(1,), n_reference=4, pool=pool, training=train,
                      copy_rule=VerifySettings(rule="l2", delta=0.3))


def test_a_pool_that_holds_the_training_images_is_still_said_to_overlap(digits16):
    from diffaudit.defenses.canaries import make_canaries

    train, _ = digits16
    with pytest.raises(DiffauditError) as caught:
        make_canaries("heldout", image_shape=train.image_shape, repeats=(1, 2), n_reference=20, pool=train, training=train)
    msg = str(caught.value)
    assert msg.startswith("--canary-pool overlaps the training data: 22 of the 22 drawn candidates (2 of 2 canaries, "
                          "20 of 20 never-inserted references) are training images: 22 exact copies")
    assert "Use a pool disjoint from --data" in msg and "the near-duplicates decide it" not in msg


def test_the_skipped_pool_images_line_agrees_in_number(capsys):
    from diffaudit.cli.canaries import _say_skipped

    near = {"source": "p/1", "copy": "near", "l2": 0.05, "ratio": 0.8, "nearest": "t/1"}
    exact = {"source": "p/2", "copy": "exact", "l2": 0.0, "ratio": 0.0, "nearest": "t/2"}
    twice = {"source": "p/3", "copy": "near", "l2": 0.01, "ratio": 0.5, "duplicate_of": "p/4"}
    _say_skipped([near] * 12 + [exact])
    assert capsys.readouterr().err == ("canaries: 13 drawn --canary-pool images are training images (12 near-duplicates, "
                                       "1 exact copy) and were replaced by others; canaries.json lists them\n")
    _say_skipped([near, twice])
    assert capsys.readouterr().err == (
        "canaries: 1 drawn --canary-pool image is a training image (1 near-duplicate, 0 exact copies) and was replaced "
        "by another; canaries.json lists it\n"
        "canaries: 1 drawn --canary-pool image copies another drawn pool image (the pool holds it twice, or a "
        "near-duplicate of it) and was replaced by another; canaries.json lists it\n")


def test_the_canary_verdict_agrees_in_number_and_says_what_the_training_count_holds():
    from diffaudit.report.view_extraction import canary_verdict

    one = canary_verdict({"n_canaries": 3, "n_extracted": 1})["text"]
    assert one.startswith("Yes: 1 of 3 inserted canaries was extracted: generations reproduce it.")
    assert canary_verdict({"n_canaries": 3, "n_extracted": 2})["text"].startswith(
        "Yes: 2 of 3 inserted canaries were extracted: generations reproduce them.")
    assert canary_verdict({"n_canaries": 1, "n_extracted": 1})["text"].startswith(
        "Yes: 1 of 1 inserted canary was extracted: generations reproduce it.")
    assert canary_verdict({"n_extracted": 1})["text"].startswith("Yes: 1 inserted canary was extracted")
    # the run's 64 images and 3 canaries: the report counts 67 training images, the canaries result n_train 64
    assert ("The model's training images, as this report counts them, include the 3 canaries, each once however many "
            "times it was inserted (the canaries result's n_train counts --data's images alone).") in one
    assert "include the 2 canaries" in canary_verdict({"n_canaries": 2, "n_extracted": 0})["text"]


def test_the_sweep_alt_names_the_timesteps_tied_for_the_highest_value_first_as_the_mia_result_does():
    """The walkthrough's sweep: AUC 1.0 at t = 50 and 100 (best_timestep 50), TPR 100% at t = 10 to 200;
    the alt text said "highest at t = 100" and "at t = 200"."""
    from diffaudit.evaluation.timestep_sweep import evaluate_sweep
    from diffaudit.report.alt_text import sweep_alt

    labels = np.array([True, True, False, False])
    scores = {10: [0.9, 0.2, 0.5, 0.1], 50: [0.9, 0.8, 0.5, 0.1], 100: [0.7, 0.8, 0.5, 0.1], 200: [0.1, 0.2, 0.5, 0.9]}
    sweep = evaluate_sweep({t: np.array(s) for t, s in scores.items()}, labels, attack="loss").to_dict()
    assert sweep["best_timestep"] == 50
    text = sweep_alt([("loss", sweep["timesteps"], sweep["auc"], [1.0, 1.0, 1.0, 0.5])])
    assert "AUC from 0.000 to 1.000, highest at t = 50 and 100 (tied)" in text
    assert "TPR at 1% FPR from 50.0% to 100.0%, highest at t = 10 to 100 (tied)" in text
    assert "highest at t = 10, 50 and 200 (tied)" in sweep_alt([("x", [10, 50, 100, 200], [0.9, 0.9, 0.5, 0.9], [])])
    assert "highest at t = 50;" in sweep_alt([("x", [10, 50], [0.6, 0.9], [0.1, None])]) + ";"


def test_the_canary_verdict_weighs_the_canaries_against_the_never_inserted_references():
    from diffaudit.report.view_extraction import canary_verdict

    # 1 of 3 canaries matched, 0 of 16 references: chance gives that with p = 3/19
    weak = canary_verdict({"n_canaries": 3, "n_extracted": 1, "references": {"n": 16, "n_extracted": 0}})
    assert weak["level"] == "unsure" and weak["text"].startswith(
        "Inconclusive: 1 of 3 inserted canaries was matched, against 0 of the 16 never-inserted references (the "
        "false-positive baseline; one-sided Fisher exact test, p = 0.16): not significantly above the references")
    strong = canary_verdict({"n_canaries": 8, "n_extracted": 6, "references": {"n": 16, "n_extracted": 0}})
    assert strong["level"] == "yes" and strong["text"].startswith(
        "Yes: 6 of 8 inserted canaries were extracted, against 0 of the 16 never-inserted references")
