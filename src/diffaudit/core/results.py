"""The envelope every ``result.json`` and ``summary.json`` carries (DESIGN: conventions).

``schema_version``, ``command``, ``settings``, ``seeds``, ``versions`` (diffaudit, torch,
diffusers), then the command's own fields.
"""

from __future__ import annotations

import os
from typing import Any

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


def envelope(command: str, settings: dict[str, Any], seeds: dict[str, int] | None = None, **fields: Any) -> dict[str, Any]:
    """The standard result dictionary: envelope keys first, then ``fields``."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "settings": settings,
        "seeds": dict(seeds or {}),
        "versions": versions(),
    }
    out.update(fields)
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
