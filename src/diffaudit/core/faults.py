"""Fault injection for tests of kill-and-resume and storage errors (issue: reliability).

Two hooks, both inert unless an environment variable is set:

- ``DIFFAUDIT_KILL_AT="name:n"``: the n-th time (1-based) :func:`fault_point` ``name`` is reached,
  the process kills itself with SIGKILL (no cleanup, no flushing: the harshest crash).
  With ``DIFFAUDIT_KILL_ONCE=/path/marker`` it kills only while the marker file is absent and
  creates it first, so a restarted process (a Ray worker, say) runs on.
- ``DIFFAUDIT_STORAGE_FAULT="ENOSPC"`` or ``"EROFS"`` (optionally ``"ENOSPC:n"`` to let n writes
  succeed first): every write through :mod:`diffaudit.core.io` raises that ``OSError``, as a full
  disk or a read-only mount would. Tests run as root, so permissions cannot simulate these.
"""

from __future__ import annotations

import errno
import os
import signal

_counts: dict[str, int] = {}
_writes = 0


def fault_point(name: str) -> None:
    """Mark a place where a crash is survivable; kills the process when the test asks for it."""
    spec = os.environ.get("DIFFAUDIT_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        marker = os.environ.get("DIFFAUDIT_KILL_ONCE")
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def check_storage(path: str | os.PathLike) -> None:
    """Raise the injected storage error, if any, for a write to ``path``."""
    global _writes
    spec = os.environ.get("DIFFAUDIT_STORAGE_FAULT")
    if not spec:
        return
    name, _, allowed = spec.partition(":")
    _writes += 1
    if allowed and _writes <= int(allowed):
        return
    code = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EIO": errno.EIO}[name]
    raise OSError(code, os.strerror(code), str(path))
