"""Progress on long work, silenced by ``--quiet`` or ``DIFFAUDIT_QUIET=1``.

On a terminal: a live bar (rich) with rate and ETA. Elsewhere (a log file, a batch job, CI): one plain
line every ``DIFFAUDIT_PROGRESS_INTERVAL`` seconds (default 60; 0 turns the lines off) with the count,
rate and ETA, so a long run's log shows it is alive. ``DIFFAUDIT_PROGRESS=1`` forces the live bar
where stderr is not a terminal.
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from diffaudit.core.interrupt import raise_if_interrupted

_console = Console(stderr=True)


def quiet() -> bool:
    return os.environ.get("DIFFAUDIT_QUIET", "") not in ("", "0")


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s")


def _postfix_text(postfix: dict[str, object]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._p, self._t = progress, task
        self.postfix = ""

    def advance(self, n: float = 1, **postfix: object) -> None:
        raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt was swallowed stops the work here
        if self._p is None:
            return
        if postfix:
            self.postfix = _postfix_text(postfix)
        self._p.update(self._t, advance=n, info=self.postfix)


def _duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; ``65`` -> ``1m05s``; ``7.2`` -> ``7s``."""
    s = int(round(seconds))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _LogLines:
    """The non-terminal stand-in for a bar: a plain stderr line at most every ``interval`` seconds,
    ``description: done/total (pct), rate unit/s, ETA ..., postfix``; rate and ETA count this run's
    work only (not ``completed`` at start, which a resumed run skipped)."""

    def __init__(self, description: str, total: float | None, *, unit: str, completed: float, interval: float,
                 clock=time.monotonic):
        self.description, self.total, self.unit, self.interval, self._clock = description, total, unit, interval, clock
        self.done, self._start_done = completed, completed
        self.postfix = ""
        self._t0 = self._last = clock()
        self._printed = False

    def advance(self, n: float = 1, **postfix: object) -> None:
        raise_if_interrupted()
        self.done += n
        if postfix:
            self.postfix = _postfix_text(postfix)
        now = self._clock()
        if now - self._last >= self.interval:
            self._print(now)

    def close(self) -> None:
        """The final count, where earlier lines were printed (work shorter than an interval stays silent)."""
        now = self._clock()
        if self._printed and now > self._last:
            self._print(now)

    def _print(self, now: float) -> None:
        self._last, self._printed = now, True
        print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        elapsed = now - self._t0
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {self.done:,.0f}" + (f"/{self.total:,.0f}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed")
        if self.total and rate > 0:
            parts.append(f"ETA {_duration(max(0.0, self.total - self.done) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)


def _log_interval() -> float:
    raw = os.environ.get("DIFFAUDIT_PROGRESS_INTERVAL", "60")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 60.0


@contextmanager
def progress_bar(description: str, total: float | None, *, unit: str = "it", completed: float = 0) -> Iterator[_Bar]:
    """A progress bar: ``with progress_bar("train", steps) as bar: bar.advance(1, loss=..)``.

    Quiet: nothing. Not a terminal (and ``DIFFAUDIT_PROGRESS`` unset): timed plain lines, since a
    live bar would fill a log with redraws."""
    if quiet():
        yield _Bar(None, None)
        return
    if not _console.is_terminal and os.environ.get("DIFFAUDIT_PROGRESS", "") in ("", "0"):
        interval = _log_interval()
        if not interval:
            yield _Bar(None, None)
            return
        lines = _LogLines(description, total, unit=unit, completed=completed, interval=interval)
        try:
            yield lines
        finally:
            lines.close()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=_console, transient=False) as p:
        task = p.add_task(description, total=total, completed=completed, info="")
        yield _Bar(p, task)


#: C0 control characters but the newline, DEL and the C1 controls: what can drive a terminal (move the
#: cursor, erase lines, set the clipboard through OSC 52, ...) when printed raw; and the Unicode
#: bidirectional controls (U+061C, U+200E-F, U+202A-E, U+2066-9), which reorder what it shows
#: ("ok\u202egnp.exe" reads "okexe.png").
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


