"""Report views of inpainting, canaries, shadow models, settings, and the note on results made on other inputs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from diffaudit.data.options import data_flags
from diffaudit.report import plots
from diffaudit.report.alt_text import canary_alt, histogram_alt
from diffaudit.report.fmt import counted, flatten, fmt_p
from diffaudit.report.images import data_spec, data_uri, png_file_uri
from diffaudit.report.redacted_names import target_name, training_positions
from diffaudit.report.results import ResultSet, contained, records
from diffaudit.report.summary import exposure_ceiling, inpainting_targets, inpainting_top_k
from diffaudit.report.view_extraction import ratio_neighbours

MAX_GRIDS = 16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def _grid_files(folder: Path, inside: Path) -> tuple[list[tuple[Path, Path]], int]:
    """Image files under ``folder`` as (path, real path), at most 500 in name order, and how many more were
    left out because they lead out of ``inside`` (links to files elsewhere; folders linked in are not
    walked)."""
    found = []
    for top, _, names in os.walk(folder):  # links to folders are listed, never followed
        found += [Path(top) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    kept, outside = [], 0
    for f in sorted(found):
        real = contained(f, inside)
        if real is None or not real.is_file():
            outside += real is None
        elif len(kept) < 500:
            kept.append((f, real))
    return kept, outside


def _target_grid(value: Any, folder: Path, inside: Path | None) -> tuple[Path | None, Path | None, bool]:
    """(path, real path, False) of the grid file a target record names, found inside ``inside`` (the
    resolved stage folder): recorded relative to the stage ``folder`` (``grids/000000.png``), else by its
    base name there. (None, None, True) when the named file exists but leads out of it (an absolute path,
    ``..``, a link elsewhere): a result folder from elsewhere may name any file on this machine, which the
    report must not embed. (None, None, False) when nothing is found."""
    if not isinstance(value, str) or not value:
        return None, None, False
    refused = False
    for cand in (folder / value, folder / Path(value).name):
        try:
            if not cand.exists():
                continue
        except (OSError, ValueError):  # a name too long, a NUL in it
            continue
        real = contained(cand, inside) if inside is not None else None
        if real is not None and real.is_file():
            return cand, real, False
        refused = refused or real is None
    return None, None, refused


def _left_out_note(n: int, linked: bool) -> str | None:
    """Why grids are missing from the report: files that lead out of the inpaint folder are never embedded."""
    if linked:
        return ("The inpaint folder is a link out of the reported folder: its grids are not embedded (a result folder "
                "from elsewhere could link to any folder on this machine).")
    if not n:
        return None
    s = "grid file leads" if n == 1 else "grid files lead"
    return (f"{n} {s} out of the inpaint folder (an absolute path, .. or a link to a file elsewhere) and "
            f"{'is' if n == 1 else 'are'} not embedded: a result folder from elsewhere could name any file on this machine.")


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
    every grid by its target's position: ``#N`` in the training set extraction numbers, else ``--data #N``
    in the --data inpaint read (:func:`~diffaudit.report.redacted_names.target_name`): its id is a
    training key, and keys (file names) may name a person.
    """
    st = rs.first("inpaint")
    if st is None:
        return None
    targets = inpainting_targets(st)
    top_label, best_text = top_k_words(inpainting_top_k(st, targets))
    mem = [v for t in targets if t.get("member") and (v := _topk_l2(t)) is not None]
    non = [v for t in targets if not t.get("member") and (v := _topk_l2(t)) is not None]
    xlabel = f"mean ℓ2 of the {best_text}"
    png, plot_note = plots.try_plot("distance histogram", lambda: plots.distance_histogram(mem, non, xlabel=xlabel)) \
        if mem or non else (None, None)
    hist = data_uri(png) if png else None
    # Only files inside the stage folder (links followed) are embedded; a stage folder linked from
    # elsewhere embeds none, and is not walked (its note says so without a count).
    linked = not rs.holds(st.path)
    inside = None if linked else st.path.resolve()
    files, outside = ([], 0) if inside is None else _grid_files(st.path, inside)
    used: set[Path] = set()  # real paths
    grids = []
    # redacted, a target is named by its position in the training set extraction numbers where it is there
    verify = rs.first("verify")
    positions = training_positions(rs) if redact else {}
    same_data = verify is not None and data_spec(verify.settings) == data_spec(st.settings)
    # Members first: their reconstructions are what the attack is about.
    for t in sorted(targets, key=lambda t: (not t.get("member"), t.get("mean_topk_l2") or 0.0)):
        if len(grids) >= MAX_GRIDS:
            break
        tid = str(t.get("id"))
        path, real, refused = _target_grid(t.get("grid"), st.path, inside)
        outside += refused
        if path is None:
            stem = _safe_name(tid)
            path, real = next(((f, r) for f, r in files if r not in used and (f.stem == stem or f.stem.endswith(stem) or f.stem.endswith("-" + stem))), (None, None))
        if real is not None:
            used.add(real)
        grids.append({
            "id": (target_name(t, positions, same_data) or f"target {len(grids) + 1}") if redact else tid,
            "member": bool(t.get("member")), "best_l2": t.get("best_l2"), "mean_topk_l2": t.get("mean_topk_l2"),
            "name": path.name if path is not None else None,
            "uri": None if redact or real is None else png_file_uri(real),
        })
    for f, real in files:
        if len(grids) >= MAX_GRIDS:
            break
        if real not in used:  # a grid no target claims: shown under its file name
            grids.append({"id": f"grid {len(grids) + 1}" if redact else f.stem, "member": None, "best_l2": None, "mean_topk_l2": None, "name": f.name,
                          "uri": None if redact else png_file_uri(real)})
    notes = [n for n in (plot_note, _left_out_note(outside, linked)) if n]
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
        "notes": notes,
        "hidden_l2": _hidden_l2(targets),
    }


