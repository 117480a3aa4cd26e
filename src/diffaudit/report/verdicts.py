"""The report's two answers as data: was training data extracted, and does the model reveal which images it
trained on.

The HTML report shows each as a level (``yes``, ``no``, ``unsure``; ``unknown`` where extraction was not
measured) and a sentence; summary.json carries the same under ``verdicts``, so that a release gate reads the
answer the report gives instead of deriving it again from the numbers (the baseline's exact test, the AUC
interval or the rank test, the closest baseline match).
"""

from __future__ import annotations

from typing import Any

from diffaudit.report.results import ResultSet
from diffaudit.report.view_extraction import verdict
from diffaudit.report.view_mia import best_mia, membership_verdict
from diffaudit.report.view_misc import data_vs_model_note


def noted(answer: dict[str, str], note: str | None) -> dict[str, str]:
    """``answer`` with ``note`` (a caveat about what it counts) appended to its sentence."""
    return answer if not note else {**answer, "text": f"{answer['text']} {note}"}


def verdicts(rs: ResultSet, summary: dict[str, Any]) -> dict[str, dict[str, str] | None]:
    """``{"extraction": {"level", "text"}, "membership": {"level", "text"} or None}`` of the results ``rs``
    (summarised as ``summary``): the report's two verdicts (:func:`~diffaudit.report.view_extraction.verdict`,
    :func:`~diffaudit.report.view_mia.membership_verdict`); membership is None without an attack."""
    ex = summary.get("extraction")
    return {
        "extraction": noted(verdict(ex, canaries=summary.get("canaries"), unfinished=rs.unfinished),
                            data_vs_model_note(ex)),
        "membership": membership_verdict(best_mia(summary)),
    }
