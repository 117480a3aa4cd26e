"""summary.json's ``extraction.n_cliques`` is extract's ``n_groups`` under another name. The report and
its tests read ``n_cliques``, so it keeps its name; the summary's docstring says what it is."""

from __future__ import annotations

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary
from diffaudit.report import summary as summary_module
from test_report import _envelope


def test_n_cliques_is_documented_as_extracts_n_groups():
    doc = " ".join(summary_module.__doc__.split())
    assert "``n_cliques``" in doc and "calls ``n_groups``" in doc


def test_n_cliques_holds_extracts_n_groups(tmp_path):
    groups = [{"members": [f"p0-i{i}" for i in range(10)]}, {"members": [f"p1-i{i}" for i in range(10)]}]
    write_json_atomic(tmp_path / "extract" / "result.json", _envelope(
        "extract", {"mode": "unconditional"}, {"seed": 0}, mode="unconditional", n_samples=64, n_groups=3, groups=groups))
    assert build_summary(tmp_path / "extract")["extraction"]["n_cliques"] == 3  # the recorded count, not len(groups)
