"""Report views of inpainting, canaries and settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from diffaudit.report import plots
from diffaudit.report.alt_text import canary_alt, histogram_alt
from diffaudit.report.fmt import flatten
from diffaudit.report.images import data_uri, png_file_uri
from diffaudit.report.results import ResultSet, records, resolve_path
from diffaudit.report.summary import exposure_ceiling, inpainting_targets, inpainting_top_k

MAX_GRIDS = 16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def _grid_files(folder: Path) -> list[Path]:
    found = [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return found[:500]


def top_k_words(k: int | None) -> tuple[str, str]:
    """(column label, phrase) for the ``k`` best inpaintings kept per target: ``("top-8", "8 best
    inpaintings")``; ``("top-k", "best inpaintings")`` when k is unknown; singular for k = 1."""
    if k is None:
        return "top-k", "best inpaintings"
    return f"top-{k}", "best inpainting" if k == 1 else f"{k} best inpaintings"


def _topk_l2(t: dict[str, Any]) -> float | None:
    """A target record's ``mean_topk_l2`` as a float, None when it holds no number."""
    v = t.get("mean_topk_l2")
    return float(v) if isinstance(v, (int, float)) else None


def inpainting_view(rs: ResultSet, summary: dict[str, Any], *, redact: bool) -> dict[str, Any] | None:
    """Numbers, the members-vs-non-members distance histogram, and the per-target grids.

    Distances are each target's ``mean_topk_l2`` (the mean ℓ2 of its ``top_k`` best inpaintings; the
    old name ``mean_top10_l2`` reads too), and every label names the run's own k.
    A grid shows the original target (a training image when it is a member), so ``redact`` replaces
    every grid by its target's id.
    """
    st = rs.first("inpaint")
    if st is None:
        return None
    targets = inpainting_targets(st)
    top_label, best_text = top_k_words(inpainting_top_k(st, targets))
    mem = [v for t in targets if t.get("member") and (v := _topk_l2(t)) is not None]
    non = [v for t in targets if not t.get("member") and (v := _topk_l2(t)) is not None]
    xlabel = f"mean ℓ2 of the {best_text}"
    hist = data_uri(plots.distance_histogram(mem, non, xlabel=xlabel)) if mem or non else None
    files = _grid_files(st.path)
    used: set[Path] = set()
    grids = []
    # Members first: their reconstructions are what the attack is about.
    for t in sorted(targets, key=lambda t: (not t.get("member"), t.get("mean_topk_l2") or 0.0)):
        if len(grids) >= MAX_GRIDS:
            break
        tid = str(t.get("id"))
        path = resolve_path(t.get("grid"), st.path) if t.get("grid") else None
        if path is None:
            stem = _safe_name(tid)
            path = next((f for f in files if f not in used and (f.stem == stem or f.stem.endswith(stem) or f.stem.endswith("-" + stem))), None)
        if path is not None:
            used.add(path)
        grids.append({
            "id": tid, "member": bool(t.get("member")), "best_l2": t.get("best_l2"), "mean_topk_l2": t.get("mean_topk_l2"),
            "name": path.name if path is not None else None,
            "uri": None if redact or path is None else png_file_uri(path),
        })
    for f in files:
        if len(grids) >= MAX_GRIDS:
            break
        if f not in used:  # a grid no target claims: shown under its file name
            grids.append({"id": f.stem, "member": None, "best_l2": None, "mean_topk_l2": None, "name": f.name,
                          "uri": None if redact else png_file_uri(f)})
    return {
        "summary": summary.get("inpainting") or {},
        "hist_uri": hist,
        "hist_alt": histogram_alt(mem, non, xlabel=xlabel) if hist else None,
        "grids": [g for g in grids if g["name"] is not None],
        "n_targets": len(targets),
        "redacted": redact,
        "mask": st.settings.get("mask"),
        "n_inpaintings": st.settings.get("n_inpaintings", st.settings.get("n")),
        "top_label": top_label,
        "best_text": best_text,
    }


def canaries_view(rs: ResultSet, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The canary table's numbers (summary.json's ``canaries``), the exposure plot with the run's ceiling
    (:func:`~diffaudit.report.summary.exposure_ceiling`) and its alt text, from the same values."""
    st = rs.first("canaries")
    if st is None:
        return None
    cans = [c for c in records(st.result, "repeats", preferred=("canaries",)) if isinstance(c.get("repeats"), (int, float))]
    uri = alt = None
    if cans:
        drawn = ([c["repeats"] for c in cans], [c.get("exposure") for c in cans], [bool(c.get("extracted")) for c in cans])
        ceiling = exposure_ceiling(st.result)
        uri = data_uri(plots.canary_curve(*drawn, ceiling=ceiling))
        alt = canary_alt(*drawn, ceiling=ceiling)
    return {"summary": summary.get("canaries") or {}, "plot_uri": uri, "plot_alt": alt}


#: The audit's training options (``diffaudit audit``'s flags shared with ``train``, and ``--train-size``;
#: cli.audit's training_options(), named here because the report does not import the CLI). They train
#: the target and any shadows: with ``--model`` and no shadows nothing used them.
AUDIT_TRAIN_OPTIONS = ("preset", "steps", "batch_size", "lr", "warmup_steps", "grad_clip", "ema_decay", "flip",
                       "checkpoint_every", "log_every", "no_bf16", "compile", "train_size")


def audit_setting_rows(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows of the audit's own settings; with ``--model`` and no shadows its training options, which
    trained nothing, are left out and named in one row saying so."""
    rows = flatten(settings)
    if not settings.get("model") or settings.get("shadows"):
        return rows
    unused = [k for k, _ in rows if k in AUDIT_TRAIN_OPTIONS]
    if not unused:
        return rows
    note = (f"not used: --model {settings['model']} was audited, so the audit trained nothing "
            f"({', '.join(unused)}); the model's own training is under Training")
    return [r for r in rows if r[0] not in AUDIT_TRAIN_OPTIONS] + [("training options", note)]


def settings_view(summary: dict[str, Any]) -> dict[str, Any]:
    """(stage, rows) of every stage's settings and seeds, and the versions; the audit's own settings
    through :func:`audit_setting_rows`."""
    settings = summary.get("settings") or {}
    return {
        "settings": [(stage, audit_setting_rows(s) if stage == "audit" else flatten(s)) for stage, s in settings.items()],
        "seeds": [(stage, flatten(s)) for stage, s in (summary.get("seeds") or {}).items() if s],
        "versions": flatten(summary.get("versions") or {}),
    }
