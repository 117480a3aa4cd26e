"""Training a finished run for longer: ``diffaudit train --extend RUN --steps MORE --out NEW``.

A run trained with ``keep_state`` keeps, once finished, the state it ended in (``state/``: raw weights,
EMA, Adam's moments, the loss log and the log line in progress; see
:func:`~diffaudit.models.training.write_state`). Nothing a training step draws depends on the run's
length (batch ``s`` and its t, ε and flips derive from (seed, s); the learning rate's warm-up and the
EMA's decay from ``s`` alone), so a run of M steps that starts from the state of a finished run of
N < M steps ends with the weights an uninterrupted M-step run ends with (bitwise on the CPU), and
with the same loss log. The longer run is a new folder: the finished one, and any audit of it, stay
as they are, and ``compare`` can set their audits side by side (memorization against training length).

What identifies the finished run must be what identifies the new one, but for ``--steps`` (and
``--checkpoint-every``, which changes when checkpoints are taken, not what is trained). A DP-SGD
run cannot be extended: its noise was calibrated to its number of steps (its ε is for those steps).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import make_private_dir, read_json, write_json_atomic
from diffaudit.core.outdir import named_differences, recorded_settings
from diffaudit.core.progress import stage_line
from diffaudit.models.run_files import STATE_DIR, checkpoint_dirs

#: Written in the longer run's folder when it starts from another run's state; ``result.json`` repeats it.
EXTENDED_FROM = "extended_from.json"
#: Training settings that may differ between a finished run and its extension.
FREE_SETTINGS = ("steps", "checkpoint_every")


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in (settings.get("train") or {}).items() if k not in FREE_SETTINGS}
    return {**settings, "train": train}


def _differences(old: dict[str, Any], new: dict[str, Any],
                 upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None) -> list[str]:
    """The settings other than :data:`FREE_SETTINGS` that differ between a run's recorded ``old`` (read
    through ``upgrade`` when it differs as recorded) and ``new``, named by flag."""
    diffs = named_differences(_comparable(old), _comparable(new))
    if diffs and upgrade is not None:
        diffs = named_differences(_comparable(upgrade(dict(old))), _comparable(new))
    return diffs


def extend_hint(run: Path, settings: dict[str, Any],
                upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> str:
    """What to say when ``run``, a finished run that kept its state, is asked to train with ``settings``
    that differ from its own only in :data:`FREE_SETTINGS` (more steps): how to train it on; else ""."""
    old = recorded_settings(run, "train")
    if old is None or not (run / "result.json").is_file() or not (run / STATE_DIR / "state.json").is_file():
        return ""
    if _differences(old, settings, upgrade) or int(settings["train"]["steps"]) <= int(old["train"]["steps"]):
        return ""
    return (" To train the finished run on, keep it and write the longer one beside it: the same command with "
            f"--extend {run} and a new --out")


def finished_state(source: str | Path, wanted: int) -> tuple[Path, dict[str, Any], int]:
    """``(state folder, settings, steps)`` of the finished run ``source``, checked to be extendable to
    ``wanted`` steps.

    Raises :class:`DiffauditError` saying why not: no training run there, not finished (re-run its own
    command to finish it), trained with DP-SGD, finished without keeping its state, or trained for
    ``wanted`` steps or more already.
    """
    run = Path(source)
    if run.is_file():
        raise DiffauditError(f"--extend {run} is a file, not a run folder; the folder holding it is {run.parent}")
    if not run.is_dir():
        raise DiffauditError(f"--extend {run}: no such folder")
    settings = recorded_settings(run, "train")
    if settings is None:
        raise DiffauditError(f"--extend {run} is not a `diffaudit train` run folder (no train settings.json)")
    if "dp" in settings:
        raise DiffauditError(f"--extend {run} was trained with DP-SGD, whose noise was calibrated to its "
                             f"{settings.get('train', {}).get('steps')} steps (its epsilon is for those): it cannot be "
                             "trained on; train a new run with the --steps you want")
    if not (run / "result.json").is_file():
        raise DiffauditError(f"--extend {run} is not finished: re-run the command that trained it to finish it first")
    state = run / STATE_DIR
    if not (state / "state.json").is_file():
        raise DiffauditError(f"--extend {run} kept no training state (it was trained with --no-keep-state, by "
                             "`shadows`, `audit` or `canaries`, or before diffaudit kept it): it cannot be trained on; "
                             "train a new run with the --steps you want")
    steps = int(read_json(state / "state.json")["step"])
    if wanted <= steps:
        raise DiffauditError(f"--extend {run} has trained {steps} steps already: give a larger --steps (got {wanted})")
    return state, settings, steps


def check_extension(source: str | Path, settings: dict[str, Any], *,
                    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> tuple[Path, int]:
    """``(state folder, steps)`` of ``source``, checked to be what the new run asks to train on from.

    ``settings``: the new run's (as :class:`~diffaudit.models.training.RunPlan` makes them); they must
    equal the source's but for :data:`FREE_SETTINGS`, and ask for more steps (:func:`finished_state`).
    ``upgrade``: how an earlier version's record is read (as :func:`~diffaudit.core.outdir.prepare_out_dir`
    takes it). Checked before the new run's folder is made, so that a refusal leaves nothing behind.
    """
    state, old, steps = finished_state(source, int(settings["train"]["steps"]))
    diffs = _differences(old, settings, upgrade)
    if diffs:
        raise DiffauditError(f"--extend {source} was trained with other settings: {'; '.join(diffs[:5])}. Give the "
                             "command that trained it, with a larger --steps and a new --out")
    return state, steps


def start_from(run: Path, source: str | Path, state: Path, steps: int) -> bool:
    """Make ``source``'s final ``state`` (after ``steps`` steps; :func:`check_extension`) the first
    checkpoint of the new run ``run``, to train on from there, and say so. A run that already holds
    checkpoints (an extension killed and run again) is left to resume from its own. Returns whether
    the state was copied (the new run's resume from it then goes unsaid)."""
    if checkpoint_dirs(run):
        return False
    write_json_atomic(run / EXTENDED_FROM, {"run": str(Path(source).resolve()), "steps": steps})
    final = run / "checkpoints" / f"step-{steps:08d}"
    tmp = final.parent / f".tmp-{final.name}"
    make_private_dir(final.parent)
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(state, tmp)
    tmp.rename(final)  # complete, with its state.json, or absent
    stage_line(f"train: training on from the {steps} steps of {source}")
    return True


def extended_from(run: Path) -> dict[str, Any] | None:
    """The run and its step count that ``run`` started from (:data:`EXTENDED_FROM`), or None."""
    path = Path(run) / EXTENDED_FROM
    return read_json(path) if path.is_file() else None
