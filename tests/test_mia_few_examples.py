"""A membership attack on few members (or non-members): the stratified bootstrap resamples each class within
itself, so with one member every replicate holds that member and the AUC's interval covers only the
non-members' sampling (a walkthrough's 1 member ranked 38th of 49 read as AUC 0.79 [0.69, 0.90], "not
guessing"). The exact one-sided rank test says how sure such an AUC is: mia records it, the command's line, the
summary's chance verdict and the report use it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.cli.mia import FEW_PER_CLASS, _summary, few_examples_test
from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html
from diffaudit.report.summary import at_chance
from test_report import _envelope, visible_text


def _one_member_above(k: int, n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Scores of 1 member that beats exactly ``k`` of ``n`` non-members (AUC k / n)."""
    non = np.arange(n, dtype=float)
    return np.r_[k - 0.5, non], np.r_[True, np.zeros(n, bool)]


def test_one_member_gets_the_exact_rank_test():
    scores, labels = _one_member_above(38)
    few = few_examples_test(scores, labels)
    # the member's rank is one of 49 equally likely by chance; 11 of them beat at least 38 non-members
    assert few["method"] == "exact" and few["n_orderings"] == 49 and few["pvalue"] == pytest.approx(11 / 49)
    assert few_examples_test(*_one_member_above(48))["pvalue"] == pytest.approx(1 / 49)


def test_enough_of_both_classes_need_no_rank_test():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(FEW_PER_CLASS, bool), np.zeros(FEW_PER_CLASS, bool)]
    assert few_examples_test(rng.normal(size=2 * FEW_PER_CLASS), labels) is None
    assert few_examples_test(rng.normal(size=3), np.zeros(3, bool)) is None  # no member: nothing to test


def test_the_line_summary_and_report_say_how_sure_one_member_is(tmp_path):
    scores, labels = _one_member_above(38)
    few = few_examples_test(scores, labels)
    result = _envelope("mia", {"data": {"spec": "photos", "options": {}}, "target": {"mode": "model", "run": "sd-folder"}},
                       {}, attack="loss", auc=38 / 48,
                       tpr_at_fpr={"0.01": None, "0.001": None}, n_members=1, n_nonmembers=48, rank_test=few,
                       ci={"auc": {"low": 0.686, "high": 0.896, "level": 0.95}, "tpr_at_fpr": {}})
    line = _summary(result)
    assert "with 1 member the interval understates their sampling's spread: one-sided rank test p = 0.22 " \
           "(indistinguishable from guessing)" in line
    write_json_atomic(tmp_path / "mia" / "result.json", result)
    entry = build_summary(tmp_path / "mia")["mia"]["loss"]
    assert entry["rank_test"]["pvalue"] == pytest.approx(11 / 49)
    assert at_chance(entry) is True  # its interval excludes 0.5, yet chance reaches it 1 time in 4.5
    assert build_summary(tmp_path / "mia")["model"] == {"path": "sd-folder"}  # the attacked model, named in the header
    text = visible_text(render_html(tmp_path / "mia"))
    assert "model sd-folder" in text
    assert ("indistinguishable from guessing: with 1 member, the AUC's interval, resampled from so few, understates how "
            "much another draw of them could change it; chance alone reaches this AUC with p = 0.22 (one-sided rank test), so the attack's success is no evidence of membership by itself") in text
    assert "rank test p = 0.22" in text and "this TPR is chance" not in text  # the TPR is not measured (n/a)
    # a significant result on few members is said to be few, not guessing
    result["rank_test"] = few_examples_test(*_one_member_above(48))
    result["rank_test"]["pvalue"] = 0.01  # as on more non-members
    write_json_atomic(tmp_path / "mia" / "result.json", result)
    text = visible_text(render_html(tmp_path / "mia")).split("Terms used here")[0]  # the glossary speaks of guessing
    assert "few examples: with 1 member" in text and "guessing" not in text
    assert json.loads((tmp_path / "mia" / "result.json").read_text())["rank_test"]["n_orderings"] == 49
