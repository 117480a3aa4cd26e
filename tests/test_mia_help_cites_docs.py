"""`mia --help` cites the Strong LiRA aggregate comparison with docs/experiments.md's current numbers."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from diffaudit.cli import mia

DOCS = Path(__file__).resolve().parents[1] / "docs" / "experiments.md"


def _strong_aggregate_help() -> str:
    p = argparse.ArgumentParser()
    mia.add_arguments(p)
    return next(a.help for a in p._actions if "--strong-aggregate" in a.option_strings)


def test_strong_aggregate_help_cites_the_documented_aucs():
    # the docs' table: | fixed variance | **<sum-llr AUC>**, <TPR> | <mean-loss AUC>, <TPR> ... |
    row = re.search(r"^\s*\| fixed variance \| \*\*([0-9.]+)\*\*, [^|]+\| ([0-9.]+),", DOCS.read_text(), re.M)
    assert row, "docs/experiments.md: the sum-llr / mean-loss table's fixed-variance row"
    sum_llr, mean_loss = row.groups()
    assert f"AUC {sum_llr} against {mean_loss}" in _strong_aggregate_help()
