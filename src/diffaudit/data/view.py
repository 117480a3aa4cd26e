"""Dataset views: a saved selection of other datasets' examples, usable wherever a dataset is.

A view file (``NAME.view.json``) holds ``{"view": 1, "spec": ..., "options": {...}, "keys": [...]}``:
the underlying dataset spec (a built-in name, or an absolute path; a relative one is looked for in
the view's folder, then in the working directory) with its loader options and the keys to keep, in
that order. The audit writes one for the target's training set (members) and one for the images it
never saw (non-members), so ``verify --data members.view.json --baseline nonmembers.view.json``
compares against exactly those images while every result keeps the original stable keys. Loading a
view with ``image_size``, ``center_crop`` or ``mode`` replaces the view's own (same examples, other
pixels); other loader options must match the view's.

A view of several datasets, one after another, holds ``{"view": 1, "parts": [{"spec", "options",
"keys", "prefix"}, ...]}``: each part's keys prefixed with its ``prefix`` (so that two datasets that
name examples alike, CIFAR-10's train and test splits, stay apart), then restricted to its ``keys``
(prefixed; null keeps all). ``audit --heldout`` writes one, the training set followed by the
held-out images, so that a model trained on all of its data has non-members.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import read_json, write_json_atomic
from diffaudit.data.builtin import BUILTIN_NAMES
from diffaudit.data.local_paths import check_local

VIEW_SUFFIX = ".view.json"
#: The loader options a view's dataset may carry (those of :func:`~diffaudit.data.loader.load_dataset`).
VIEW_OPTIONS = ("image_size", "center_crop", "subset", "subset_seed", "mode", "skip_bad", "cifar_root")


def is_view(spec: str | os.PathLike) -> bool:
    return str(spec).endswith(VIEW_SUFFIX)


@dataclass(frozen=True)
class ViewPart:
    """One dataset of a view: ``spec`` loaded with ``options``, each key prefixed with ``prefix``, then
    restricted to ``keys`` (prefixed, in that order; None keeps every example)."""

    spec: str
    options: dict[str, Any]
    keys: list[str] | None = None
    prefix: str = ""


def save_view(path: str | os.PathLike, spec: str, options: dict[str, Any], keys: Sequence[str]) -> Path:
    """Write a view of ``spec`` (loaded with ``options``) restricted to ``keys``."""
    return save_parts_view(path, [ViewPart(spec, dict(options), list(keys))])


def save_parts_view(path: str | os.PathLike, parts: Sequence[ViewPart]) -> Path:
    """Write a view of the examples of ``parts``, one dataset after another (a one-part view without a
    prefix is written in the single-dataset form ``{"view", "spec", "options", "keys"}``)."""
    if not str(path).endswith(VIEW_SUFFIX):
        raise DiffauditError(f"a dataset view file must end with {VIEW_SUFFIX}: {path}")
    if not parts or any(p.keys is not None and not p.keys for p in parts):
        raise DiffauditError(f"{path}: a view needs at least one key in each of its datasets")
    # a path is stored absolute, so the view loads from any working directory (a built-in name stays a name)
    rows = [{"spec": str(p.spec) if str(p.spec) in BUILTIN_NAMES else os.path.abspath(p.spec), "options": dict(p.options),
             "keys": None if p.keys is None else list(p.keys), "prefix": p.prefix} for p in parts]
    if len(rows) == 1 and not rows[0]["prefix"] and rows[0]["keys"] is not None:
        return write_json_atomic(path, {"view": 1, **{k: rows[0][k] for k in ("spec", "options", "keys")}})
    return write_json_atomic(path, {"view": 1, "parts": rows})


def read_view(path: str | os.PathLike) -> list[ViewPart]:
    """The datasets of a view file, validated (a single-dataset view is one part)."""
    check_local(path)
    v = read_json(path)
    if isinstance(v, dict) and isinstance(v.get("view"), int) and v["view"] != 1:
        raise DiffauditError(f"{path}: a dataset view of version {v['view']}, which this diffaudit does not read (it "
                             "reads version 1)")
    if not isinstance(v, dict) or v.get("view") != 1:
        raise DiffauditError(f"{path}: not a dataset view (expected view, spec, options, keys; or view, parts)")
    if "parts" in v:
        if not isinstance(v["parts"], list) or not v["parts"]:
            raise DiffauditError(f"{path}: `parts` must be a non-empty list of {{spec, options, keys, prefix}}")
        return [_part(path, x, i) for i, x in enumerate(v["parts"])]
    if not isinstance(v.get("keys"), list) or "spec" not in v:
        raise DiffauditError(f"{path}: not a dataset view (expected view, spec, options, keys; or view, parts)")
    return [_part(path, v, None)]


def _part(path: str | os.PathLike, v: Any, i: int | None) -> ViewPart:
    where = f"{path}" if i is None else f"{path}: part {i}"
    if not isinstance(v, dict) or "spec" not in v:
        raise DiffauditError(f"{where}: expected an object with spec, options, keys")
    if is_view(v["spec"]):
        raise DiffauditError(f"{where}: a view may not point to another view")
    opts = v.get("options") or {}
    if not isinstance(opts, dict):
        raise DiffauditError(f"{where}: options must be an object")
    unknown = sorted(str(k) for k in opts if k not in VIEW_OPTIONS)
    if unknown:
        raise DiffauditError(f"{where}: unknown option {', '.join(map(repr, unknown))} (a view's options are "
                             f"{', '.join(VIEW_OPTIONS)})")
    keys = v.get("keys")
    if keys is not None and not isinstance(keys, list):
        raise DiffauditError(f"{where}: keys must be a list (or null: every example)")
    prefix = v.get("prefix") or ""
    if not isinstance(prefix, str):
        raise DiffauditError(f"{where}: prefix must be a string")
    spec = str(v["spec"])
    beside = Path(path).parent / spec  # a relative path (a view written by hand) is looked for beside the view first
    if spec not in BUILTIN_NAMES and not os.path.isabs(spec) and beside.exists():
        spec = str(beside)
    return ViewPart(spec, opts, None if keys is None else [str(k) for k in keys], prefix)
