"""Number formatting for the report (Jinja filters) and flattening of settings for tables."""

from __future__ import annotations

import json
import math
from typing import Any

DASH = "–"


def fmt_int(v: Any) -> str:
    if v is None:
        return DASH
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return str(v)


def counted(n: Any, word: str, many: str | None = None) -> str:
    """``n`` (thousands separated, :func:`fmt_int`) and ``word``, plural unless one: "1 clique", "1,024
    generations"; ``many``: an irregular plural."""
    return f"{fmt_int(n)} {word if n == 1 else (many or word + 's')}"


def _number(v: Any) -> float | str:
    """``v`` as a finite float, or the text to show instead: a dash for None or a non-finite value,
    the value itself for a non-number."""
    if v is None:
        return DASH
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return x if math.isfinite(x) else DASH


def fmt_float(v: Any, digits: int = 3) -> str:
    """A number to ``digits`` decimals; a small non-zero one keeps two significant digits."""
    x = _number(v)
    if isinstance(x, str):
        return x
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2g}"
    return f"{x:.{digits}f}"


def fmt_pct(v: Any) -> str:
    """A rate in [0, 1] as a percentage; small rates keep two significant digits."""
    x = "n/a" if v is None else _number(v)
    if isinstance(x, str):
        return x
    x *= 100
    if x == 0 or x >= 1:
        return f"{x:.1f}%"
    return f"{x:.2g}%"


def fmt_p(v: Any) -> str:
    """A p-value to two significant digits (0.031, 0.0057, 6.6e-06), three between 0.045 and 0.055 so
    that one on either side of 0.05 never prints as 0.05 (0.0497, 0.0503)."""
    x = _number(v)
    if isinstance(x, str):
        return x
    return f"{x:.3g}" if 0.045 <= x < 0.055 else f"{x:.2g}"


def fmt(value: Any, kind: str = "float") -> str:
    """Format by kind: ``int``, ``float``, ``pct``, ``p`` (a p-value) or ``text``."""
    if kind == "int":
        return fmt_int(value)
    if kind == "p":
        return fmt_p(value)
    if kind == "pct":
        return fmt_pct(value)
    if kind == "text":
        return DASH if value is None else str(value)
    if kind == "auto":  # ints with separators, floats to 4 significant digits, the rest as text
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return fmt(value, "text")
        if isinstance(value, int):
            return fmt_int(value)
        return f"{float(value):.4g}" if isinstance(value, float) else str(value)
    return fmt_float(value)


def zero_width_reason(value: Any) -> str:
    """Why every bootstrap resample of an attack's AUC or rate (in [0, 1]) gave the same ``value``. At the
    top of the range (1.0) the attack identifies every member (an AUC of 1.0 separates them perfectly from
    the non-members), and so it does in every resample of them; at the bottom (0.0) it identifies none, in
    any resample: however many examples there are, the bootstrap cannot bound such a value. Between the
    two (or for a value that is not a number), the examples are too few to move it. Neither is certainty."""
    x = _number(value)
    if isinstance(x, float) and x >= 1:
        return ("the attack identifies every one of these members, and resampling them cannot bound a perfect score "
                "from below")
    if isinstance(x, float) and x <= 0:
        return "the attack identifies none of these members, and resampling them cannot bound a score of 0 from above"
    return "too few examples to bound it"


def fmt_ci(ci: Any, kind: str = "float") -> str:
    """``[low, high]`` of an interval dict, or '' when absent. A bootstrap interval of width zero (every
    resample gave the same value) says why (:func:`zero_width_reason`): it is not certainty."""
    if not isinstance(ci, dict) or ci.get("low") is None or ci.get("high") is None:
        return ""
    level = ci.get("level")
    lvl = f"{float(level) * 100:.0f}% CI " if isinstance(level, (int, float)) else "CI "
    text = f"{lvl}[{fmt(ci['low'], kind)}, {fmt(ci['high'], kind)}]"
    if ci["low"] != ci["high"]:
        return text
    return f"{text} (every resample agreed: {zero_width_reason(ci['low'])})"


def flatten(d: Any, prefix: str = "", limit: int = 300) -> list[tuple[str, str]]:
    """Rows (dotted key, value text) of a nested settings dictionary; long values are shortened."""
    rows: list[tuple[str, str]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                rows += flatten(v, key + ".", limit)
            else:
                rows.append((key, _text(v, limit)))
    elif prefix:
        rows.append((prefix.rstrip("."), _text(d, limit)))
    return rows


def _text(v: Any, limit: int) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
    return s if len(s) <= limit else s[: limit - 1] + "…"
