"""Report view of the audited model: how its training run trained it (options, data, deduplication,
DP-SGD) and its loss curve, from the summary's ``model`` section and the run's ``loss_log.jsonl``."""

from __future__ import annotations

from typing import Any

from diffaudit.report import plots
from diffaudit.report.alt_text import loss_alt
from diffaudit.data.options import data_flags
from diffaudit.report.fmt import fmt, fmt_int
from diffaudit.report.images import data_uri
from diffaudit.report.results import ResultSet, read_jsonl


def _recipe(model: dict[str, Any]) -> str:
    """The training options in words: "preset tiny, 600 steps, batch 64, learning rate 0.0002, 16×16 px"."""
    parts = []
    if model.get("preset") is not None:
        parts.append(f"preset {model['preset']}")
    if model.get("steps") is not None:
        parts.append(f"{fmt_int(model['steps'])} steps")
    if model.get("batch_size") is not None:
        parts.append(f"batch {fmt_int(model['batch_size'])}")
    if isinstance(model.get("lr"), (int, float)):
        parts.append(f"learning rate {model['lr']:g}")
    if model.get("image_size"):
        parts.append(f"{model['image_size']}×{model['image_size']} px")
    parts += [text for key, text in (("flip", "random flips"), ("class_conditional", "class-conditional")) if model.get(key)]
    return ", ".join(parts)


def _data_text(model: dict[str, Any], n_canaries: int | None = None) -> str:
    """``--data SPEC --OPTION V`` of the training data, with its number of training images (and how many of
    them are inserted canaries, in a canary run)."""
    data = model.get("data") or {}
    text = f"--data {data_flags(data['spec'], data.get('options'))}" if data.get("spec") else ""
    if model.get("n_train") is not None:
        text += f"{', ' if text else ''}{fmt_int(model['n_train'])} training images"
        if n_canaries:
            text += f", {fmt_int(n_canaries)} of them inserted canaries"
    return text


def _repeats_text(repeats: dict[str, Any]) -> str:
    """How many training examples were repeated (``--repeat``, or inserted canaries), and the entries in all."""
    n = repeats.get("n_repeated")
    text = f"{fmt_int(n)} example{'' if n == 1 else 's'} repeated in the training stream"
    if repeats.get("n_stream") is not None:
        text += f" ({fmt_int(repeats['n_stream'])} training entries in all, copies included)"
    return text


def _dedup_text(dedup: dict[str, Any] | None) -> str:
    """A ``--dedup`` record in words; "no" for a run trained without it."""
    if not dedup:
        return "no (trained without --dedup)"
    n = dedup.get("n_dropped")
    dropped = "near-duplicates dropped (count not recorded)" if n is None else \
        f"{fmt_int(n)} near-duplicate{'' if n == 1 else 's'} dropped from training"
    return f"yes: --dedup {dedup.get('keep_list')}, {dropped}"


def _dp_text(dp: dict[str, Any] | None) -> str:
    """A DP-SGD record in words: ε at δ with the noise multiplier and clipping norm; "no" without DP-SGD."""
    if not dp:
        return "no"
    sigma = dp.get("noise_multiplier")
    if dp.get("epsilon") is None:
        if isinstance(sigma, (int, float)) and sigma > 0:  # noise, but no accountant bounds ε at this level
            return f"noise multiplier {fmt(sigma, 'auto')}, but no finite ε bound: not shown to be private"
        return "no noise: not private (ε infinite)"
    extra = [f"{name} {fmt(dp[key], 'auto')}" for key, name in (("noise_multiplier", "noise multiplier"),
                                                               ("max_grad_norm", "clipping norm")) if dp.get(key) is not None]
    if dp.get("fallback_reason"):  # the configured accountant (PRV) gave no ε; the RDP bound is recorded
        extra.append(f"{str(dp.get('accountant_used') or 'rdp').upper()} bound: {dp['fallback_reason']}")
    return f"ε = {fmt(dp['epsilon'], 'auto')} at δ = {fmt(dp.get('delta'), 'auto')}" + (f" ({', '.join(extra)})" if extra else "")


def training_facts(model: dict[str, Any] | None, n_canaries: int | None = None) -> list[tuple[str, str]]:
    """(label, text) lines of the audited model's training record; deduplication and DP-SGD only when
    the training run was found (its record says whether they were used). ``n_canaries``: the inserted
    canaries among its training images, in a canary run. In a folder whose results were made on several
    models, the run's line names the results made on this one (``model["stages"]``)."""
    if not model:
        return []
    run = str(model["path"]) if model.get("path") else None
    if run and model.get("stages"):  # a folder of results made on several models: this one is theirs only
        run += f" (the model of {', '.join(model['stages'])}; the other results here are of other models)"
    facts = [("run", run) if run else None,
             ("training", _recipe(model)), ("data", _data_text(model, n_canaries))]
    if model.get("repeats"):
        facts.append(("repeated", _repeats_text(model["repeats"])))
    if model.get("extended_from"):
        ext = model["extended_from"]
        steps = "" if ext.get("steps") is None else f", after its {fmt_int(ext['steps'])} steps"
        facts.append(("trained on from", f"{ext['run']}{steps} (train --extend)"))
    if "dedup" in model:
        facts.append(("deduplicated", _dedup_text(model["dedup"])))
    if "dp" in model:
        facts.append(("DP-SGD", _dp_text(model["dp"])))
    facts += [(name, fmt(model[key], "auto")) for key, name in (("n_parameters", "parameters"), ("final_loss", "final loss"))
              if model.get(key) is not None]
    return [f for f in facts if f and f[1]]


def training_view(rs: ResultSet, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The Training section: the model's training facts, its loss curve, and, in an audit, a note when
    the run that trained the audited model was not found (a diffusers folder, or a run moved since).
    None without a training run, outside an audit."""
    st = rs.first("train")
    model = summary.get("model")
    if st is None and not (model and rs.command == "audit"):
        return None
    rows = read_jsonl(st.path / "loss_log.jsonl") if st is not None else []
    pts = [(r.get("step", i), r.get("loss")) for i, r in enumerate(rows) if isinstance(r.get("loss"), (int, float))]
    png, plot_note = plots.try_plot("training loss plot", lambda: plots.training_loss([p[0] for p in pts], [p[1] for p in pts])) \
        if len(pts) > 1 else (None, None)
    uri = data_uri(png) if png else None
    note = None
    if st is None:
        note = (f"No training record found for the audited model {model.get('path')} (a diffusers folder, or a run "
                "directory moved since the audit): how it was trained is not known here.")
    n_canaries = (summary.get("canaries") or {}).get("n_canaries")
    return {"facts": training_facts(model, n_canaries), "loss_uri": uri, "n_points": len(pts),
            "loss_alt": loss_alt([p[0] for p in pts], [p[1] for p in pts]) if uri else None,
            "final_loss": pts[-1][1] if pts else None, "note": note, "plot_notes": [plot_note] if plot_note else []}