def _hidden_l2(targets: list[dict[str, Any]]) -> dict[str, float | None] | None:
    """{"members", "nonmembers"}: the mean over targets of ``mean_topk_l2_hidden``, the kept inpaintings'
    ℓ2 over the hidden pixels alone (the whole image's ℓ2 counts the known pixels too, which the model is
    given unchanged: for a half mask it is the hidden part's divided by √2); None where no target records it."""
    def mean(member: bool) -> float | None:
        values = [t["mean_topk_l2_hidden"] for t in targets if bool(t.get("member")) == member
                  and isinstance(t.get("mean_topk_l2_hidden"), (int, float))]
        return sum(values) / len(values) if values else None

    out = {"members": mean(True), "nonmembers": mean(False)}
    return out if any(v is not None for v in out.values()) else None


def canaries_view(rs: ResultSet, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The canary table's numbers (summary.json's ``canaries``), the exposure plot with the run's ceiling
    (:func:`~diffaudit.report.summary.exposure_ceiling`) and its alt text, from the same values."""
    st = rs.first("canaries")
    if st is None:
        return None
    cans = [c for c in records(st.result, "repeats", preferred=("canaries",)) if isinstance(c.get("repeats"), (int, float))]
    uri = alt = note = None
    if cans:
        drawn = ([c["repeats"] for c in cans], [c.get("exposure") for c in cans], [bool(c.get("extracted")) for c in cans])
        ceiling = exposure_ceiling(st.result)
        png, note = plots.try_plot("canary exposure plot", lambda: plots.canary_curve(*drawn, ceiling=ceiling))
        if png:
            uri, alt = data_uri(png), canary_alt(*drawn, ceiling=ceiling)
    canaries = summary.get("canaries") or {}
    return {"summary": canaries, "plot_uri": uri, "plot_alt": alt, "plot_notes": [note] if note else [],
            "untestable": untestable_note(canaries)}


def untestable_note(canaries: dict[str, Any]) -> str | None:
    """Why the repeat counts whose test against chance cannot reach p < 0.05 are not "at chance" (summary.json's
    ``canaries``, rows with ``chance_needs``): even canaries whose losses are all below every reference's
    would give their least p (``chance_min_pvalue``), so their p is no sign either way; and the
    ``--n-reference`` or ``--per-repeat`` that would let the test find memorization. None where every
    repeat count can be tested."""
    rows = [r for r in canaries.get("by_repeats") or [] if r.get("chance_needs")]
    if not rows:
        return None
    n_ref = canaries.get("n_reference")
    floors: dict[tuple[Any, Any], list[Any]] = {}  # (canaries, least p) -> repeat counts
    for r in rows:
        floors.setdefault((r.get("n"), r.get("chance_min_pvalue")), []).append(r["repeats"])
    where = _and_list([str(r["repeats"]) for r in rows])
    refs = counted(n_ref, "reference") if isinstance(n_ref, int) else "its references"
    if len(floors) == 1:
        (n, floor), = floors
        least = (f"with {counted(n, 'canary', 'canaries')} each and {refs}, the least p it can give, every canary's loss "
                 f"below every reference's, is {fmt_p(floor)}")
    else:
        least = f"with {refs}, the least p it can give, every canary's loss below every reference's, is " + _and_list(
            [f"{fmt_p(floor)} with {counted(n, 'canary', 'canaries')} ({', '.join(map(str, reps))})"
             for (n, floor), reps in floors.items()])
    fixes = [f"{flag} {max(needs)} or more" for flag, key in (("--n-reference", "n_reference"), ("--per-repeat", "n_canaries"))
             if (needs := [r["chance_needs"][key] for r in rows if isinstance(r["chance_needs"].get(key), int)])]
    fix = f" To test {'it' if len(rows) == 1 else 'them'}, run `diffaudit canaries` with {', or '.join(fixes)}." if fixes else ""
    counts, its = ("repeat count", "Its") if len(rows) == 1 else ("repeat counts", "Their")
    return (f"The test against chance cannot find memorization at {counts} {where}: {least}, not below 0.05, whatever "
            f"the model learnt. {its} p of 0.05 or more is therefore no sign that {its.lower()} canaries were not "
            f"memorized; {its.lower()} exposures are what was measured.{fix}")


def _and_list(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


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


def data_vs_model_note(ex: dict[str, Any] | None) -> str | None:
    """The sentence saying that verify's --data was not what the model trained on (summary.json's
    ``extraction.data_vs_model``): how many of its "training images" the model never trained on, and how many
    of its training examples --data lacks; None when they agree or nothing is known."""
    d = (ex or {}).get("data_vs_model")
    if not isinstance(d, dict) or not isinstance(d.get("n_data"), int) or not isinstance(d.get("n_trained"), int):
        return None
    parts = []
    never, missing = d.get("n_not_trained") or 0, d.get("n_trained_missing") or 0
    if never:
        parts.append(f"{never:,} of the {d['n_data']:,} images verify counted as training images were never trained on "
                     f"by the model that made the generations (it trained on {d['n_trained']:,}), so a match to one of "
                     "them is not memorization")
    if missing:
        parts.append(f"{missing:,} of the {d['n_trained']:,} examples it trained on were not searched")
    if not parts:
        return None
    return "The training set verified against is not the model's: " + "; ".join(parts) + "."


def untrained_matches(data_vs_model: Any) -> str | None:
    """For a one-line result: that verify's --data holds images the model never trained on (``data_vs_model``,
    as verify records it and summary.json keeps it), whose matches are no memorization; None when it holds
    none or nothing is known."""
    d = data_vs_model if isinstance(data_vs_model, dict) else {}
    never, n_data = d.get("n_not_trained"), d.get("n_data")
    if not isinstance(never, int) or not isinstance(n_data, int) or never <= 0:
        return None
    return (f"the model never trained on {never:,} of --data's {n_data:,} images, so a match to one of them is not "
            "memorization")


def extraction_words(n: Any, data_vs_model: Any) -> tuple[str, str]:
    """How a one-line result names verify's count ``n`` and what it adds after it: ("training images
    extracted", ""), or where --data holds images the model never trained on ("images of --data matched",
    "; " + :func:`untrained_matches`)."""
    images = "image" if n == 1 else "images"
    untrained = untrained_matches(data_vs_model)
    return (f"{images} of --data matched", f"; {untrained}") if untrained else (f"training {images} extracted", "")


def _neighbours_used(ex: dict[str, Any] | None) -> tuple[int, int] | None:
    """(neighbours the ratio rule averaged over, training images) of summary.json's ``extraction``, the n
    the rule's sentence states (:func:`~diffaudit.report.view_extraction.ratio_neighbours`: at most the
    training set); None without the ratio rule or a training set's size."""
    ex = ex or {}
    if ex.get("rule") != "ratio" or not isinstance(ex.get("n_train"), int):
        return None
    return ratio_neighbours(ex.get("n_neighbors"), ex["n_train"]), ex["n_train"]


