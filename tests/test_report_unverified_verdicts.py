"""The report's headline when no verify stage ran: a canaries folder (its canary check is a
verification, against the inserted canaries) and an extract-only folder (cliques found, not verified).

Before: both said "Extraction was not verified against the training set.", the canaries folder right
above "Canaries extracted 2 of 4", and the extract-only folder under a "Training images extracted"
panel reading "rule: unknown rule".
"""

from __future__ import annotations

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_report
from diffaudit.report.view_extraction import NOT_RUN, NOT_VERIFIED, rule_text, verdict

VERSIONS = {"diffaudit": "0.1.0"}


def _envelope(command: str, settings: dict, **fields) -> dict:
    return {"schema_version": 1, "command": command, "settings": settings, "seeds": {"seed": 0}, "versions": VERSIONS,
            **fields}


def _canaries_folder(root, extracted: list[bool | None]):
    cans = [{"key": f"canary/noise/{j:04d}", "kind": "noise", "repeats": 2 ** j, "exposure": 2.0 + j, "extracted": e,
             "nearest_l2": 0.01} for j, e in enumerate(extracted)]
    n_extracted = None if all(e is None for e in extracted) else sum(bool(e) for e in extracted)
    write_json_atomic(root / "result.json", _envelope(
        "canaries", {"evaluation": {"n_samples": 0 if n_extracted is None else 64}}, n_canaries=len(cans),
        n_extracted=n_extracted, unique_extracted_training_images=n_extracted, canaries=cans, curve=[]))
    return root


def _extract_folder(root, n_groups: int = 13):
    groups = [{"group": g + 1, "component": g, "component_size": 12, "size": 10, "members": [f"p0-i{10 * g + i}" for i in range(10)],
               "medoid": f"p0-i{10 * g}", "mean_distance": 0.02} for g in range(n_groups)]
    write_json_atomic(root / "result.json", _envelope(
        "extract", {"samples": str(root / "no-store"), "mode": "unconditional", "edge_threshold": 0.1, "min_clique": 10},
        mode="unconditional", n_samples=512, n_groups=n_groups, groups=groups))
    return root


def test_a_canaries_folder_is_answered_by_its_canary_check(tmp_path):
    s = build_summary(_canaries_folder(tmp_path, [True, False, True, False]))
    assert s["extraction"] is None and s["canaries"]["n_extracted"] == 2
    v = verdict(s["extraction"], canaries=s["canaries"])
    assert v["level"] == "yes" and v["text"].startswith("Yes: 2 of 4 inserted canaries were extracted")
    assert "verified against the inserted canaries" in v["text"] and "not verified" not in v["text"]


def test_no_canary_extracted_is_a_no_and_an_untested_run_stays_unknown(tmp_path):
    s = build_summary(_canaries_folder(tmp_path / "none", [False, False]))
    v = verdict(s["extraction"], canaries=s["canaries"])
    assert v["level"] == "no" and "No inserted canary was extracted (0 of 2)" in v["text"]
    untested = build_summary(_canaries_folder(tmp_path / "untested", [None, None]))
    assert verdict(untested["extraction"], canaries=untested["canaries"]) == {"level": "unknown", "text": NOT_RUN}


def test_a_verify_stage_still_decides_the_headline_beside_canaries():
    ex = {"unique_extracted": 0, "n_samples": 64, "rule": "ratio", "baseline_unique_extracted": None}
    v = verdict(ex, canaries={"n_canaries": 4, "n_extracted": 2})
    assert v["level"] == "no" and "No training image was extracted from 64 generations" in v["text"]


def test_the_canaries_report_headline_agrees_with_its_panel(tmp_path):
    html = render_report(_canaries_folder(tmp_path, [True, False, True, False])).read_text(encoding="utf-8")
    assert NOT_VERIFIED not in html and "Yes: 2 of 4 inserted canaries were extracted" in html


def test_an_extract_only_folder_says_what_it_found_and_that_it_was_not_verified(tmp_path):
    root = _extract_folder(tmp_path)
    ex = build_summary(root)["extraction"]
    v = verdict(ex)
    assert v["level"] == "unknown"
    assert v["text"].startswith("Extraction found 13 cliques of near-identical generations among 512 generations; "
                                "verification against the training set was not run.")
    assert "--from-extract" in v["text"]
    html = render_report(root).read_text(encoding="utf-8")
    assert "Extraction found 13 cliques" in html and NOT_VERIFIED not in html
    assert "unknown rule" not in html and rule_text(None) == "none: verification was not run"


def test_an_extract_only_conditional_folder_counts_flagged_prompts():
    ex = {"unique_extracted": None, "n_samples": 40, "rule": None, "baseline_unique_extracted": None,
          "n_prompts": 4, "n_flagged": 1}
    assert verdict(ex)["text"].startswith("Extraction found 1 of 4 prompts flagged among 40 generations; verification")


def test_an_extract_that_found_nothing_says_so_without_a_next_step(tmp_path):
    v = verdict(build_summary(_extract_folder(tmp_path, n_groups=0))["extraction"])
    assert v["text"] == ("Extraction found 0 cliques of near-identical generations among 512 generations; "
                         "verification against the training set was not run.")


def test_an_extract_only_report_has_no_training_images_extracted_panel(tmp_path):
    html = render_report(_extract_folder(tmp_path)).read_text(encoding="utf-8")
    assert "Training images extracted" not in html and "false-positive baseline" not in html
