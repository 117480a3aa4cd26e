"""Progress bars (rich) with rate and ETA, silenced by ``--quiet`` or ``DIFFAUDIT_QUIET=1``."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

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


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._p, self._t = progress, task
        self.postfix = ""

    def advance(self, n: float = 1, **postfix: object) -> None:
        if self._p is None:
            return
        if postfix:
            self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        self._p.update(self._t, advance=n, info=self.postfix)


@contextmanager
def progress_bar(description: str, total: float | None, *, unit: str = "it", completed: float = 0) -> Iterator[_Bar]:
    """A progress bar: ``with progress_bar("train", steps) as bar: bar.advance(1, loss=..)``."""
    if quiet() or (not _console.is_terminal and not os.environ.get("DIFFAUDIT_PROGRESS")):
        # Non-interactive: no live bar (it would spam logs); stage lines still print.
        yield _Bar(None, None)
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


def stage_line(message: str) -> None:
    """One line per finished stage: what it did (counts, time)."""
    if not quiet():
        print(message, file=sys.stderr, flush=True)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
