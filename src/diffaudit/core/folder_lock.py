"""One process at a time per output folder.

Two commands started on the same ``--out`` could both find it without settings (or with equal
ones) and then write into it side by side: one run's weights beside the other's settings, or one
failing half-way on the other's temporary files. :func:`hold` takes an exclusive advisory lock
(``flock``) before the folder's settings are read, and refuses, naming the other process, when it
is taken.

The lock file lies outside the folder, in a private directory of this user under the system's
temporary directory (or, where another user took that name, ``$XDG_RUNTIME_DIR`` or ``~/.cache``), named by a digest of the folder's resolved path: nothing is added to a
user's folder (also not to one diffaudit then refuses), and ``--fresh`` moving the folder aside
keeps it locked. The lock belongs to the open file, so it ends when the command releases it
(:func:`release`, which the CLI calls when a command returns) or when its process ends in any way,
a kill included: a stale lock file never blocks a re-run. Released lock files are deleted; a
process that locked a file just deleted sees its inode gone and locks the new one instead. The
files of processes killed before they released are swept by the next process that locks a folder
(:func:`sweep`, once per process): each is locked before it is deleted, as a release deletes it, so
no holder ever loses its file.

Library use: a script that calls ``prepare_out_dir`` (``train``, ``SampleStore.create``...) holds
the folder until it calls :func:`release` (or :func:`release_folder`) or its interpreter exits;
a CLI run on that folder meanwhile is refused as "in use".

Limits: processes on one machine only (the lock directory is local; ``flock`` over network file
systems is not reliable either), and none where ``fcntl`` does not exist (Windows).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from diffaudit.core.errors import DiffauditError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_HELD: dict[str, tuple[int, Path]] = {}  # resolved folder -> (open lock file, its path)
_SWEPT: list[bool] = []  # whether this process has swept the lock directory

#: The most lock files one sweep deletes (a sweep per process keeps each command's start quick).
SWEEP_LIMIT = 256
#: Seconds since a lock file was last written (locked) before a sweep may delete it, unless it is held.
SWEEP_AGE = 3600.0
#: How long :func:`hold` waits on a lock whose recorded holder is gone (a sweep holds it for a moment).
STALE_WAIT = 0.5


def _lock_dirs(uid: int) -> list[Path]:
    """Where this user's lock directory may lie, in the order every process tries them: the system's
    temporary directory, ``$XDG_RUNTIME_DIR``, then ``~/.cache/diffaudit/locks``. Each process takes
    the first it can use, so all of a user's processes agree on one."""
    dirs = [Path(tempfile.gettempdir()) / f"diffaudit-locks-{uid}"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "diffaudit-locks")
    dirs.append(Path.home() / ".cache" / "diffaudit" / "locks")
    return dirs


