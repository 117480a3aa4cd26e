"""Dataset views: a saved selection of another dataset's examples, usable wherever a dataset is.

A view file (``NAME.view.json``) holds ``{"view": 1, "spec": ..., "options": {...}, "keys": [...]}``:
the underlying dataset spec (a built-in name, or an absolute path; a relative one is looked for in
the view's folder, then in the working directory) with its loader options and the keys to keep, in
that order. The audit writes one for the target's training set (members) and one for the images it never saw
(non-members), so ``verify --data members.view.json --baseline nonmembers.view.json`` compares
against exactly those images while every result keeps the original stable keys. Loading a view with
``image_size``, ``center_crop`` or ``mode`` replaces the view's own (same examples, other pixels);
other loader options must match the view's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import read_json, write_json_atomic
from diffaudit.data.builtin import BUILTIN_NAMES
from diffaudit.data.local_paths import check_local

VIEW_SUFFIX = ".view.json"


def is_view(spec: str | os.PathLike) -> bool:
    return str(spec).endswith(VIEW_SUFFIX)


def save_view(path: str | os.PathLike, spec: str, options: dict[str, Any], keys: Sequence[str]) -> Path:
    """Write a view of ``spec`` (loaded with ``options``) restricted to ``keys``."""
    if not str(path).endswith(VIEW_SUFFIX):
        raise DiffauditError(f"a dataset view file must end with {VIEW_SUFFIX}: {path}")
    if not keys:
        raise DiffauditError(f"{path}: a view needs at least one key")
    # a path is stored absolute, so the view loads from any working directory (a built-in name stays a name)
    spec = str(spec) if str(spec) in BUILTIN_NAMES else os.path.abspath(spec)
    return write_json_atomic(path, {"view": 1, "spec": spec, "options": dict(options), "keys": list(keys)})


def read_view(path: str | os.PathLike) -> tuple[str, dict[str, Any], list[str]]:
    """(spec, options, keys) of a view file, validated."""
    check_local(path)
    v = read_json(path)
    if not isinstance(v, dict) or v.get("view") != 1 or not isinstance(v.get("keys"), list) or "spec" not in v:
        raise DiffauditError(f"{path}: not a dataset view (expected view, spec, options, keys)")
    if is_view(v["spec"]):
        raise DiffauditError(f"{path}: a view may not point to another view")
    opts = v.get("options") or {}
    if not isinstance(opts, dict):
        raise DiffauditError(f"{path}: options must be an object")
    spec = str(v["spec"])
    beside = Path(path).parent / spec  # a relative path (a view written by hand) is looked for beside the view first
    if spec not in BUILTIN_NAMES and not os.path.isabs(spec) and beside.exists():
        spec = str(beside)
    return spec, opts, [str(k) for k in v["keys"]]
