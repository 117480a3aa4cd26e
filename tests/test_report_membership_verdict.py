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
    assert v["level"] == "no" and v["text"].startswith(
        "No clear evidence: the membership attack (loss) does not tell the training images from images the model never "
        "saw measurably better than guessing")
    assert v["text"].endswith("With so few images this bounds the leak only loosely.")
    large = membership_verdict(best_mia(_summary(0.5, (0.48, 0.52), n_members=500, n_nonmembers=500)))
    assert large["level"] == "no" and "so few" not in large["text"]
    few = membership_verdict(best_mia(_summary(0.9, None, n_members=2, n_nonmembers=3, rank_test=0.2)))
    assert few["level"] == "no"  # the rank test decides for so few examples: 0.2 is chance


def test_an_attack_below_chance_is_unsure_and_no_attack_is_no_answer():
    v = membership_verdict(best_mia(_summary(0.2, (0.1, 0.3))))
    assert v["level"] == "unsure" and "the model and the data do not belong together" in v["text"]
    assert "chance beyond what the interval covers" in v["text"] and "another --seed tells" in v["text"]
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
    assert ("at no false positive: 3 of 4 members (75.0%) score above every non-member: a random score puts 0.67 there "
            "on average, and 3 or more with p = 0.0476") in text
    assert 'data-metric="mia.loss.tpr_at_zero_fpr" data-value=\'0.75\'' in html


def test_the_chance_of_members_above_every_nonmember_is_exact():
    from itertools import permutations

    from diffaudit.report.rank_test import above_every_nonmember_by_chance

    m, n = 3, 4  # every ordering of 3 members and 4 non-members, equally likely under a random score
    orders = set(permutations([1] * m + [0] * n))
    above = [order.index(0) for order in orders]  # members ranked before the first non-member
    for k in range(m + 1):
        chance = above_every_nonmember_by_chance(m, n, k)
        assert chance["pvalue"] == pytest.approx(sum(a >= k for a in above) / len(orders))
        assert chance["expected"] == pytest.approx(np.mean(above))
    with pytest.raises(ValueError):
        above_every_nonmember_by_chance(3, 4, 4)


def test_a_count_above_every_nonmember_that_chance_reaches_is_not_called_picked_out():
    # 1 of 40 members above all of 30 non-members: a random score puts 40/31 = 1.3 there on average
    chance_level = membership_verdict(best_mia(_summary(0.7, (0.6, 0.8), tpr0=1 / 40, n_members=40, n_nonmembers=30)))
    assert chance_level["level"] == "yes"  # the AUC still separates them
    assert "picked out" not in chance_level["text"]
    assert ("1 of the 40 training images (2.5%) score above every image it never saw, not significantly more than "
            "chance gives (a random score puts 1.3 there on average, and 1 or more with p = 0.57): read the AUC."
            ) in chance_level["text"]
    beyond = membership_verdict(best_mia(_summary(0.9, (0.8, 0.97), tpr0=10 / 40, n_members=40, n_nonmembers=30)))
    assert "picked out without a single false alarm (a random score puts 1.3 there on average" in beyond["text"]


def test_the_report_card_says_when_chance_reaches_the_count_above_every_nonmember(tmp_path):
    from diffaudit.core.io import write_json_atomic
    from diffaudit.core.results import envelope
    from diffaudit.report.html import render_html
    from test_report import visible_text

    scores = np.array([9, 5, 4, 3, 8, 7, 6, 2, 1.0])  # 1 of 4 members above all 5 non-members: chance, p = 4/9
    member = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    e = evaluate_attack(scores, member, attack="loss", n_bootstrap=200)
    write_json_atomic(tmp_path / "mia" / "result.json",
                      envelope("mia", {"data": {"spec": "scans", "options": {}}}, {}, **e.to_dict()))
    text = visible_text(render_html(tmp_path / "mia"))
    assert ("1 of 4 members (25.0%) score above every non-member, not significantly more than chance gives: a random "
            "score puts 0.67 there on average, and 1 or more with p = 0.44") in text
    assert "a random score flags 1% of members at 1% FPR" not in text  # 1% FPR is not measured with 5 non-members


