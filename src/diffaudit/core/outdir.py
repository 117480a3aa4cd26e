"""Output folders with automatic resume (DESIGN: conventions).

A command writes ``settings.json`` into its ``--out`` folder before any work. Pointed at a folder
that already holds settings, it resumes when they are equal and stops with an error naming the first
setting that differs otherwise; ``fresh=True`` (``--fresh``) empties the folder first, but only a
folder diffaudit made (one holding its ``settings.json``) or an empty one: a mistyped ``--out`` must
never delete a user's own files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from diffaudit.core.errors import DiffauditError, SettingsMismatchError
from diffaudit.core.io import make_private_dir, read_json, remove_stale_temps, write_json_atomic

SETTINGS_FILE = "settings.json"


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def diff_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Names (dotted) of the settings that differ between ``old`` and ``new``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (was {a!r}, now {b!r})")
    return out


def _made_by_diffaudit(path: Path) -> bool:
    """Whether ``path`` holds a ``settings.json`` written by :func:`prepare_out_dir`."""
    try:
        record = read_json(path / SETTINGS_FILE)
    except (DiffauditError, OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get("command"), str) and isinstance(record.get("settings"), dict)


def remove_for_fresh(path: Path) -> None:
    """Delete the output folder ``path`` for ``--fresh``; refuse anything diffaudit did not make.

    Raises :class:`DiffauditError` when ``path`` is a file or a link, holds the working directory, or
    is a non-empty folder without diffaudit's ``settings.json``; nothing is deleted then.
    """
    if not path.exists():
        return
    if not path.is_dir() or path.is_symlink():
        raise DiffauditError(f"--fresh: {path} is a file or a link, not a folder diffaudit made; choose another --out")
    cwd, target = Path.cwd().resolve(), path.resolve()
    if cwd == target or target in cwd.parents:
        raise DiffauditError(f"--fresh would delete {target}, which holds the current directory; choose another --out")
    if any(path.iterdir()) and not _made_by_diffaudit(path):
        raise DiffauditError(
            f"--fresh deletes only folders diffaudit made, and {path} holds no diffaudit {SETTINGS_FILE}; "
            "choose another --out, or empty it yourself"
        )
    shutil.rmtree(path)


def prepare_out_dir(out: str | os.PathLike, command: str, settings: dict[str, Any], *, fresh: bool = False,
                    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> tuple[Path, bool]:
    """Create or reopen ``out`` for ``command`` with ``settings``.

    ``upgrade``: the command's reading of settings an earlier version recorded (keys since dropped
    because they never shaped the result, keys since added at the value the earlier version used);
    a folder whose upgraded settings match is resumed, and its settings file rewritten.

    Returns ``(path, resumed)``; ``resumed`` is True when the folder held the same settings.
    Raises :class:`SettingsMismatchError` when it holds different ones.
    """
    path = Path(out)
    if fresh:
        remove_for_fresh(path)
    make_private_dir(path)
    record = {"command": command, "settings": _normalise(settings)}
    sfile = path / SETTINGS_FILE
    if sfile.exists():
        old = read_json(sfile)
        if old.get("command") != command:
            raise SettingsMismatchError(
                f"{path} holds the output of `diffaudit {old.get('command')}`, not `{command}`; "
                "choose another --out or pass --fresh to start over"
            )
        recorded = old.get("settings", {})
        diffs = diff_settings(recorded, record["settings"])
        if diffs and upgrade is not None and not diff_settings(_normalise(upgrade(dict(recorded))), record["settings"]):
            write_json_atomic(sfile, record)  # an earlier version's record of the same work
            diffs = []
        if diffs:
            raise SettingsMismatchError(
                f"{path} holds work made with other settings: {'; '.join(diffs[:5])}. "
                "Use the same settings to resume, another --out, or --fresh to start over."
            )
        remove_stale_temps(path)  # partial files of a run killed mid-write
        return path, True
    write_json_atomic(sfile, record)
    return path, False
