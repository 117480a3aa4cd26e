"""Every plot's alt text says what the plot shows, in numbers, from the values the plot draws; escaped.

The old alt texts were labels ("log-log ROC curves", "timestep sweep", "inpainting distances", "canary
curve"): a reader who cannot see the image learnt nothing. ``make_audit`` (tests/test_report.py) writes
an audit folder as the commands do: a scores file for the loss attack, inline ROC points for LiRA, a
timestep sweep, inpainting targets, canaries and a training-loss log.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.io import write_json_atomic
from diffaudit.evaluation.roc import roc_curve, tpr_at_fpr
from diffaudit.report import render_html
from diffaudit.report.alt_text import curve_tpr
from test_report import IMG, Page, make_audit


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> Path:
    return make_audit(tmp_path_factory.mktemp("alt"))


@pytest.fixture(scope="module")
def plots(audit) -> dict[str, dict]:
    """The plot images of the report, by the section they are in."""
    html = render_html(audit)
    out = {}
    for section in ("mia", "inpainting", "canaries", "training"):
        start = html.index(f'<section id="{section}">')
        for i, img in enumerate(Page(html[start:html.index("</section>", start)]).images("plot")):
            out[f"{section}.{i}"] = img
    return out


def test_every_data_plot_alt_holds_numbers(plots):
    assert set(plots) == {"mia.0", "mia.1", "inpainting.0", "canaries.0", "training.0"}
    for key in ("mia.0", "mia.1", "inpainting.0", "canaries.0", "training.0"):
        alt = plots[key]["alt"]
        assert len(re.findall(r"\d+\.\d+", alt)) >= 3, (key, alt)


def test_the_roc_alt_reads_auc_and_tpr_from_the_drawn_curves(audit, plots):
    alt = plots["mia.0"]["alt"]
    with np.load(audit / "mia-loss" / "scores.npz") as z:
        tpr = tpr_at_fpr(z["score"], z["member"], 0.01)
    assert alt.startswith("Log-log ROC curves of 2 membership attacks (true against false positive rate; the dashed "
                          "diagonal is chance): ")
    assert "Membership inference, best TPR at 1% FPR" in render_html(audit)  # the best of the two on the card
    # 200 non-members cannot resolve 0.1% FPR; LiRA's inline points can (1,000 non-members)
    assert f"loss: AUC 0.761, TPR {100 * tpr:.1f}% at 1.0% FPR, n/a at 0.1% FPR" in alt
    assert "lira: AUC 0.934, TPR 31.0% at 1.0% FPR, 12.0% at 0.1% FPR" in alt


def test_the_sweep_alt_names_the_best_timestep(plots):
    assert plots["mia.1"]["alt"] == (
        "Attack success over the diffusion timestep t (shaded: t in [50, 300], the paper's best; dashed: chance, AUC 0.5 "
        "and TPR 1%): loss (t = 10 to 600, 5 timesteps): AUC from 0.600 to 0.760, highest at t = 100; TPR at 1% FPR "
        "from 1.0% to 5.5%, highest at t = 100.")


def test_the_inpainting_histogram_alt_gives_both_groups(plots):
    assert plots["inpainting.0"]["alt"] == ("Histogram of the mean ℓ2 of the 10 best inpaintings per target: 2 members, "
                                            "mean 0.075 (0.060 to 0.090); 1 non-member, mean 0.250.")


def test_the_canary_alt_gives_exposure_and_extraction_per_repeat_count(plots):
    """make_audit's canaries: exposure log2(r) + 0.5 j for j = 0, 1, 2; extracted from 16 repeats."""
    assert plots["canaries.0"]["alt"] == (
        "Canary exposure (bits) against the repeats in training, and the fraction extracted: 1 repeat: 3 canaries, mean "
        "exposure 0.500 bits, 0 of 3 extracted; 4 repeats: 3 canaries, mean exposure 2.500 bits, 0 of 3 extracted; "
        "16 repeats: 3 canaries, mean exposure 4.500 bits, 3 of 3 extracted; 64 repeats: 3 canaries, mean exposure "
        "6.500 bits, 3 of 3 extracted.")


def test_the_training_loss_alt_gives_the_curve_in_numbers(plots):
    assert plots["training.0"]["alt"] == (
        "Training loss over 30 logged points, step 0 to 290: 1.000 at the first, 0.065 at the last, lowest 0.065.")


def test_names_in_an_alt_text_are_escaped(tmp_path):
    """An attack name from a result file is text in the alt attribute, never markup."""
    fpr, tpr = [0.0, 0.01, 0.1, 1.0], [0.0, 0.2, 0.6, 1.0]
    write_json_atomic(tmp_path / "result.json", {
        "schema_version": 1, "command": "mia", "settings": {}, "seeds": {}, "versions": {}, "attack": IMG + '" x="',
        "auc": 0.8, "tpr_at_fpr": {"0.01": 0.2}, "n_members": 100, "n_nonmembers": 100, "roc": {"fpr": fpr, "tpr": tpr}})
    html = render_html(tmp_path)
    (alt,) = [a["alt"] for a in Page(html).images("plot")]
    assert alt.startswith("Log-log ROC curve of the membership attack") and f'{IMG}" x=": AUC 0.800, TPR 20.0% at 1.0% FPR' in alt
    assert IMG not in html and '" x="' not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1), st.sampled_from([0.01, 0.05, 0.1, 0.5]))
def test_the_tpr_read_from_the_curve_is_the_evaluations(n_pos, n_neg, seed, target):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 8, n_pos + n_neg).astype(float)  # ties included
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    curve = roc_curve(scores, labels)
    assert curve_tpr(curve.fpr, curve.tpr, target, n_neg) == tpr_at_fpr(scores, labels, target)



def test_the_sweep_alt_says_a_panel_is_empty():
    """With fewer than 100 non-members TPR at 1% FPR is not measured at any t: the figure's right panel says
    "not measured", and so does its alt text."""
    from diffaudit.report.alt_text import sweep_alt

    alt = sweep_alt([("loss", [10, 100], [0.6, 0.7], [None, None])])
    assert alt.endswith("AUC from 0.600 to 0.700, highest at t = 100. The TPR at 1% FPR panel is empty: not measured, "
                        "it needs 100 or more non-members.")
    assert "empty" not in sweep_alt([("loss", [10, 100], [0.6, 0.7], [None, 0.05])])
