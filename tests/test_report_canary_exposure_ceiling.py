"""A canary exposure at its ceiling is marked as a lower bound, with why.

Exposure = log2(n + 1) − log2(rank) with n never-inserted references: rank 1 (a loss below every
reference's) gives log2(n + 1), the most that can be measured. A real `diffaudit canaries` run on digits
(--repeats 1,8,32, --per-repeat 2, --n-reference 8, 150 steps) put 3 of its 6 canaries there, at 3.170
bits, whose Gaussian extrapolation gave 3.22 to 7.70 bits; the report printed 3.170 as if measured. The
folders here are written as that command writes them, exposures computed by its own functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffaudit.core.io import write_json_atomic
from diffaudit.defenses.canaries import exposure, exposure_gaussian, max_exposure
from diffaudit.report import build_summary, render_html
from test_report import Page, _envelope

REFERENCE_LOSS = np.linspace(0.6, 1.0, 8)
# Per repeat count: two canary losses. Below every reference (rank 1): at the ceiling.
LOSSES = {1: (0.80, 0.58), 8: (0.86, 0.73), 32: (0.41, 0.33)}


def _canaries(root: Path, *, record_ceiling: bool = True) -> Path:
    loss = np.array([v for r in LOSSES for v in LOSSES[r]])
    exp, gauss = exposure(loss, REFERENCE_LOSS), exposure_gaussian(loss, REFERENCE_LOSS)
    repeats = [r for r in LOSSES for _ in LOSSES[r]]
    cans = [{"key": f"canary/noise/{i:04d}", "kind": "noise", "repeats": r, "loss": float(v), "exposure": float(e),
             "exposure_gaussian": float(g), "extracted": False} for i, (r, v, e, g) in enumerate(zip(repeats, loss, exp, gauss))]
    refs = [{"key": f"reference/noise/{i:04d}", "kind": "noise", "extracted": False} for i in range(len(REFERENCE_LOSS))]
    more = {"n_reference": len(REFERENCE_LOSS), "max_exposure": max_exposure(len(REFERENCE_LOSS))} if record_ceiling else {}
    write_json_atomic(root / "result.json", _envelope(
        "canaries", {"repeats": list(LOSSES), "n_reference": 8}, {"seed": 0}, kind="noise", n_canaries=len(cans),
        canaries=cans, references=refs, n_extracted=0, **more))
    return root


def _section(html: str) -> tuple[str, Page]:
    start = html.index('<section id="canaries">')
    page = Page(html[start:html.index("</section>", start)])
    return " ".join(" ".join(page.text).split()), page


def _exposures(repeats: int) -> np.ndarray:
    return exposure(np.array(LOSSES[repeats]), REFERENCE_LOSS)


def test_summary_counts_the_canaries_at_the_ceiling(tmp_path):
    c = build_summary(_canaries(tmp_path))["canaries"]
    assert c["exposure_ceiling"] == pytest.approx(math.log2(9)) and c["n_reference"] == 8
    assert c["n_at_ceiling"] == 3
    assert [(r["repeats"], r["n_at_ceiling"]) for r in c["by_repeats"]] == [(1, 1), (8, 0), (32, 2)]
    assert c["ceiling_extrapolated"]["min"] > math.log2(9)  # the Gaussian fit reaches past the ceiling


def test_ceiling_values_are_marked_at_least_and_explained(tmp_path):
    text, page = _section(render_html(_canaries(tmp_path)))
    assert _exposures(1).mean() == pytest.approx(2.009, abs=5e-4)  # 0.848 and the ceiling, 3.170
    assert "1 2 ≥ 2.009 ≥ 3.170 at the ceiling (1 of 2) p = 0.2 (at chance) 0 / 2" in text  # the mean holds one: a lower bound too
    e8 = _exposures(8)
    assert e8.max() < math.log2(9)
    assert f"8 2 {e8.mean():.3f} {e8.max():.3f} p = 0.56 (at chance) 0 / 2" in text and f"≥ {e8.max():.3f}" not in text  # as measured
    # both below every reference: 1 / C(10, 2) exactly (the normal approximation of the tied pair said 0.025)
    assert "32 2 ≥ 3.170 ≥ 3.170 at the ceiling (2 of 2) p = 0.022 0 / 2" in text
    titles = [a["title"] for _, a in page.tags if a.get("data-kind") == "exposure-ceiling"]
    assert titles == ["1 of 2 canaries at the ceiling (rank 1: a loss below every reference's): an exposure of at least this",
                      "2 of 2 canaries at the ceiling (rank 1: a loss below every reference's): an exposure of at least this"]
    assert ("3 of 6 canaries are at the ceiling, marked ≥: exposure = log2(n + 1) − log2(rank) with n = 8 never-inserted "
            "references is at most log2(9) = 3.170 bits, reached when a canary's loss is below every reference's (rank 1)") in text
    assert "more references (--n-reference) raise the ceiling" in text
    assert "The Gaussian fit of the reference losses (an extrapolation, Secret Sharer §4.3) puts them at" in text


def test_the_ceiling_is_computed_from_the_references_when_not_recorded(tmp_path):
    root = _canaries(tmp_path)
    r = json.loads((root / "result.json").read_text())
    del r["max_exposure"]
    (root / "result.json").write_text(json.dumps(r))
    assert build_summary(root)["canaries"]["n_at_ceiling"] == 3


def test_a_result_without_its_reference_count_is_not_marked(tmp_path):
    """Older results record neither max_exposure nor n_reference: the ceiling is unknown, nothing is claimed."""
    c = build_summary(_canaries(tmp_path, record_ceiling=False))["canaries"]
    assert c["exposure_ceiling"] is None and c["n_at_ceiling"] == 0
    text, _ = _section(render_html(tmp_path))
    assert "≥" not in text and "ceiling" not in text


def test_the_canaries_result_line_marks_means_at_the_ceiling():
    """`canaries`' last line: "32x: ≥ 4.09" where canaries are at the ceiling, not a flat curve read as
    "exposure does not grow"; no mark (and no note) where none is."""
    from diffaudit.cli.canaries import _curve_line

    r = {"max_exposure": 4.09, "n_reference": 16, "n_canaries": 4, "n_extracted": 0,
         "curve": [{"repeats": 0, "max_exposure": None, "mean_exposure": None},
                   {"repeats": 1, "max_exposure": 2.5, "mean_exposure": 2.0},
                   {"repeats": 32, "max_exposure": 4.09, "mean_exposure": 4.09}]}
    line = _curve_line(r)
    assert "1x: 2.00, 32x: ≥ 4.09 (≥: canaries at the ceiling, a loss below all 16 references'" in line
    r["curve"][2].update(max_exposure=3.0, mean_exposure=3.0)
    assert "≥" not in _curve_line(r)


def test_exposure_is_weighed_against_what_a_never_learnt_canary_gets_by_chance(tmp_path):
    """A canary the model never learnt ranks at random among the references: about 1.4 bits on average,
    not 0. Under DP-SGD a curve of 2.32, 0.89, 1.27 bits read as leakage with nothing to compare it to."""
    from diffaudit.evaluation.exposure_chance import chance_exposure, exposure_pvalue

    assert chance_exposure(1) == pytest.approx(0.5) and chance_exposure(64) == pytest.approx(1.376, abs=1e-3)
    rng = np.random.default_rng(0)
    draws = [exposure(rng.normal(size=3), rng.normal(size=64)) for _ in range(400)]  # never learnt: exchangeable
    assert np.mean(draws) == pytest.approx(chance_exposure(64), abs=0.1)
    assert np.mean([exposure_pvalue(e, 64) < 0.05 for e in draws]) <= 0.08  # a 5% test at chance
    assert exposure_pvalue(exposure(rng.normal(size=3) - 3, rng.normal(size=64)), 64) < 0.05  # learnt ones beat it
    text, page = _section(render_html(_canaries(tmp_path)))
    assert "it scores 1.118 bits on average with 8 references, not 0" in text
    assert [p.get("data-kind") for _, p in page.tags].count("exposure-chance") == 3
