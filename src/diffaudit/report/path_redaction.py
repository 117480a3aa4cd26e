"""The paths a redacted report hides: where the data, the models and the results lie.

A redacted report (``--redact``) is made to be shared outside the team that holds the training data, and
a path says more than it seems to: ``/data/ward7/2024-scans`` names a ward and a cohort, ``/home/jdoe``
a person, ``s3://acme-customer-photos`` a customer. Every input the stages recorded is an absolute path
or a URL (``cli.common`` resolves them), so :func:`path_labels` finds them among the summary's strings,
and :func:`hide_paths` replaces each wherever the report would show it (the header, the settings, the
notes):

- the audit folder, whose name is chosen by whoever ran it (``audit-jdoe``), by :data:`FOLDER`, and a path
  inside it by the path within it (``AUDIT/models/model-00``);
- any other path or URL by a numbered label, ``(path 1)``, ``(path 2)``, ..., the same label for the same
  path everywhere in the report, so that a reader still sees that two stages read the same data.

Built-in dataset names (``digits``) and hub ids (``openai/clip-vit-base-patch32``) are not paths and stay.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

#: What a redacted report calls the audit folder (the report's own folder, whose name it would show).
FOLDER = "AUDIT"
#: A URL's scheme (``s3://``, ``file://``, ``gs://``): what follows names a place.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: A match followed by a name's character (or a dot and one: ``.png``) is part of a longer name; one
#: followed by ``/``, a space or a sentence's full stop is the whole path.
_NAME_GOES_ON = r"(?![\w-]|\.\w)"


def _is_path(text: str) -> bool:
    """An absolute path, a home-relative one or a URL."""
    return os.path.isabs(text) or text.startswith("~") or bool(_URL.match(text))


def _strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` (nested dicts, lists and tuples), keys included, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def path_labels(summary: dict[str, Any], root: str | os.PathLike) -> dict[str, str]:
    """``{path: label}`` for every path or URL among ``summary``'s strings (the report's summary: settings,
    inputs, model), and for the audit folder ``root`` itself.

    ``root`` is labelled :data:`FOLDER`, a path inside it ``AUDIT/relative``; any other, in the order first
    met, ``(path 1)``, ``(path 2)``, ...
    """
    root = Path(root).resolve()
    labels: dict[str, str] = {str(root): FOLDER}
    n_outside = 0
    for text in _strings(summary):
        if text in labels or not _is_path(text):
            continue
        local = Path(text).expanduser() if not _URL.match(text) else None
        inside = local is not None and (local == root or root in local.parents)
        if inside:
            labels[text] = f"{FOLDER}/{local.relative_to(root).as_posix()}" if local != root else FOLDER
        else:
            n_outside += 1
            labels[text] = f"(path {n_outside})"
    return labels


def hide_paths(value: Any, labels: dict[str, str]) -> Any:
    """``value`` (the report's context: nested dicts, lists, tuples, strings) with every path of ``labels``
    replaced by its label inside each string, the longest first (so a path inside another is labelled as
    itself). ``data:`` URIs (embedded images) are left whole; other values are returned as they are."""
    if not labels:
        return value
    longest_first = sorted(labels, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(p) + _NAME_GOES_ON for p in longest_first))

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return v if v.startswith("data:") else pattern.sub(lambda m: labels[m.group(0)], v)
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, tuple):
            items = [walk(x) for x in v]
            return type(v)(*items) if hasattr(v, "_fields") else tuple(items)  # a named tuple stays one
        return v

    return walk(value)
