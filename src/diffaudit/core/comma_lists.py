"""Comma-separated option values (``--timesteps 10,100``, ``--repeats 1,2,4``): one parser for all of them."""

from __future__ import annotations

from typing import Callable, TypeVar

from diffaudit.core.errors import DiffauditError

T = TypeVar("T")


def comma_values(text: str, convert: Callable[[str], T], kind: str, name: str | None = None) -> list[T]:
    """``"10, 100"`` -> ``[10, 100]``: each value stripped of spaces and passed to ``convert`` (``int``,
    ``float``); one trailing comma is allowed (``"10,100,"``), an empty text gives ``[]``.

    An empty value between commas (``"10,,100"``: a value lost in typing) and a value ``convert``
    refuses are a :class:`DiffauditError`: ``NAME: expected comma-separated KIND, got 'TEXT'``, where
    ``kind`` names the values in the plural ("integers") and ``name`` the option (None: the message
    starts at "expected", for argparse, which names the option itself)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) > 1 and not parts[-1]:
        parts.pop()
    if parts == [""]:
        return []
    head = f"{name}: " if name else ""
    if "" in parts:
        raise DiffauditError(f"{head}expected comma-separated {kind}, got {text!r}: a value is missing between commas")
    try:
        return [convert(p) for p in parts]
    except ValueError:
        raise DiffauditError(f"{head}expected comma-separated {kind}, got {text!r}") from None


def canonical_ints(text: str, name: str | None = None) -> str:
    """A comma-separated list of integers whose order and repeats mean nothing (timesteps pooled as
    queries, a sweep) written one way: sorted, each once, no spaces (``" 100, 10,"`` -> ``"10,100"``), so
    that two spellings of one list record alike; ``""`` stays ``""``. Errors as :func:`comma_values`."""
    return ",".join(str(v) for v in sorted(set(comma_values(text, int, "integers", name))))
