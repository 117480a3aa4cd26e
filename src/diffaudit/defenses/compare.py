"""Two audits side by side: did a defence (deduplication, DP-SGD) reduce memorization?

Works on the ``summary.json`` dictionaries of :func:`diffaudit.report.summary.build_summary`
(audit folders or single command folders): unique extracted images (paper: 1,280 before and 986
after deduplicating CIFAR-10), membership-inference AUC and TPR at 1 % and 0.1 % FPR per attack,
canaries extracted and their mean exposure, the DP ε of the trained model, near-duplicate groups.
A metric one side lacks is null on that side; counts are ints; AUC and TPR rows carry the confidence
intervals the summaries record. ``change`` = b − a: lower is better for every row that counts or
scores memorization; ``extraction: generations``, ``extraction: baseline set size`` and
``extraction: train-map checks`` only say how many generations or images were searched or checked
(compare counts at equal budgets).
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


def _count(x: Any) -> int | float | None:
    """A count as an int (JSON ``512``, not ``512.0``); a non-whole value stays a float, a missing one None."""
    v = _num(x)
    return int(v) if v is not None and v.is_integer() else v


def _auc_name(attack: str) -> str:
    return f"mia {attack}: AUC"


def _tpr_name(attack: str, key: str) -> str:
    return f"mia {attack}: TPR at {float(key) * 100:g}% FPR"


def metrics(summary: dict[str, Any], dp: dict[str, Any] | None = None) -> dict[str, float | int | None]:
    """Flat {metric name: value} of one summary (and the model's ``dp.json`` record, if any); counts
    are ints, rates and scores floats."""
    out: dict[str, float | int | None] = {}
    ex = summary.get("extraction") or {}
    if ex:
        out["extraction: unique extracted"] = _count(ex.get("unique_extracted"))
        out["extraction: generations"] = _count(ex.get("n_samples"))
        out["extraction: baseline (never-seen set)"] = _count(ex.get("baseline_unique_extracted"))
        if ex.get("baseline_n_images") is not None:
            out["extraction: baseline set size"] = _count(ex.get("baseline_n_images"))
        if ex.get("prompt_checks_extracted") is not None:  # a --train-map-only verify: its own count
            out["extraction: train-map matches"] = _count(ex.get("prompt_checks_extracted"))
            out["extraction: train-map checks"] = _count(ex.get("prompt_checks_n"))
    for attack, m in sorted((summary.get("mia") or {}).items()):
        out[_auc_name(attack)] = _num(m.get("auc"))
        tpr = m.get("tpr_at_fpr") or {}
        for key in FPR_TARGETS:
            out[_tpr_name(attack, key)] = _num(tpr.get(key))
    can = summary.get("canaries") or {}
    if can:
        out["canaries: extracted"] = _count(can.get("n_extracted"))
        for row in can.get("by_repeats") or []:
            out[f"canaries x{row.get('repeats')}: mean exposure"] = _num(row.get("mean_exposure"))
    if dp is not None:
        out["model: DP epsilon"] = _num(dp.get("epsilon"))  # null: no noise (not private)
    dd = summary.get("dedup") or {}
    if dd:
        out["dedup: groups"] = _count(dd.get("n_groups"))
        out["dedup: images in groups"] = _count(dd.get("n_in_groups"))
    return out


def _interval(ci: Any) -> list[float] | None:
    """[low, high] of a summary's interval dict, None when it is not a finite pair."""
    if not isinstance(ci, dict):
        return None
    low, high = _num(ci.get("low")), _num(ci.get("high"))
    return None if low is None or high is None else [low, high]


def intervals(summary: dict[str, Any]) -> dict[str, list[float]]:
    """{metric name: [low, high]} of the confidence intervals a summary records (membership AUC and TPR)."""
    out: dict[str, list[float] | None] = {}
    for attack, m in sorted((summary.get("mia") or {}).items()):
        ci = m.get("ci") or {}
        out[_auc_name(attack)] = _interval(ci.get("auc"))
        for key in FPR_TARGETS:
            out[_tpr_name(attack, key)] = _interval((ci.get("tpr_at_fpr") or {}).get(key))
    return {k: v for k, v in out.items() if v is not None}


def compare_summaries(a: dict[str, Any], b: dict[str, Any], *, dp_a: dict[str, Any] | None = None,
                      dp_b: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows {metric, a, b, change} over the union of both summaries' metrics (a's order first).

    A row whose metric has a confidence interval on either side also carries ``a_ci`` and ``b_ci``
    ([low, high] or null) and, with both, ``within_noise``: true when the two intervals overlap (the
    change is not told apart from sampling noise).
    """
    ma, mb = metrics(a, dp_a), metrics(b, dp_b)
    ca, cb = intervals(a), intervals(b)
    names = list(ma) + [k for k in mb if k not in ma]
    rows = []
    for k in names:
        va, vb = ma.get(k), mb.get(k)
        row = {"metric": k, "a": va, "b": vb, "change": None if va is None or vb is None else vb - va}
        if k in ca or k in cb:
            row.update(a_ci=ca.get(k), b_ci=cb.get(k))
        if k in ca and k in cb:
            row["within_noise"] = ca[k][0] <= cb[k][1] and cb[k][0] <= ca[k][1]
        rows.append(row)
    return rows
