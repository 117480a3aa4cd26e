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

