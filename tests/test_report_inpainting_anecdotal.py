"""The inpainting card on a few targets: an honest test, or the word "anecdotal", never a bare AUC.

A real `diffaudit inpaint` run on the built-in digits (target trained on 2 images, 150 steps; shadow on
2 others; 2 members and 2 non-members attacked) gives AUC 1.0: the card showed "1.000" with no interval
and no caveat. With 2 + 2 targets chance alone ranks them in 6 equally likely ways, one of which is a
perfect AUC (p = 1/6): no result on them can be evidence. The folders here are written as the command
writes them.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html
from diffaudit.report.rank_test import auc_evidence, rank_test
from test_report import Page, _envelope


def _inpaint(root: Path, members: list[float], nonmembers: list[float], auc: float | None = None) -> Path:
    """An inpaint result folder whose targets have these ``mean_topk_l2`` (the AUC recorded is theirs
    unless ``auc`` is given)."""
    targets = [{"id": f"digits:{i}", "member": True, "best_l2": v - 0.01, "mean_topk_l2": v} for i, v in enumerate(members)]
    targets += [{"id": f"digits:{100 + i}", "member": False, "best_l2": v - 0.01, "mean_topk_l2": v}
                for i, v in enumerate(nonmembers)]
    if auc is None:
        pairs = [(a < b) + 0.5 * (a == b) for a in members for b in nonmembers]
        auc = sum(pairs) / len(pairs)
    write_json_atomic(root / "result.json", _envelope(
        "inpaint", {"data": "digits", "mask": "left", "n_inpaintings": 8, "top_k": 3}, {"seed": 0},
        targets=targets, top_k=3, auc=auc, auc_best_l2=auc))
    return root


def _card(html: str) -> str:
    start = html.index('<div class="label">Inpainting attack</div>')
    return " ".join("".join(Page(html[start:html.index('<div class="vs">', start)]).text).split())


def test_two_members_against_two_non_members_are_an_anecdote(tmp_path):
    """The values of the real run: members 0.202 and 0.203, non-members 0.257 and 0.241."""
    root = _inpaint(tmp_path, [0.202, 0.203], [0.257, 0.241])
    ev = build_summary(root)["inpainting"]["auc_evidence"]
    assert ev["anecdotal"] is True and ev["ci"] is None and ev["method"] == "exact"
    assert ev["n_orderings"] == 6 and ev["n_at_least"] == 1 and ev["pvalue"] == pytest.approx(1 / 6)
    card = _card(render_html(root))
    assert "anecdotal" in card and "in only 6 equally likely ways, 1 of which gives an AUC of 1.000 or more" in card
    assert "p = 0.17" in card and "even a perfect AUC could not reach p < 0.05, so no interval is given" in card
    assert "CI" not in card


def test_three_and_three_is_still_an_anecdote_but_eight_and_eight_gets_an_interval(tmp_path):
    """3 + 3: the best p is 1/20 = 0.05, not below it. 8 + 8 (the command's default): an exact p of
    1/12,870 for a perfect separation, and a bootstrap interval."""
    few = build_summary(_inpaint(tmp_path / "few", [0.1, 0.11, 0.12], [0.2, 0.21, 0.22]))["inpainting"]["auc_evidence"]
    assert few["anecdotal"] is True and few["min_pvalue"] == pytest.approx(0.05)
    rng = np.random.default_rng(0)
    members, nonmembers = list(rng.uniform(0.05, 0.1, 8)), list(rng.uniform(0.2, 0.3, 8))
    root = _inpaint(tmp_path / "many", members, nonmembers)
    ev = build_summary(root)["inpainting"]["auc_evidence"]
    assert ev["anecdotal"] is False and ev["n_orderings"] == 12870 and ev["pvalue"] == pytest.approx(1 / 12870)
    assert ev["ci"]["level"] == 0.95 and ev["ci"]["high"] == 1.0
    card = _card(render_html(root))
    assert "anecdotal" not in card and "95% CI [" in card and "(bootstrap over targets)" in card
    assert "exact one-sided rank test that members are reconstructed closer: p = 7.8e-05" in card


def test_no_test_is_invented_for_an_auc_the_targets_do_not_give(tmp_path):
    """A recorded AUC that is not the AUC of the targets' distances gets no p-value (nothing to test)."""
    root = _inpaint(tmp_path, [0.202, 0.203], [0.257, 0.241], auc=0.75)
    assert build_summary(root)["inpainting"]["auc_evidence"] is None
    card = _card(render_html(root))
    assert "anecdotal" not in card and "rank test" not in card


def _brute_force_p(members: list[float], nonmembers: list[float]) -> float:
    """P(member rank sum ≥ observed) over every way to label m of the pooled targets members."""
    from scipy.stats import rankdata

    ranks = rankdata(members + nonmembers)
    m, n = len(members), len(members) + len(nonmembers)
    observed = ranks[:m].sum()
    sums = [ranks[list(c)].sum() for c in combinations(range(n), m)]
    return sum(s >= observed - 1e-9 for s in sums) / math.comb(n, m)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=5), st.lists(st.integers(0, 6), min_size=1, max_size=5))
