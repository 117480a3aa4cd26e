"""A timestep sweep whose AUC falls below 0.5 beyond what guessing gives is said so in the report.

At t near T the input is almost pure noise; a loss attack's AUC there can sit just under 0.5 (the
built-in audit: 0.464 at t = 999 for 32 members and 1,765 non-members, well within guessing's spread)
or clearly under it, when members' losses are higher there. Only the latter gets a note.
"""

from __future__ import annotations

import html as html_lib
import math
import re
from pathlib import Path

import pytest

from diffaudit.core.io import write_json_atomic
from diffaudit.report import render_html
from diffaudit.report.rank_test import auc_spread_under_guessing
from diffaudit.report.view_mia import below_chance
from test_report import _envelope


def test_spread_under_guessing_is_the_mann_whitney_null_spread():
    assert auc_spread_under_guessing(200, 200) == pytest.approx(math.sqrt(401 / (12 * 200 * 200)))
    assert auc_spread_under_guessing(1, 1) == pytest.approx(0.5)  # 3 / 12
    assert auc_spread_under_guessing(32, 1765) > auc_spread_under_guessing(1000, 1765)  # fewer members: wider


def test_below_chance_takes_only_what_guessing_does_not_explain():
    ts, aucs = [10, 300, 999], [0.9, 0.46, 0.30]
    assert below_chance(ts, aucs, 32, 1765) == [(999, 0.30)]  # 0.46: within 2 spreads (0.103) of 0.5
    assert below_chance(ts, [0.9, 0.46, None], 32, 1765) == []  # a missing AUC is no point
    assert below_chance(ts, aucs, 20000, 20000) == [(300, 0.46), (999, 0.30)]  # many examples: 0.46 is real
    assert below_chance(ts, aucs, None, 1765) == [] and below_chance(ts, aucs, 0, 10) == []  # counts unknown


def _audit(root: Path, aucs: list[float], attack: str = "loss", n: int = 200) -> Path:
    write_json_atomic(root / "audit.json", {"settings": {"data": "digits"}, "seeds": {"seed": 1}})
    write_json_atomic(root / "mia" / "result.json", _envelope(
        "mia", {"data": "digits", "attack": attack}, {"seed": 1}, attack=attack, timesteps=[100], auc=0.8,
        tpr_at_fpr={"0.01": 0.2, "0.001": 0.05}, n_members=n, n_nonmembers=n,
        sweep={"attack": attack, "timesteps": [10, 100, 999], "auc": aucs, "tpr_at_fpr": {"0.01": [0.2, 0.2, 0.0]}}))
    return root


def _notes(page: str) -> list[str]:
    """The text of each sweep-below-chance note (tags dropped, entities decoded, spaces collapsed)."""
    found = re.findall(r'<p class="note" data-kind="sweep-below-chance">(.*?)</p>', page, flags=re.S)
    return [" ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", t)).split()) for t in found]


def test_the_report_notes_a_sweep_below_chance(tmp_path):
    notes = _notes(render_html(_audit(tmp_path / "a", [0.9, 0.8, 0.30])))
    assert len(notes) == 1
    assert "the AUC at t = 999 (0.300) lies below 0.5" in notes[0] and "(their loss is higher)" in notes[0]
    # the spread takes the images as independent: one run alone may be chance, another --seed tells
    assert "taken as independent images" in notes[0] and "once alone, it may be chance" in notes[0]
    assert _notes(render_html(_audit(tmp_path / "b", [0.9, 0.8, 0.47]))) == []  # within guessing's spread
    lira = _notes(render_html(_audit(tmp_path / "c", [0.9, 0.2, 0.30], attack="lira")))
    assert "t = 100 (0.200), t = 999 (0.300)" in lira[0] and "loss is higher" not in lira[0]