def test_a_leak_that_picks_out_no_member_at_1pct_fpr_says_it_is_on_average():
    v = membership_verdict(best_mia(_summary(0.655, (0.588, 0.714), tpr=0.0, tpr0=0.0, n_members=64, n_nonmembers=1733)))
    assert v["level"] == "yes" and "picks out 0.0%" not in v["text"]
    assert ("At a 1% false-positive rate it picks out none of the training images: the leak shows in how the scores "
            "rank on average (the AUC), not yet as images singled out with few false alarms.") in v["text"]


def test_a_tpr_every_resample_agreed_on_gets_an_exact_binomial_interval():
    """16 of 16 members flagged: the bootstrap interval is [100%, 100%], which bounds nothing; the exact
    (Clopper-Pearson) interval of 16 of 16 is [79.4%, 100%]."""
    entry = _summary(1.0, (1.0, 1.0), tpr=1.0, tpr0=1.0, n_members=16, n_nonmembers=200)["mia"]["loss"]
    entry["ci"]["tpr_at_fpr"] = {"0.01": {"low": 1.0, "high": 1.0, "level": 0.95}}
    exact = best_mia({"mia": {"loss": entry}})["tpr_exact"]
    assert (exact["k"], exact["n"], exact["high"]) == (16, 16, 1.0)
    assert exact["low"] == pytest.approx(0.025 ** (1 / 16))  # (α/2)^(1/n) for k = n
    entry["ci"]["tpr_at_fpr"] = {"0.01": {"low": 0.9, "high": 1.0, "level": 0.95}}  # an interval that bounds: none
    assert best_mia({"mia": {"loss": entry}})["tpr_exact"] is None


def test_without_a_bootstrap_interval_the_verdict_is_the_one_its_counts_give():
    """`mia --bootstrap 0` records no interval: AUC 0.586 over 512 members and 512 non-members was called "no clear
    evidence" (below 0.6) where with the bootstrap it is "yes"; Hanley and McNeil's interval from the counts now
    decides, and the headline says no interval was recorded. The same AUC over 60 and 60 stays at chance."""
    from diffaudit.evaluation.roc import auc_standard_error
    from diffaudit.report.summary import at_chance

    se = auc_standard_error(0.586, 512, 512)
    assert 0.015 < se < 0.02 and auc_standard_error(0.5, 20, 20) == pytest.approx(0.0924, abs=1e-4)  # sqrt(3.4167 / 400)
    big = _summary(0.586, None, n_members=512, n_nonmembers=512)
    assert at_chance(big["mia"]["loss"]) is False and membership_verdict(best_mia(big))["level"] == "yes"
    small = _summary(0.586, None, n_members=60, n_nonmembers=60)
    assert at_chance(small["mia"]["loss"]) is True
    assert best_mia(small)["auc_ci"] is None  # what the headline's "no bootstrap interval" reads


def test_the_headline_of_an_attack_without_an_interval_does_not_cite_one(tmp_path):
    from diffaudit.core.io import write_json_atomic
    from diffaudit.report import render_html
    from tests.test_report import _envelope, visible_text

    write_json_atomic(tmp_path / "mia" / "result.json", _envelope(
        "mia", {"attack": {"attack": "loss"}}, {"seed": 0}, attack="loss", auc=0.586, tpr_at_fpr={"0.01": 0.02},
        n_members=60, n_nonmembers=60))
    text = visible_text(render_html(tmp_path / "mia"))
    assert "no bootstrap interval was recorded (--bootstrap 0), and the AUC lies within 1.96 standard errors" in text
    assert "the AUC's interval holds 0.5" not in text
