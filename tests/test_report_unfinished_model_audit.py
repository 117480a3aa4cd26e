"""The report of an unfinished audit names only the stages the audit ran.

With --model the audit trains nothing: the model's training run is read for its record (the report's
training facts), not as a stage of the audit. Interrupted at its mia stage, such an audit's report said
"it holds the results of its train, sample, extract, verify stages", while the finished audit of the same
kind lists sample, extract, verify. The folders here are written as the audit writes them.
"""

from __future__ import annotations

import re
from pathlib import Path

from diffaudit.core.io import write_json_atomic
from diffaudit.core.results import write_result
from diffaudit.report import build_summary, render_html
from diffaudit.report.results import finished_stages, load_results


def _run(root: Path) -> Path:
    """A finished `diffaudit train` run (its result.json is what the report reads of it)."""
    write_result(root / "result.json", "train", {"data": "digits", "steps": 300}, {"seed": 0}, n_train=200, steps=300,
                 final_loss=0.2)
    return root


def _unfinished_audit(root: Path, *, model: Path | None) -> Path:
    """An audit stopped at its extract stage: its settings recorded, its sample stage finished; without
    ``model``, its train stage (the `shadows` folder that trained the target) finished too."""
    settings = {"data": "digits", "image_size": 8, "n_samples": 128, "shadows": 0, "model": None if model is None else str(model)}
    write_json_atomic(root / "settings.json", {"command": "audit", "settings": settings})
    write_result(root / "samples" / "result.json", "sample", {"model": str(model or root / "models" / "model-00"),
                                                               "n_samples": 128}, {"seed": 0}, n_samples=128)
    if model is None:
        write_result(root / "models" / "result.json", "shadows", {"data": "digits", "n_models": 1}, {"seed": 0}, n_models=1)
        _run(root / "models" / "model-00")
    write_json_atomic(root / "stage_stopped.json", {"stage": "extract", "exit": 130, "error": None})
    return root


def _unfinished_note(html: str) -> str:
    found = re.search(r'<p class="note" data-kind="unfinished">(.*?)</p>', html, re.S)
    assert found, "no unfinished-audit note"
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split())


def test_an_unfinished_model_audit_lists_no_train_stage(tmp_path):
    run = _run(tmp_path / "run-plain")
    audit = _unfinished_audit(tmp_path / "audit-int", model=run)
    rs = load_results(audit)
    assert rs.unfinished and [st.name for st in rs.stages if st.model_record] == ["model"]  # read for its record
    assert finished_stages(rs) == ["sample"]
    note = _unfinished_note(render_html(audit))
    assert "its extract stage was interrupted; it holds the results of its sample stage; the stages after them" in note
    assert "train" not in note
    summary = build_summary(audit)
    assert summary["audit_finished"] is False and summary["model"]["n_train"] == 200  # the record is still read


def test_an_unfinished_audit_that_trained_its_target_lists_its_train_stage(tmp_path):
    audit = _unfinished_audit(tmp_path / "audit", model=None)
    assert finished_stages(load_results(audit)) == ["train", "sample"]
    assert "it holds the results of its train, sample stages" in _unfinished_note(render_html(audit))
