"""A canary test against chance that cannot reach p < 0.05 says so, instead of "at chance".

A user's `diffaudit canaries --repeats 1,4,16 --n-reference 16` (one canary per repeat count) put its x16
canary at loss 0.215, far below the lowest of 16 references (0.797; 7 to 41 bits by the Gaussian
extrapolation), yet the report showed "p = 0.059 (at chance)", the command printed "no repeat count above
chance" and the note read "a repeat count at chance shows no memorization". With one canary among 16
references the least p the test can give is 1/17 = 0.059, so that verdict was certain whatever the model
learnt. The folders here are written as that command writes them, exposures computed by its own functions.

Also: the "none extracted" canary verdict says what that does not rule out right after the finding, not
after the aside on how training images are counted (whose "That" it then seemed to be).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from diffaudit.core.results import write_result
from diffaudit.defenses.canaries import exposure, exposure_gaussian, max_exposure
from diffaudit.report import build_summary, render_html
from diffaudit.report.view_extraction import NOT_RULED_OUT, verdict

# The walkthrough's losses: 16 references from 0.797 up, and the canaries inserted 1, 4 and 16 times.
REFERENCE_LOSS = np.linspace(0.797, 1.15, 16)
CANARY_LOSS = {1: 0.8835, 4: 0.7075, 16: 0.2152}


def _canaries(root: Path, losses: dict[int, tuple[float, ...]], reference_loss: np.ndarray = REFERENCE_LOSS) -> Path:
    """A canaries result folder: per repeat count, its canaries' losses against ``reference_loss``."""
    repeats = [r for r in losses for _ in losses[r]]
    loss = np.array([v for r in losses for v in losses[r]])
    exp, gauss = exposure(loss, reference_loss), exposure_gaussian(loss, reference_loss)
    cans = [{"key": f"canary/noise/{i:04d}", "kind": "noise", "repeats": r, "loss": float(v), "exposure": float(e),
             "exposure_gaussian": float(g), "extracted": False}
            for i, (r, v, e, g) in enumerate(zip(repeats, loss, exp, gauss))]
    refs = [{"key": f"reference/noise/{i:04d}", "kind": "noise", "extracted": False} for i in range(len(reference_loss))]
    n_ref = len(reference_loss)
    curve = [{"repeats": r, "n": len(losses[r]), "mean_exposure": float(exp[np.array(repeats) == r].mean()),
              "max_exposure": float(exp[np.array(repeats) == r].max())} for r in losses]
    write_result(root / "result.json", "canaries", {"repeats": list(losses), "per_repeat": len(losses[repeats[0]]),
                                                    "n_reference": n_ref}, {"seed": 0},
                 kind="noise", n_train=100, n_canaries=len(cans), n_reference=n_ref, max_exposure=max_exposure(n_ref),
                 canaries=cans, references=refs, curve=curve, n_extracted=0, n_reference_extracted=0)
    return root


def _section(html: str) -> str:
    start = html.index('<section id="canaries">')
    text = re.sub(r"<[^>]+>", " ", html[start:html.index("</section>", start)])
    return " ".join(text.replace("&lt;", "<").replace("&#39;", "'").split())


def test_the_least_p_of_one_canary_is_one_over_the_references_plus_one():
    from diffaudit.evaluation.exposure_chance import needed_to_test, smallest_pvalue

    assert smallest_pvalue(1, 16) == pytest.approx(1 / 17)
    assert smallest_pvalue(1, 20) < 0.05 <= smallest_pvalue(1, 19)
    assert needed_to_test(1, 16) == {"n_reference": 20, "n_canaries": 2}
    assert needed_to_test(1, 64) == {"n_reference": 64, "n_canaries": 1}  # already testable: as they are


def test_the_exposure_p_is_exact_under_ties():
    """k canaries at the ceiling tie each other: the normal approximation gave 2 among 5 references p = 0.039
    where exactly 1 / C(7, 2) = 0.048 of the orderings rank them so low, and 2 among 4 p < 0.05 where 1 / 15 of
    them do (a test that cannot reach 0.05 said it could). Untied values agree with scipy's exact test, and
    counts past the exact computation's budget fall back to the approximation."""
    import math

    import numpy as np
    from scipy.stats import mannwhitneyu

    from diffaudit.evaluation import exposure_chance as ec
    from diffaudit.evaluation.rank_sum import rank_sum_pvalue

    for k, n in [(2, 5), (2, 4), (3, 16), (5, 10)]:
        exact = 1 / math.comb(n + k, k)
        assert ec.exposure_pvalue([math.log2(n + 1)] * k, n) == pytest.approx(exact) == ec.smallest_pvalue(k, n)
    assert not ec.testable(2, 4) and ec.testable(2, 5)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4), rng.normal(size=9)
    assert rank_sum_pvalue(a, b) == pytest.approx(mannwhitneyu(a, b, alternative="less", method="exact").pvalue)
    # a canary tied with the lowest reference (rank 1.5): 2 of the 6 values rank that low (midranks, where
    # scipy's exact test refuses ties)
    assert ec.exposure_pvalue([math.log2(6) - math.log2(1.5)], 5) == pytest.approx(2 / 6)
    assert rank_sum_pvalue(np.zeros(40), np.arange(5000.0)) is None  # past its EXACT_WORK
    assert 0 < ec.exposure_pvalue([math.log2(5001)] * 40, 5000) < 1e-9


