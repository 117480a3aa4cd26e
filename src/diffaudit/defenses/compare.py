"""Two audits side by side: did a defence (deduplication, DP-SGD) reduce memorization?

Works on the ``summary.json`` dictionaries of :func:`diffaudit.report.summary.build_summary`
(audit folders or single command folders): unique extracted images (paper: 1,280 before and 986
after deduplicating CIFAR-10), membership-inference AUC and TPR at 1 % and 0.1 % FPR per attack,
canaries extracted and their mean exposure, the DP ε of the trained model, near-duplicate groups.
A metric one side lacks is null on that side. ``change`` = b − a: lower is better for every row
that counts or scores memorization; ``extraction: generations`` and ``extraction: train-map checks``
only say how many generations were searched or checked (compare counts at equal budgets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FPR_TARGETS = ("0.01", "0.001")


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v and abs(v) != float("inf") else None


def _audited_models(root: Path) -> list[Path]:
    """Where the model an audit folder audited may lie: its ``result.json``'s ``target`` and ``--model``
    setting (paths as recorded), then ``models/model-00`` (the target an audit trains, or a link to
    ``--model``; with shadows and ``--model`` a shadow, which never trains with DP-SGD)."""
    try:
        rec = json.loads((root / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = None
    named = []
    if isinstance(rec, dict) and rec.get("command") == "audit":
        settings = rec.get("settings") if isinstance(rec.get("settings"), dict) else {}
        named = [Path(p) for p in (rec.get("target"), settings.get("model")) if isinstance(p, str) and p]
    return named + [root / "models" / "model-00"]


def find_dp_record(folder: str | Path) -> dict[str, Any] | None:
    """The ``dp.json`` of a DP-SGD run: ``folder`` itself, the model an audit folder audited (its
    recorded target, else ``models/model-00``; links followed), or one level below (``train/``)."""
    root = Path(folder)
    candidates = [root / "dp.json"]
    if root.is_dir():
        candidates += [m / "dp.json" for m in _audited_models(root)] + sorted(root.glob("*/dp.json"))
    for c in candidates:
        if c.is_file():
            try:
                data = json.loads(c.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data
    return None


def metrics(summary: dict[str, Any], dp: dict[str, Any] | None = None) -> dict[str, float | None]:
    """Flat {metric name: value} of one summary (and the model's ``dp.json`` record, if any)."""
    out: dict[str, float | None] = {}
    ex = summary.get("extraction") or {}
    if ex:
        out["extraction: unique extracted"] = _num(ex.get("unique_extracted"))
        out["extraction: generations"] = _num(ex.get("n_samples"))
        out["extraction: baseline (never-seen set)"] = _num(ex.get("baseline_unique_extracted"))
        if ex.get("prompt_checks_extracted") is not None:  # a --train-map-only verify: its own count
            out["extraction: train-map matches"] = _num(ex.get("prompt_checks_extracted"))
            out["extraction: train-map checks"] = _num(ex.get("prompt_checks_n"))
    for attack, m in sorted((summary.get("mia") or {}).items()):
        out[f"mia {attack}: AUC"] = _num(m.get("auc"))
        tpr = m.get("tpr_at_fpr") or {}
        for key in FPR_TARGETS:
            out[f"mia {attack}: TPR at {float(key) * 100:g}% FPR"] = _num(tpr.get(key))
    can = summary.get("canaries") or {}
    if can:
        out["canaries: extracted"] = _num(can.get("n_extracted"))
        for row in can.get("by_repeats") or []:
            out[f"canaries x{row.get('repeats')}: mean exposure"] = _num(row.get("mean_exposure"))
    if dp is not None:
        out["model: DP epsilon"] = _num(dp.get("epsilon"))  # null: no noise (not private)
    dd = summary.get("dedup") or {}
    if dd:
        out["dedup: groups"] = _num(dd.get("n_groups"))
        out["dedup: images in groups"] = _num(dd.get("n_in_groups"))
    return out


def compare_summaries(a: dict[str, Any], b: dict[str, Any], *, dp_a: dict[str, Any] | None = None,
                      dp_b: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows {metric, a, b, change} over the union of both summaries' metrics (a's order first)."""
    ma, mb = metrics(a, dp_a), metrics(b, dp_b)
    names = list(ma) + [k for k in mb if k not in ma]
    rows = []
    for k in names:
        va, vb = ma.get(k), mb.get(k)
        rows.append({"metric": k, "a": va, "b": vb, "change": None if va is None or vb is None else vb - va})
    return rows
