"""The outlier correlation of a membership attack that separates members from non-members perfectly.

At AUC 1.0 every member scores above every non-member: all are identified, so outliers are neither more
nor less exposed. The outliers stage still correlates outlier score with each member's raw score (for the
loss attack, its negative loss), which varies with how easily the model denoises each image: the report
must not read that as exposure. A real CPU audit on 8 digits (400 steps, --seed 1) gives AUC 1.0 with
rho 0.643, p 0.086 (and another seed AUC 0.9997 with rho -0.595): the folders here are written as
`diffaudit audit` writes them, with a significant rho, which the old report called "outliers are more
exposed here".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html
from test_report import Page, _envelope


def _audit(root: Path, auc: float, attack: str = "loss", rho: float = 0.9, pvalue: float = 0.002,
           k: int = 1000, n_images: int | None = None) -> Path:
    """An audit folder with a ``mia`` stage of AUC ``auc`` (8 members, 1,789 non-members) and the outliers
    stage that correlated its members' scores."""
    write_json_atomic(root / "audit.json", {"settings": {"data": "digits"}, "seeds": {"seed": 1}})
    ci = {"auc": {"low": min(auc, 1.0), "high": 1.0, "level": 0.95}}
    write_json_atomic(root / "mia" / "result.json", _envelope(
        "mia", {"data": "digits"}, {"seed": 1}, attack=attack, auc=auc, ci=ci, tpr_at_fpr={"0.01": 1.0, "0.001": 1.0},
        n_members=8, n_nonmembers=1789))
    bins = [{"outlier_lo": 0.39 + i / 40, "outlier_hi": 0.415 + i / 40, "n": 2, "mean_mia_score": -0.1 + i / 100} for i in range(4)]
    write_json_atomic(root / "outliers" / "result.json", _envelope(
        "outliers", {"k": 1000}, {"seed": 1}, population="member", k=k,
        spearman={"rho": rho, "pvalue": pvalue, "n": 8}, bins=bins, **({} if n_images is None else {"n_images": n_images})))
    return root


def _text(html: str) -> str:
    start = html.index('<section id="outliers">')
    return " ".join("".join(Page(html[start:html.index("</section>", start)]).text).split())


def test_a_perfect_attack_draws_no_conclusion_from_the_raw_score(tmp_path):
    root = _audit(tmp_path, 1.0)
    s = build_summary(root)["outliers"]
    assert s["attack_separates"] is True and s["attack_at_chance"] is False and s["raw_loss"] is True
    text = _text(render_html(root))
    assert "separates members from non-members perfectly (AUC 1.000)" in text
    assert "every one of its 8 members scores above every one of its 1,789 non-members" in text
    assert "neither more nor less exposed" in text and "raw negative loss" in text
    assert "ρ = 0.900, p = 0.002, n = 8" in text and "no conclusion is drawn" in text
    # the old sentence and table read the raw score as exposure
    assert "outliers are more exposed here" not in text and "Spearman correlation of outlier score" not in text
    assert "mean membership score" not in text


def test_a_nearly_perfect_attack_is_still_reported_with_the_raw_loss_caveat(tmp_path):
    """AUC 0.9997: some member scores below some non-member, so exposure still varies; the correlation
    is reported, with the caveat that a loss attack's score is the raw loss."""
    root = _audit(tmp_path, 0.9997)
    assert build_summary(root)["outliers"]["attack_separates"] is False
    text = _text(render_html(root))
    assert "outliers are more exposed here" in text and "separates members from non-members perfectly" not in text
    assert "raw negative loss, which is also higher for images the model denoises easily" in text
    # the table's scores are negative losses: its header says which way is member-like, and why below zero
    assert "mean membership score (higher: more member-like; the negative loss, so below zero)" in text


def test_lira_scores_are_not_called_raw_losses(tmp_path):
    perfect = _text(render_html(_audit(tmp_path / "a", 1.0, attack="lira-fixed")))
    assert "separates members from non-members perfectly" in perfect and "the attack's score of each member" in perfect
    assert "raw negative loss" not in perfect
    working = _text(render_html(_audit(tmp_path / "b", 0.9, attack="lira-fixed")))
    assert "outliers are more exposed here" in working and "raw negative loss" not in working
    assert "mean membership score (higher: more member-like)" in working and "below zero" not in working


@pytest.mark.parametrize("k, n_images, want", [
    (79, 80, "distance to every other image of the dataset (79: the dataset holds 80)"),
    (50, 80, "distance to its 50 nearest neighbours in the dataset"),
    (1000, None, "distance to its 1,000 nearest neighbours in the dataset"),  # an outliers stage before n_images
])
def test_the_outlier_score_says_when_its_neighbours_are_every_other_image(tmp_path, k, n_images, want):
    assert want in _text(render_html(_audit(tmp_path, 0.9, k=k, n_images=n_images)))


@pytest.mark.parametrize("auc, want", [(1.0, True), (0.99999, False), (0.5, False), (None, None)])
def test_separation_is_an_auc_of_one(auc, want):
    from diffaudit.report.summary import separates

    assert separates({"auc": auc}) is want


def test_the_audits_outlier_line_draws_no_conclusion_at_auc_1(tmp_path, capsys):
    """The audit's terminal line says what the report says: no correlation under an attack at AUC 1.0."""
    import json

    import numpy as np

    from diffaudit.cli.audit import outliers_stage
    from diffaudit.data import load_dataset

    data = load_dataset("digits", subset=60, subset_seed=0)
    (tmp_path / "mia").mkdir()
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    np.savez(tmp_path / "mia" / "scores.npz", member=member, example_index=np.arange(60),
             score=np.where(member, 1.0, -1.0) + rng.uniform(0, 0.5, 60))  # every member above every non-member
    (tmp_path / "mia" / "result.json").write_text(json.dumps({"attack": "loss", "auc": 1.0}))
    outliers_stage(tmp_path, data, seed=0)
    err = capsys.readouterr().err
    assert "no correlation reported: the membership attack identifies every member" in err and "Spearman" not in err