#: Lone surrogates: the bytes of a file name that are not UTF-8, as Python decodes them (0xDC80-0xDCFF).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"\\u{c:04x}"


def printable(text: str) -> str:
    """``text`` with every control character but the newline written as its escape (ESC as ``\\x1b``, a
    bidirectional override as ``\\u202e``), and a byte of a name that is not UTF-8 (a lone surrogate,
    which a strict UTF-8 stream or a font refuses) as ``\\xff``: names and messages from data (a tar
    member, a file name, a key) then show as what they are, and can never drive or reorder the terminal
    they are printed on."""
    return _CONTROL.sub(_escape, _SURROGATE.sub(_surrogate, text))


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def bytes_text(n: int) -> str:
    """``n`` bytes in words: ``100 bytes``, ``153 KiB``, ``3.5 GiB``, ``28.6 TiB`` (one decimal under 10
    unless whole)."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.1f} {unit}" if value < 10 and value != int(value) else f"{value:,.0f} {unit}"
    return f"{n} bytes"


def stage_line(message: str) -> None:
    """One line per finished stage: what it did (counts, time); control characters escaped (:func:`printable`)."""
    raise_if_interrupted()
    if not quiet():
        print(printable(message), file=sys.stderr, flush=True)


#: The name warnings go by while one command runs another in-process (an audit's stage: ``audit (stage
#: train)``), None otherwise: set by :func:`warnings_speak_as`.
_SPEAKER: ContextVar[str | None] = ContextVar("diffaudit_warning_speaker", default=None)
#: The command running now (:func:`running_command`), which a warning of a lower layer that names none speaks as.
_RUNNING: ContextVar[str | None] = ContextVar("diffaudit_running_command", default=None)
#: The warnings :func:`warning_once` printed in this process outside any command (a library call).
_SAID_ONCE: set[str] = set()
#: The warnings :func:`warning_once` printed in the command running now (:func:`running_command`).
_SAID_IN_COMMAND: ContextVar[set[str] | None] = ContextVar("diffaudit_said_in_command", default=None)


@contextmanager
def _naming(var: ContextVar[str | None], name: str) -> Iterator[None]:
    """``var`` set to ``name`` within this block."""
    token = var.set(name)
    try:
        yield
    finally:
        var.reset(token)


def warnings_speak_as(name: str):
    """Within this block every :func:`warning_line` names ``name`` instead of its own command."""
    return _naming(_SPEAKER, name)


@contextmanager
def running_command(name: str) -> Iterator[None]:
    """Within this block a :func:`warning_line` that names no command (the data layer's) names ``name``, and
    :func:`warning_once` says each warning once for this command: the outermost block (an audit, whose stages
    run within it) keeps its own record, so a command run again in the same process warns again."""
    fresh = _SAID_IN_COMMAND.get() is None
    token = _SAID_IN_COMMAND.set(set()) if fresh else None
    try:
        with _naming(_RUNNING, name):
            yield
    finally:
        if token is not None:
            _SAID_IN_COMMAND.reset(token)


def warning_line(command: str, message: str) -> None:
    """``diffaudit COMMAND: warning: MESSAGE`` on stderr, control characters escaped (:func:`printable`);
    inside :func:`warnings_speak_as` that name stands for ``command``.

    Printed under ``--quiet`` and ``--json`` too: those silence progress and stage lines, not what the user
    must read to trust the result (stdout, where ``--json`` writes, stays clean). ``command`` "" names
    the command running (:func:`running_command`), else none (``diffaudit: warning: ...``)."""
    command = _SPEAKER.get() or command or _RUNNING.get()
    prefix = f"diffaudit {command}: warning: " if command else "diffaudit: warning: "
    print(printable(prefix + message), file=sys.stderr, flush=True)


def warning_once(command: str, message: str) -> None:
    """:func:`warning_line`, unless the running command (:func:`running_command`), or outside one this
    process, printed the same ``message`` already: for what a command may meet several times over (a model
    or dataset loaded once per stage, a setting every shadow model trains with) and needs saying once."""
    said = _SAID_IN_COMMAND.get()
    said = _SAID_ONCE if said is None else said
    if message in said:
        return
    said.add(message)
    warning_line(command, message)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
