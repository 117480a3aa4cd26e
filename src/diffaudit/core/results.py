"""The envelope every ``result.json`` and ``summary.json`` carries (docs/architecture.md, Conventions: results).

``schema_version``, ``command``, ``settings``, ``seeds``, ``versions`` (diffaudit, torch,
diffusers), then the command's own fields, and ``skipped_inputs`` when ``--skip-bad`` skipped inputs
of the data the command loaded (:func:`recording_skipped`): which images a result never looked at.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Sequence

from diffaudit.core.io import write_json_atomic

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of diffaudit, torch, diffusers and numpy, for reproducibility (read from metadata, not imports)."""
    from importlib.metadata import PackageNotFoundError, version

    import diffaudit

    out = {"diffaudit": diffaudit.__version__}
    for name in ("torch", "diffusers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


#: The inputs skipped while one command runs (:func:`recording_skipped`); None outside a command.
#: Keyed by (source, name), so that an input skipped again (data loaded twice) is listed once.
_SKIPPED: ContextVar[dict[tuple[str, str], dict[str, str]] | None] = ContextVar("diffaudit_skipped_inputs", default=None)
#: Skipped inputs a result lists by name; more are counted (``skipped_inputs_total``).
SKIPPED_LISTED = 1000


@contextmanager
def recording_skipped() -> Iterator[None]:
    """Within this block (one command), every input that ``--skip-bad`` skips while data loads
    (:func:`note_skipped`) is listed in the results the command writes (:func:`envelope`)."""
    token = _SKIPPED.set({})
    try:
        yield
    finally:
        _SKIPPED.reset(token)


def note_skipped(source: str, skipped: Sequence[tuple[str, str]]) -> None:
    """Record the inputs (name, reason) skipped while loading ``source``, each once, for the results of
    the command running (nothing outside :func:`recording_skipped`)."""
    listed = _SKIPPED.get()
    if listed is None:
        return
    for name, reason in skipped:
        listed.setdefault((str(source), str(name)), {"source": str(source), "name": str(name), "reason": str(reason)})


def envelope(command: str, settings: dict[str, Any], seeds: dict[str, int] | None = None, **fields: Any) -> dict[str, Any]:
    """The standard result dictionary: envelope keys first, then ``fields``, then ``skipped_inputs`` (the
    inputs ``--skip-bad`` skipped in this command's data, at most :data:`SKIPPED_LISTED`, and
    ``skipped_inputs_total``) when there were any."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "settings": settings,
        "seeds": dict(seeds or {}),
        "versions": versions(),
    }
    out.update(fields)
    skipped = _SKIPPED.get()
    if skipped and "skipped_inputs" not in out:
        out["skipped_inputs"], out["skipped_inputs_total"] = list(skipped.values())[:SKIPPED_LISTED], len(skipped)
    return out


def write_result(path: str | os.PathLike, command: str, settings: dict[str, Any], seeds: dict[str, int] | None = None, **fields: Any):
    """Write ``envelope(...)`` atomically to ``path``; returns the dictionary written."""
    data = envelope(command, settings, seeds, **fields)
    write_json_atomic(path, data)
    return data



#: Old name -> current name of an inpainting target's fields, for readers of result files written by
#: earlier versions (the same values): the mean ℓ2 of the kept top-k was ``mean_top10_l2`` whatever
#: k was, and the kept inpaintings' target/shadow loss ratios were ``top_scores``. Here, beside the
#: envelope, so that the report reads old files without importing the attack (and torch).
INPAINT_RENAMED_FIELDS = {
    "top_scores": "top_loss_ratios",
    "mean_top10_l2": "mean_topk_l2",
    "mean_top10_l2_hidden": "mean_topk_l2_hidden",
}


def with_current_names(record: dict[str, Any], renamed: dict[str, str] = INPAINT_RENAMED_FIELDS) -> dict[str, Any]:
    """``record`` with every old name of ``renamed`` also under its current name, unless that is
    present already (the old key stays too)."""
    return {**record, **{new: record[old] for old, new in renamed.items() if old in record and new not in record}}
