"""Fault injection for tests of kill-and-resume and storage errors (issue: reliability).

Three hooks, each inert unless an environment variable is set:

- ``DIFFAUDIT_KILL_AT="name:n"``: the n-th time (1-based) :func:`fault_point` ``name`` is reached,
  the process kills itself with SIGKILL (no cleanup, no flushing: the harshest crash).
  With ``DIFFAUDIT_KILL_ONCE=/path/marker`` it kills only while the marker file is absent and
  creates it first, so a restarted process (a Ray worker, say) runs on.
- ``DIFFAUDIT_HOLD_AT="name"`` with ``DIFFAUDIT_HOLD_MARKER=/path/marker``: the first process to reach
  :func:`fault_point` ``name`` creates the marker and then waits there until it is killed (without a
  marker, every process that reaches it waits), so a test can take its machine away at a known point
  (a Ray node removed mid-shard).
- ``DIFFAUDIT_STORAGE_FAULT="ENOSPC"`` or ``"EROFS"`` (optionally ``"ENOSPC:n"`` to let n writes
  succeed first): every write through :mod:`diffaudit.core.io` raises that ``OSError``, as a full
  disk or a read-only mount would. Tests run as root, so permissions cannot simulate these.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from diffaudit.core.errors import DiffauditError

_counts: dict[str, int] = {}
_writes = 0
#: The errors DIFFAUDIT_STORAGE_FAULT may name.
_STORAGE_ERRORS = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EIO": errno.EIO}


def fault_point(name: str) -> None:
    """Mark a place where a crash is survivable; kills (or holds) the process when the test asks for it."""
    if os.environ.get("DIFFAUDIT_HOLD_AT") == name and _first_to(os.environ.get("DIFFAUDIT_HOLD_MARKER")):
        while True:  # until the test kills this process (or its machine)
            time.sleep(1)
    spec = os.environ.get("DIFFAUDIT_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _count("DIFFAUDIT_KILL_AT", spec, nth or "1"):
        marker = os.environ.get("DIFFAUDIT_KILL_ONCE")
        if marker and not _first_to(marker):
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _first_to(marker: str | None) -> bool:
    """Create ``marker``; False when it exists already (another process, or this one, got there first).
    No marker: always the first."""
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def check_storage(path: str | os.PathLike) -> None:
    """Raise the injected storage error, if any, for a write to ``path``."""
    global _writes
    spec = os.environ.get("DIFFAUDIT_STORAGE_FAULT")
    if not spec:
        return
    name, _, allowed = spec.partition(":")
    _writes += 1
    if allowed and _writes <= _count("DIFFAUDIT_STORAGE_FAULT", spec, allowed):
        return
    if name not in _STORAGE_ERRORS:
        raise DiffauditError(f"DIFFAUDIT_STORAGE_FAULT={spec!r}: expected one of {', '.join(_STORAGE_ERRORS)}, "
                             "optionally followed by :N (writes that succeed first)")
    code = _STORAGE_ERRORS[name]
    raise OSError(code, os.strerror(code), str(path))


def _count(variable: str, spec: str, text: str) -> int:
    """The count ``text`` of test hook ``variable`` (set to ``spec``), or an error naming the variable."""
    try:
        return int(text)
    except ValueError:
        raise DiffauditError(f"{variable}={spec!r}: the count after ':' must be an integer, got {text!r}") from None
