"""Ctrl-C that is never lost.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to be. Raised
inside a garbage-collection callback, a ``__del__`` or a weakref finaliser, it is printed as
"Exception ignored ..." and dropped, and the work goes on as if the key had not been pressed, to
finish with exit status 0. Within :func:`catching_ctrl_c` SIGINT also sets a flag; work loops call
:func:`raise_if_interrupted` (every progress bar's ``advance`` does), which raises the interruption
again when its first ``KeyboardInterrupt`` was swallowed (Python's "Exception ignored" report of it is
not printed), and the CLI reads :func:`pending` when a command returns, so a command that was
interrupted ends with status 130 and one line either way.

SIGTERM (what ``timeout``, ``kill`` and batch schedulers send) and SIGHUP (a closed terminal) stop a
command the same way, where the process has no handler of its own for them: they ended it silently before,
with no line and, under ``--json``, no JSON. :func:`stopped_with` gives the exit status of the
signal that stopped a command (128 + its number: 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_pending = False
_received: int | None = None
#: The signals that stop a command as Ctrl-C does, beside SIGINT (SIGHUP is not on every system).
OTHER_STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


def _on_sigint(signum, frame) -> None:  # noqa: ARG001 (the signal module's handler signature)
    global _pending, _received
    if _pending and sys.exc_info()[0] is not None:
        return  # pressed again while the first interruption unwinds: its clean-up (finished work kept) runs whole
    _pending, _received = True, signum
    raise KeyboardInterrupt


def _quiet_unraisable(previous):
    """``sys.unraisablehook`` that drops the KeyboardInterrupt Python could not raise (in a ``__del__`` or
    a weakref callback): the flag carries it, so "Exception ignored ... KeyboardInterrupt" and its traceback
    would only stand before the command's one line; anything else goes to ``previous``."""
    def hook(unraisable) -> None:
        if not (_pending and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            previous(unraisable)
    return hook


@contextmanager
def catching_ctrl_c() -> Iterator[None]:
    """Within: SIGINT raises ``KeyboardInterrupt`` as Python's own handler does, and also sets the flag
    :func:`pending` reads; SIGTERM and SIGHUP do the same. Each is taken only where nothing else handles it:
    SIGINT where Python's own handler does, SIGTERM and SIGHUP where their default (ending the process at
    once) would. An embedding application's handler, an enclosing ``catching_ctrl_c``, or a SIGINT that is
    ignored (a shell's background job, ``nohup``) is left as it is; outside the main thread, where no handler
    can be set, nothing is taken."""
    global _pending, _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else []
    taken += [s for s in OTHER_STOP_SIGNALS if signal.getsignal(s) is signal.SIG_DFL]
    if not taken:
        yield
        return
    _pending, _received = False, None
    previous = {s: signal.signal(s, _on_sigint) for s in taken}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(previous_hook)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = previous_hook
        _pending = False


def ignore_from_now_on() -> None:
    """Ignore Ctrl-C for the rest of the process (the main thread's, where a handler can be set): called
    once the command has ended and said how, so a key pressed while Python shuts down (a second later, or
    the same key pressed again) neither prints a traceback from an exit hook nor changes the exit status."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def stopped_status(status: int) -> bool:
    """Whether a command's exit ``status`` says it was stopped, not failed: 128 + SIGINT, SIGTERM or SIGHUP
    (130, 143, 129), as the CLI ends an interrupted command."""
    return status in {128 + int(s) for s in (signal.SIGINT, *OTHER_STOP_SIGNALS)}


def stopped_with() -> int:
    """The exit status of a command stopped within :func:`catching_ctrl_c`: 128 + the signal's number (130
    for Ctrl-C, or for an interruption raised in Python without a signal; 143 for SIGTERM)."""
    return 128 + int(_received or signal.SIGINT)


def pending() -> bool:
    """Whether Ctrl-C was pressed within the current :func:`catching_ctrl_c`."""
    return _pending


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` when Ctrl-C was pressed (within :func:`catching_ctrl_c`): again, where
    the first one was swallowed; cheap enough for every step of a work loop. Not while an exception is
    being handled (the interruption itself on its way up, through ``finally`` clauses that keep finished
    work), so that clean-up is not cut short by the key pressed once."""
    if _pending and sys.exc_info()[0] is None:
        raise KeyboardInterrupt
