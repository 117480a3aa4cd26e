"""The report's second question, "does the model reveal which images it trained on?": a plain answer from
the membership attack, so that a report whose extraction found nothing does not read as "safe" while the
attack picks out training images; and TPR at no false positive where 1% FPR cannot be measured."""

import numpy as np
import pytest

from diffaudit.evaluation.attack_evaluation import evaluate_attack
from diffaudit.report.view_mia import best_mia, membership_verdict


def _summary(auc, ci, *, tpr=None, tpr0=None, n_members=16, n_nonmembers=44, rank_test=None):
    entry = {"auc": auc, "tpr_at_fpr": {"0.01": tpr}, "ci": {"auc": ci and {"low": ci[0], "high": ci[1], "level": 0.95}},
             "n_members": n_members, "n_nonmembers": n_nonmembers, "tpr_at_zero_fpr": tpr0}
    if rank_test is not None:
        entry["rank_test"] = {"pvalue": rank_test}
    return {"mia": {"loss": entry}}


def test_tpr_at_zero_fpr_is_the_share_of_members_above_every_nonmember():
    scores = np.array([9, 8, 7, 3, 6, 5, 4, 2, 1.0])
    member = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)  # 3 of 4 members above every non-member
    e = evaluate_attack(scores, member, attack="loss")
    assert e.tpr_at_zero_fpr == pytest.approx(0.75) and e.to_dict()["tpr_at_zero_fpr"] == pytest.approx(0.75)
    assert e.tpr_at_fpr["0.01"] is None  # 5 non-members: 1% FPR is below the resolution
    tied = evaluate_attack(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0], bool), attack="loss")
    assert tied.tpr_at_zero_fpr == 0.0  # a member tied with a non-member is not above it


def test_a_leaking_model_is_said_to_leak_with_the_members_it_picks_out():
    v = membership_verdict(best_mia(_summary(0.892, (0.788, 0.972), tpr0=5 / 16)))
    assert v["level"] == "yes"
    assert v["text"].startswith("Yes: the membership attack (loss) tells the training images from images the model "
                                "never saw (AUC 0.892, 95% CI [0.788, 0.972]; 0.5 is a coin toss")
    assert "5 of the 16 training images (31.2%) score above every image it never saw" in v["text"]
    measured = membership_verdict(best_mia(_summary(0.95, (0.9, 0.99), tpr=0.42, tpr0=0.3, n_nonmembers=500)))
    assert "At a 1% false-positive rate it picks out 42.0% of the training images." in measured["text"]
    assert "score above every" not in measured["text"]  # the measured 1% FPR figure is the one given


def test_an_attack_at_chance_is_no_evidence_and_says_how_loose_a_small_audit_is():
    v = membership_verdict(best_mia(_summary(0.475, (0.305, 0.66), tpr0=0.0, n_members=20, n_nonmembers=20)))
    assert v["level"] == "no" and v["text"].startswith("No evidence: the membership attack (loss) cannot tell")
    assert v["text"].endswith("With so few images this bounds the leak only loosely.")
    large = membership_verdict(best_mia(_summary(0.5, (0.48, 0.52), n_members=500, n_nonmembers=500)))
    assert large["level"] == "no" and "so few" not in large["text"]
    few = membership_verdict(best_mia(_summary(0.9, None, n_members=2, n_nonmembers=3, rank_test=0.2)))
    assert few["level"] == "no"  # the rank test decides for so few examples: 0.2 is chance


def test_an_attack_below_chance_is_unsure_and_no_attack_is_no_answer():
    v = membership_verdict(best_mia(_summary(0.2, (0.1, 0.3))))
    assert v["level"] == "unsure" and "the model and the data do not belong together" in v["text"]
    assert membership_verdict(best_mia({"mia": {}})) is None


def test_the_report_answers_the_second_question_and_shows_the_members_picked_out(tmp_path):
    from diffaudit.core.io import write_json_atomic
    from diffaudit.core.results import envelope
    from diffaudit.report.html import render_html
    from test_report import visible_text

    scores = np.array([9, 8, 7, 3, 6, 5, 4, 2, 1.0])
    member = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    e = evaluate_attack(scores, member, attack="loss", n_bootstrap=200)
    result = envelope("mia", {"data": {"spec": "scans", "options": {}}}, {}, **e.to_dict())
    write_json_atomic(tmp_path / "mia" / "result.json", result)
    html = render_html(tmp_path / "mia")
    text = visible_text(html)
    assert "Was training data extracted?" in text and "Does the model reveal which images it trained on?" in text
    assert 'data-membership-verdict="' in html
    assert "at no false positive: 3 of 4 members (75.0%) score above every non-member" in text
    assert 'data-metric="mia.loss.tpr_at_zero_fpr" data-value=\'0.75\'' in html
