"""``audit --redo``: run again the stages whose settings changed, keeping the others.

An audit's settings are compared on a resume, and any change used to need ``--fresh``, which also
deleted the trained target and shadows, the audit's costliest part. Most options shape one stage
only (:data:`STAGE_SETTINGS`): changing ``--mia`` from ``loss`` to ``lira-fixed``, or adding
``--inpaint``, concerns the mia or inpaint stage and nothing before it. When every changed setting is
such an option, ``--redo`` deletes those stages' folders, the stages that read them
(:data:`LATER_STAGES`) and the audit's result, summary and report, and then records the new
settings; the audit then runs the missing stages. Without ``--redo`` the refusal says which stages
would run again.

The folders go first, the settings after: a run killed in between resumes under the old settings,
with the deleted stages run again under them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from diffaudit.core.errors import DiffauditError
from diffaudit.core.outdir import delete_aside, named_differences, recorded_settings, remove_deletion_leftovers

#: The audit options that shape one stage only, by stage (the stage's folder in the audit).
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "samples": ("n_samples", "sample_steps"),
    "extract": ("min_clique", "grid"),
    "verify": ("rule",),
    "mia": ("mia", "timesteps", "sweep", "draws"),
    "inpaint": ("inpaint", "inpaint_targets", "n_inpaint"),
}
#: The stages that read a stage's results, and must run again with it.
LATER_STAGES: dict[str, tuple[str, ...]] = {"samples": ("extract", "verify"), "mia": ("outliers",)}
#: The audit's own files, written from its stages' results.
AUDIT_FILES = ("result.json", "summary.json", "report.html")


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The setting names whose values differ between ``old`` and ``new`` (either may lack one), sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def stages_to_redo(changed: list[str]) -> list[str] | None:
    """The stage folders to run again for the ``changed`` settings, in the audit's order, those that
    read them included; None when a changed setting shapes more than one stage (training, data, seed)."""
    owner = {key: stage for stage, keys in STAGE_SETTINGS.items() for key in keys}
    if not changed or any(k not in owner for k in changed):
        return None
    stages = {owner[k] for k in changed}
    stages |= {later for s in list(stages) for later in LATER_STAGES.get(s, ())}
    order = dict.fromkeys(s for stage in STAGE_SETTINGS for s in (stage, *LATER_STAGES.get(stage, ())))
    return [s for s in order if s in stages]


def prepare_redo(out: Path, settings: dict[str, Any], upgrade: Callable[[dict[str, Any]], dict[str, Any]],
                 redo: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Before ``prepare_out_dir``: the ``upgrade`` hook it should read the recorded settings with.

    When the audit in ``out`` was made with settings that differ from ``settings`` only in options of
    :data:`STAGE_SETTINGS`: with ``redo``, delete those stages' folders (and the audit's own files)
    and return a hook that reads the recorded settings as the new ones; without it, raise a
    :class:`DiffauditError` naming the stages ``--redo`` would run again. A change that shapes the
    trained models or the data (training options, --data, --seed) cannot be redone: with ``redo`` that is
    refused, saying so. Otherwise (nothing recorded, nothing changed, or such a change without ``redo``)
    return ``upgrade`` as it is, and ``prepare_out_dir`` resumes or refuses as usual.
    """
    recorded = recorded_settings(out, "audit")
    if recorded is None:
        return upgrade
    old = upgrade(dict(recorded))
    changed = changed_settings(old, settings)
    stages = stages_to_redo(changed)
    said = "; ".join(named_differences(old, settings))  # as a refused resume names them, by flag
    if stages is None and redo and changed:
        raise DiffauditError(
            f"{out} holds an audit made with other settings: {said}. --redo runs later stages again (sampling, "
            "extraction, verification, membership, inpainting) but these shape the trained models or the data every "
            "stage reads: use another --out for the new audit (`diffaudit compare` puts the two side by side), or "
            "--fresh to replace this one")
    if stages is None:
        return upgrade
    if not redo:
        raise DiffauditError(
            f"{out} holds an audit made with other settings of its later stages only: {said}. Pass --redo to run "
            f"the {', '.join(stages)} stage{'s' if len(stages) > 1 else ''} again with them, keeping the trained models "
            "and every other stage (their earlier results are deleted), or use the same settings to resume, another "
            "--out, or --fresh to start over")
    from diffaudit.core.progress import stage_line

    for name in stages:
        remove_deletion_leftovers(out / name)
        if (out / name).exists():
            delete_aside(out / name)
    for name in AUDIT_FILES:
        (out / name).unlink(missing_ok=True)
    stage_line(f"audit: --redo: {said}; running the {', '.join(stages)} stage{'s' if len(stages) > 1 else ''} again, "
               "keeping the trained models and the other stages")
    return lambda rec: _as_redone(upgrade(rec), settings, changed)


def _as_redone(old: dict[str, Any], settings: dict[str, Any], changed: list[str]) -> dict[str, Any]:
    """The recorded settings ``old`` with the ``changed`` ones as in ``settings``: given their new value,
    or dropped where the new settings hold none (the inpainting options of an audit that drops --inpaint)."""
    merged = {**old, **{k: settings[k] for k in changed if k in settings}}
    return {k: v for k, v in merged.items() if k in settings or k not in changed}