def _with_neighbours_used(rows: list[tuple[str, str]], used: tuple[int, int] | None) -> list[tuple[str, str]]:
    """``rows`` of a stage's settings with ``n_neighbors`` saying how many were used when that is not the n
    asked for (a training set smaller than it): the rule's sentence states the n used."""
    if used is None:
        return rows
    n, n_train = used
    return [(k, f"{v} ({n} used: the training set holds {n_train} images)" if k == "n_neighbors" and v != str(n) else v)
            for k, v in rows]


def _sweep_ran(value: Any, mia: Any) -> str | None:
    """The audit's ``--sweep`` as given (``value``, "10,50,...,1000") with the timesteps its mia stage ran
    where those differ: the paper's t = 1000 is the last of a 1,000-step schedule, 999 (``clip_sweep`` of
    :mod:`diffaudit.cli.mia`). None when they agree or either is not recorded as numbers."""
    attack = mia.get("attack") if isinstance(mia, dict) else None  # older records name the attack alone
    ran = attack.get("sweep") if isinstance(attack, dict) else None
    try:
        given = sorted({int(t) for t in str(value).split(",")})
        ran = [int(t) for t in ran]
    except (TypeError, ValueError):
        return None
    if not ran or given == ran:
        return None
    return (f"{value} (mia ran t = {', '.join(map(str, ran))}: a t equal to the number of timesteps means the last "
            "of them)")