def _usable(folder: Path, uid: int) -> bool:
    """``folder`` made (owner-only) if missing, and a real directory this user owns."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.lstat()
    except OSError:
        return False
    return folder.is_dir() and not folder.is_symlink() and st.st_uid == uid


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def lock_dir() -> Path | None:
    """This user's lock directory: the first of :func:`_lock_dirs` that it owns (created owner-only).
    A directory of that name that someone else made (or a link planted there) is passed over, so
    another user cannot switch the locks off. None where no candidate can be used."""
    return next((d for d in _lock_dirs(_uid()) if _usable(d, _uid())), None)


_WARNED: list[bool] = []


def _warn_unlocked(folder: str | os.PathLike) -> None:
    """Say once per process that folders go unlocked here, rather than dropping the guarantee silently."""
    if not _WARNED:
        from diffaudit.core.progress import warning_line  # rich: not at every command's start (cli.main imports this module)

        _WARNED.append(True)
        tried = ", ".join(map(str, _lock_dirs(_uid())))
        warning_line("", f"no private lock directory can be made here (tried {tried}); {folder} is not "
                     "locked: do not run two commands on one --out at once")


def lock_path(folder: str | os.PathLike) -> Path | None:
    """Where the lock of ``folder`` lies (None: folders cannot be locked here)."""
    base = lock_dir()
    if base is None:
        return None
    digest = hashlib.sha256(str(Path(folder).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return base / f"{digest}.lock"


def held() -> set[str]:
    """The folders this process holds (resolved paths)."""
    return set(_HELD)


def hold(folder: str | os.PathLike) -> None:
    """Lock ``folder`` for this process; a folder it holds already stays held.

    Raises:
        DiffauditError: another process holds it (its process id is named when recorded).
    """
    key = str(Path(folder).resolve())
    path = lock_path(folder) if fcntl is not None else None
    if path is None and fcntl is not None:
        _warn_unlocked(folder)
    if path is None or key in _HELD:
        return
    waited_until = time.monotonic() + STALE_WAIT
    replaced = 0
    while replaced < 8:  # retried when the file was deleted (released, swept) between open and lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode("ascii", "replace").split("\n")[0].strip()
            os.close(fd)
            if not _alive(other) and time.monotonic() < waited_until:  # a sweep holds a dead process's file
                time.sleep(0.02)
                continue
            who = f"another diffaudit process (pid {other})" if other.isdigit() else "another diffaudit process"
            raise DiffauditError(f"{folder} is in use by {who}; wait for it to finish, or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{key}\n".encode("utf-8", "surrogateescape"))
            _HELD[key] = (fd, path)
            if not _SWEPT:
                _SWEPT.append(True)
                sweep(path.parent)
            return
        os.close(fd)
        replaced += 1
    raise DiffauditError(f"could not lock {folder}: its lock file {path} keeps being replaced")


def _alive(pid_text: str) -> bool:
    """Whether the process a lock file records (``pid_text``, its first line) still runs. An empty record (a
    file its holder has not written yet) counts as gone, so :func:`hold` waits for it; any other that is no
    process id counts as alive."""
    if not pid_text.isdigit():
        return pid_text != ""
    try:
        os.kill(int(pid_text), 0)  # no signal sent
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (alive), or no such pid at all
        return True
    return True


def sweep(base: Path, *, limit: int = SWEEP_LIMIT, min_age: float = SWEEP_AGE) -> int:
    """Delete up to ``limit`` lock files in ``base`` that no process holds and none locked for ``min_age``
    seconds: those of processes killed before they released. Returns how many it deleted.

    As safe as a release: each file is locked (one a process holds is passed over) and deleted while locked,
    so a process that opened it meanwhile finds its inode gone once it has the lock, and locks a new file
    (:func:`hold`); one that finds it locked by the sweep waits :data:`STALE_WAIT` for it, since the holder it
    records is gone."""
    if fcntl is None:
        return 0
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        if removed >= limit:
            break
        try:
            if not entry.name.endswith(".lock") or now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                continue
            fd = os.open(entry.path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone meanwhile, or a link
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(entry.path).st_ino:
                os.unlink(entry.path)
                removed += 1
        except OSError:  # held (a live process's), or released and replaced meanwhile
            pass
        finally:
            os.close(fd)
    return removed


def writer(folder: str | os.PathLike) -> int | None:
    """The process id of another live process that holds ``folder`` (as its lock file records it), or None.

    For messages only (a reader finding the folder unfinished says who is still writing it): the lock is
    not touched, so a command starting on the folder meanwhile is never turned away by this look."""
    if fcntl is None or str(Path(folder).resolve()) in _HELD:
        return None
    path = lock_path(folder)
    try:
        pid = int(path.read_text(encoding="utf-8", errors="replace").split("\n")[0]) if path is not None else None
    except (OSError, ValueError):
        return None
    if pid is None or pid == os.getpid():
        return None
    return pid if _alive(str(pid)) else None  # a process killed before it released: its file is stale


def release_folder(folder: str | os.PathLike) -> None:
    """Release ``folder`` if this process holds it, deleting its lock file."""
    entry = _HELD.pop(str(Path(folder).resolve()), None)
    if entry is not None:
        fd, path = entry
        try:
            path.unlink()  # before closing: whoever locks the old file next sees it gone and retries
        except OSError:
            pass
        os.close(fd)


def release(keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Release every folder this process holds except those in ``keep`` (what :func:`held` gave
    before a nested command, so an audit keeps its own folder while its stages come and go)."""
    for key in [k for k in _HELD if k not in keep]:
        release_folder(key)