def test_the_exact_test_counts_every_ordering(members, nonmembers):
    """Ties included (integer scores): the exact p is the share of labelings at least as extreme."""
    members, nonmembers = [float(x) for x in members], [float(x) for x in nonmembers]
    res = rank_test(members, nonmembers)
    assert res["method"] == "exact"
    assert res["pvalue"] == pytest.approx(_brute_force_p(members, nonmembers))
    assert res["n_at_least"] == round(res["pvalue"] * math.comb(len(members) + len(nonmembers), len(members)))


def test_without_ties_the_exact_test_is_scipys():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(1)
    for m, n in ((2, 2), (3, 4), (6, 5)):
        a, b = list(rng.normal(0.5, 1, m)), list(rng.normal(0, 1, n))
        want = mannwhitneyu(a, b, alternative="greater", method="exact").pvalue
        assert rank_test(a, b)["pvalue"] == pytest.approx(want)


def test_no_members_or_no_non_members_give_no_evidence():
    assert auc_evidence([], [1.0]) is None and auc_evidence([1.0], []) is None


def test_beyond_enumeration_the_exact_p_holds_with_ties_too():
    """16 members above 44 non-members: C(60, 16) orderings (too many to enumerate), one of them as extreme;
    the normal approximation would say about 1e-7. With a non-member tied with the lowest member, scipy's
    exact distribution does not hold, and the normal approximation said more than 100 times the p: the count
    by rank sums keeps it exact (2 orderings reach the observed sum, the tied pair's two ways). Past that
    count's reach, untied scores take scipy's exact distribution, and tied ones the approximation."""
    from diffaudit.report.rank_test import SCIPY_EXACT_LIMIT

    members, nonmembers = [100.0 + i for i in range(16)], [float(i) for i in range(44)]
    res = rank_test(members, nonmembers)
    assert res["method"] == "exact" and res["n_at_least"] == 1
    assert res["pvalue"] == pytest.approx(1 / math.comb(60, 16), rel=1e-9)
    tied = rank_test(members, nonmembers + [100.0])
    assert tied["method"] == "exact" and tied["n_at_least"] == 2
    assert tied["pvalue"] == pytest.approx(2 / math.comb(61, 16), rel=1e-9)
    far = [float(i) - 5000 for i in range(3000)]  # 10 members among 3,010 targets: past the exact count's reach
    assert rank_test(members[:10], far)["method"] == "exact"  # scipy's, untied
    assert rank_test(members[:10], far + [100.0])["method"] == "normal approximation"
    many = rank_test(members[:10], [float(i) for i in range(SCIPY_EXACT_LIMIT // 10 + 1)])
    assert many["method"] == "normal approximation"