def settings_view(summary: dict[str, Any]) -> dict[str, Any]:
    """(stage, rows) of every stage's settings and seeds, and the versions; the audit's own settings
    through :func:`audit_setting_rows`, its ``sweep`` with the timesteps mia ran where they differ
    (:func:`_sweep_ran`)."""
    settings = summary.get("settings") or {}
    used = _neighbours_used(summary.get("extraction"))

    def audit_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
        ran = _sweep_ran(s.get("sweep"), settings.get("mia"))
        return [(k, ran if k == "sweep" and ran else v) for k, v in audit_setting_rows(s)]

    return {
        "settings": [(stage, audit_rows(s) if stage == "audit" else _with_neighbours_used(flatten(s), used))
                     for stage, s in settings.items()],
        "seeds": [(stage, flatten(s)) for stage, s in (summary.get("seeds") or {}).items() if s],
        "versions": flatten(summary.get("versions") or {}),
    }


def mixed_inputs_view(mixed: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The summary's ``mixed_inputs`` as the report's note words it: [{"kind": "datasets" or "models",
    "entries": [{"label", "pooled", "n_models", "stages"}]}]. A dataset's label is its ``--data`` with the
    options it was read with, and its data digest where two would otherwise read alike (the same flags,
    other pixels), so that no two entries show the same words; a model's is its run, or (``pooled``
    true) the shadows folder (None where not recorded) whose ``n_models`` models a membership attack
    attacked each in turn."""
    if not mixed:
        return []
    out = []
    if mixed.get("data"):
        labels = [data_flags(d["input"], d.get("options")) for d in mixed["data"]]
        entries = [{"label": label + (f" [data digest {d.get('digest') or 'not recorded'}]" if labels.count(label) > 1 else ""),
                    "pooled": False, "n_models": None, "stages": d["stages"]} for label, d in zip(labels, mixed["data"])]
        out.append({"kind": "datasets", "entries": entries})
    if mixed.get("model"):
        entries = [{"label": m["input"], "pooled": "pooled" in m, "n_models": m.get("pooled"), "stages": m["stages"]}
                   for m in mixed["model"]]
        out.append({"kind": "models", "entries": entries})
    return out


def shadows_view(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The Shadow models section: how many models a ``diffaudit shadows`` folder holds, of how many
    examples, and each model's training images and final loss (as its result.json lists them); None
    without a shadows folder."""
    sh = summary.get("shadows")
    if not sh:
        return None
    sizes = [m["n_train"] for m in sh["models"] if m.get("n_train") is not None]
    return {**sh, "n_train_range": (min(sizes), max(sizes)) if sizes else None}