def test_an_untestable_repeat_count_is_not_called_at_chance(tmp_path):
    root = _canaries(tmp_path, {r: (v,) for r, v in CANARY_LOSS.items()})
    text = _section(render_html(root))
    assert "at chance)" not in text
    assert "16 1 ≥ 4.087 ≥ 4.087 at the ceiling (1 of 1) p = 0.059 (cannot be tested: too few canaries or references)" in text
    assert ("The test against chance cannot find memorization at repeat counts 1, 4 and 16: with 1 canary each and 16 "
            "references, the least p it can give, every canary's loss below every reference's, is 0.059, not below "
            "0.05, whatever the model learnt. Their p of 0.05 or more is therefore no sign that their canaries were "
            "not memorized") in text
    assert "run `diffaudit canaries` with --n-reference 20 or more, or --per-repeat 2 or more." in text
    rows = build_summary(root)["canaries"]["by_repeats"]
    assert [r["chance_pvalue"] for r in rows][1:] == pytest.approx([1 / 17, 1 / 17])  # 4x, 16x: below every reference
    assert all(r["chance_min_pvalue"] == pytest.approx(1 / 17) for r in rows)
    assert all(r["chance_needs"] == {"n_reference": 20, "n_canaries": 2} for r in rows)


def test_a_testable_repeat_count_at_chance_stays_at_chance(tmp_path):
    """Two canaries among 16 references can reach p < 0.05 (1 / C(18, 2) = 0.0065 below every reference): p ≥ 0.05 there
    is a test the canaries failed, and the report says at chance, as before."""
    root = _canaries(tmp_path, {1: (0.9, 1.0), 16: (0.2, 0.3)})
    rows = build_summary(root)["canaries"]["by_repeats"]
    assert [r.get("chance_needs") for r in rows] == [None, None]
    text = _section(render_html(root))
    assert "(at chance)" in text and "cannot be tested" not in text and "cannot find memorization" not in text


def test_the_canaries_result_line_says_the_test_cannot_be_made(tmp_path):
    """`diffaudit canaries`' last line: not "no repeat count above chance" when none could be."""
    from diffaudit.cli.canaries import _curve_line

    root = _canaries(tmp_path, {r: (v,) for r, v in CANARY_LOSS.items()})
    line = _curve_line(json.loads((root / "result.json").read_text()))
    assert "no repeat count above chance" not in line
    assert ("1x, 4x, 16x: not testable against chance (with 1 canary each and 16 references p is at least 0.059, never "
            "below 0.05, whatever the model learnt; --n-reference 20 or --per-repeat 2 can test them)") in line


CLI = ["canaries", "--data", "digits", "--image-size", "8", "--subset", "60", "--repeats", "1,4,16", "--per-repeat", "1",
       "--steps", "3", "--batch-size", "16", "--warmup-steps", "0", "--n-samples", "0", "--n-draws", "1", "--device", "cpu"]


@pytest.mark.parametrize("n_reference, warned", [("16", True), ("20", False)])
def test_canaries_warns_before_training_when_no_repeat_count_can_beat_chance(tmp_path, capsys, monkeypatch, n_reference,
                                                                             warned):
    import diffaudit.cli.canaries as canaries_cli
    from diffaudit.cli.main import main
    from diffaudit.core.errors import DiffauditError

    def not_trained(*args, **kwargs):
        raise DiffauditError("stopped before training")

    monkeypatch.setattr(canaries_cli, "run_canary_experiment", not_trained)
    assert main(CLI + ["--n-reference", n_reference, "--out", str(tmp_path / "can")]) == 2
    err = capsys.readouterr().err
    assert "stopped before training" in err
    warning = ("diffaudit canaries: warning: with --per-repeat 1 and --n-reference 16 the test of exposure against chance "
               "cannot reach p < 0.05 for any repeat count: even canaries whose loss is below every reference's give "
               "p = 0.059")
    assert (warning in err) is warned and ("--n-reference 20 or --per-repeat 2" in err) is warned
    if warned:
        assert err.index(warning) < err.index("stopped before training")


def test_no_canary_extracted_says_what_that_does_not_rule_out_right_after(tmp_path):
    s = build_summary(_canaries(tmp_path, {r: (v,) for r, v in CANARY_LOSS.items()}))
    text = verdict(s["extraction"], canaries=s["canaries"])["text"]
    assert text.startswith(f"No inserted canary was extracted (0 of 3). {NOT_RULED_OUT} The generations were verified")
    assert text.endswith("(the canaries result's n_train counts --data's images alone).")
