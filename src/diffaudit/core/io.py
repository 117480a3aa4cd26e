"""Atomic file writes and safe reads.

A file is written to a temporary name in the same folder, flushed, fsynced and renamed over its
final name, so a reader never sees a partial file: either the old content, the new one, or none.
Storage errors (disk full, read-only) surface as :class:`DiffauditError` naming the path.

A temporary file is named ``.<name>.<host>-<pid>.<random>.tmp``; a process killed mid-write leaves
it behind, and :func:`remove_stale_temps` (called when a command resumes a folder) deletes those
whose writer, on this host (name and PID namespace), is no longer running.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.faults import check_storage


#: What to do about a failed write, by errno (the rest get the generic advice).
_ADVICE = {
    errno.ENOSPC: "Free space or choose another --out",
    errno.EDQUOT: "Free space (the disk quota is used up) or choose another --out",
    errno.EROFS: "Choose a writable --out",
    errno.EACCES: "Choose a --out you may write to",
    errno.EPERM: "Choose a --out you may write to",
    errno.EEXIST: "A file is in the way: remove it or choose another --out",
    errno.ENOTDIR: "A file is in the way of a folder on that path: remove it or choose another --out",
    errno.ENOENT: "The folder disappeared while writing (removed by another process?); re-run",
    errno.EFBIG: "A file outgrew the largest this process may write (`ulimit -f`, or the file system's): raise it "
                 "or choose another --out",
}
#: A write the system cut short without an error number (numpy's "8192 requested and 1920 written"): a full disk,
#: or the file size limit, whose signal Python ignores.
_SHORT_WRITE = ("The write was cut short: free space, raise the file size limit (`ulimit -f`) or choose another "
                "--out")


def storage_error(path: Path, exc: OSError) -> DiffauditError:
    advice = _ADVICE.get(exc.errno, _SHORT_WRITE if exc.errno is None else "Free space or choose a writable --out")
    if exc.errno == errno.EEXIST and os.path.lexists(path) and not (os.path.isfile(path) or os.path.islink(path)):
        return DiffauditError(f"could not write {path}: it is a device or another special file, not a folder: "
                              "choose another --out")  # a file in the way is the user's to remove; this one is not
    return DiffauditError(
        f"could not write {path}: {exc.strerror or exc}. {advice}; finished work is kept and a re-run continues from it."
    )


def permission_denied(path: str | os.PathLike) -> DiffauditError:
    """One line for a file or folder at ``path`` the system refuses to this user (named by its folder where
    that is what refused it). diffaudit writes its folders owner-only, so a colleague's store, run or data
    folder on a shared machine gives this: a PermissionError traceback before, or a weights file "not
    found", with advice to train the model again."""
    where = os.fspath(path)
    folder = os.path.dirname(where)
    if folder and not os.access(folder, os.R_OK | os.X_OK):  # the folder refused, not the file it looked for
        where = folder
    return DiffauditError(f"permission denied: {where}: this user may not open it (diffaudit writes its folders "
                          "owner-only: run as their owner, or have the owner give you a copy)")


class _WriteErrors:
    """A file object whose writes keep the first ``OSError`` one raised (:func:`write_through`)."""

    def __init__(self, f: io.BufferedWriter):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def write_through(f: io.BufferedWriter, write: Callable[[Any], None]) -> None:
    """``write(w)`` with ``w`` a view of ``f``, for a library that writes through a file object and raises
    its own error in place of the ``OSError`` a write raised (``torch.save``: "unexpected pos" on a full
    disk): that ``OSError`` is raised instead, which :func:`atomic_write` reports as a storage error."""
    w = _WriteErrors(f)
    try:
        write(w)
    except OSError:
        raise
    except Exception:
        if w.error is not None:
            raise w.error from None
        raise


def os_error_of(exc: BaseException) -> OSError | None:
    """The ``OSError`` a library's own error reports in words ("No space left on device (os error 28)",
    as safetensors' Rust writer says it), or None."""
    import re

    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically through ``write(fileobj)``; returns the final path.

    The data goes to a temporary file in the same folder, is flushed to disk, and is renamed over
    ``path``; the folder is then flushed too, so after a power loss a file written later (a shard's
    sidecar, written after its pixels) is never on disk without the ones written before it. Missing
    parent folders are created owner-only (0o700), as :func:`make_private_dir` creates them.
    """
    path = Path(path)
    tmp = None
    try:
        check_storage(path)
        for folder in _missing_folders(path.parent):
            _make_owner_only(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; a file system that cannot is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_namespace() -> str:
    """This process's PID namespace (the inode of ``/proc/self/ns/pid``; empty where there is none to read):
    containers of one host name that share a folder see other process ids, so a temporary file's
    writer is judged alive or gone only within its own namespace."""
    try:
        return f"_ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


_HOST = (re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host") + _pid_namespace()
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def host_tag() -> str:
    """This host's name and PID namespace as temporary file names carry them (letters, digits and ``_``)."""
    return _HOST


def left_by_exited_writer(host: str, pid: int) -> bool:
    """Whether a temporary file named for process ``pid`` on ``host`` (:func:`host_tag`) belongs to a writer on
    this host and in this PID namespace that has exited (a process id taken again by a running process
    counts as running: the file is kept)."""
    return host == _HOST and not _running(pid)


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temporary files of :func:`atomic_write` under ``folder`` (recursively) whose writer
    ran on this host (name and PID namespace) and has exited (killed mid-write); returns how many. Files of running writers
    (e.g. other workers filling the same store) and of other hosts are kept."""
    return remove_left_by_exited_writers(Path(folder).rglob(".*.tmp"), _TEMP)


def remove_left_by_exited_writers(paths: Iterable[Path], pattern: re.Pattern[str], *,
                                  ignore: tuple[type[OSError], ...] = (FileNotFoundError,)) -> int:
    """Delete each of ``paths`` whose name ``pattern`` matches (groups ``host`` and ``pid``, as
    :func:`host_tag` and the writer's process id name it) and whose writer has exited
    (:func:`left_by_exited_writer`); returns how many. A deletion failing with one of ``ignore`` is skipped."""
    removed = 0
    for path in paths:
        m = pattern.match(path.name)
        if m and left_by_exited_writer(m["host"], int(m["pid"])):
            try:
                path.unlink()
                removed += 1
            except ignore:
                pass
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any) -> str:
    """JSON text; NaN and infinities are refused (results never carry them)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_bytes_atomic(path, (dumps_json(obj) + "\n").encode("utf-8"))


def nested_too_deeply(source: str | os.PathLike, kind: str = "JSON") -> DiffauditError:
    """The error for a ``kind`` document (JSON, TOML) nested deeper than Python's parser follows (its
    RecursionError: ``[`` x 200000); ``source`` names the file (and the flag it came from)."""
    return DiffauditError(f"{source} is nested too deeply to be read as {kind} (more levels of brackets than "
                          "Python's parser follows); diffaudit's files nest a few levels: is it the right file?")


def number_too_long(source: str | os.PathLike, kind: str = "JSON") -> DiffauditError:
    """The error for a ``kind`` document holding an integer longer than Python converts from text (4,300
    digits, ``sys.get_int_max_str_digits``; a ValueError): no count or setting of diffaudit's is that long."""
    limit = sys.get_int_max_str_digits()
    return DiffauditError(f"{source} cannot be read as {kind}: it holds an integer of more than {limit:,} digits, more "
                          "than Python reads from text; no number in diffaudit's files is that long: is it the right "
                          "file, or was it edited?")


def loads_json(text: str, source: str | os.PathLike) -> Any:
    """``json.loads(text)``, where a document nested too deeply for Python's parser
    (:func:`nested_too_deeply`) or holding an integer of more digits than Python converts
    (:func:`number_too_long`) is a :class:`DiffauditError` naming ``source``, never a traceback; other
    errors (``json.JSONDecodeError``) are the caller's to word."""
    try:
        return json.loads(text)
    except RecursionError:
        raise nested_too_deeply(source) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # int() past sys.get_int_max_str_digits()
        raise number_too_long(source) from None


def read_text(path: str | os.PathLike, flag: str) -> str:
    """The UTF-8 text of the file ``path`` an option (``flag``: ``--prompts``) names, without the byte-order
    mark some editors put first; a missing file, a folder, an unreadable or non-UTF-8 file is a
    :class:`DiffauditError` naming the flag and the file."""
    where = f"{flag} {path}"
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DiffauditError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise DiffauditError(f"{where} is a folder; give a text file") from None
    except UnicodeDecodeError as exc:
        raise DiffauditError(f"{where} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DiffauditError(f"{where} cannot be read ({exc.strerror or exc})") from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in file ``path``; a missing, non-UTF-8, malformed or too deeply nested file is
    a :class:`DiffauditError` naming it."""
    path = Path(path)
    try:
        return loads_json(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        raise DiffauditError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise DiffauditError(f"{path} is a folder, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiffauditError(f"{path} is not valid JSON: {exc}") from None


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save one array as ``.npy`` (never pickled: object arrays are refused)."""
    if array.dtype == object:
        raise TypeError("object arrays are not stored (they would need pickle)")
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} is an object array (would need pickle)")
    return atomic_write(path, lambda f: np.savez(f, **arrays))


#: How an .npz (a zip archive: a local file header, or the end record of an empty one) and a .npy file begin.
ZIP_MAGIC, NPY_MAGIC = (b"PK\x03\x04", b"PK\x05\x06"), b"\x93NUMPY"


def _head(path: Path) -> bytes | None:
    """The first 8 bytes of file ``path``, or None when it cannot be read (numpy's own error then says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError:
        return None


def _what_it_is(head: bytes) -> str:
    """What a file that starts with ``head`` is, as far as its first bytes tell, for an error message."""
    if not head:
        return "the file is empty"
    if head.startswith(ZIP_MAGIC):
        return "a zip archive"
    if head[:1] == b"\x80":
        return "it looks like a Python pickle, which diffaudit never loads: unpickling can run code"
    return f"it starts with {head!r}"


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load ``.npy`` without pickle; memory-mapped on request.

    Raises :class:`DiffauditError` for an object array (it would need unpickling: refused) and for a
    damaged or truncated file, saying which.
    """
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise DiffauditError(f"{path} does not exist") from None
    except ValueError as exc:
        head = _head(Path(path))  # read only on failure: numpy calls any file without its header "pickled data"
        if head and not head.startswith(NPY_MAGIC):  # (empty: truncated, below)
            raise DiffauditError(f"{path}: not a .npy array file ({_what_it_is(head)})") from None
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc) or "Python objects" in str(exc):
            raise DiffauditError(f"{path}: an object array, which diffaudit never loads (unpickling can run code)") from None
        raise DiffauditError(f"{path}: damaged or truncated .npy file ({exc})") from None
    except (EOFError, OSError) as exc:
        raise DiffauditError(f"{path}: damaged or truncated .npy file ({type(exc).__name__}: {exc or 'empty'})") from None


def open_npz(path: str | os.PathLike, *, kind: str = ".npz file", expected: str = "an .npz archive",
             missing: str | None = None) -> "np.lib.npyio.NpzFile":
    """Open an ``.npz`` without pickle (use it as a context manager).

    Raises :class:`DiffauditError` when the file is missing (``missing``, else "PATH does not exist"),
    unreadable ("not a readable ``kind``"), or a lone ``.npy`` array ("expected ``expected``").
    """
    path = Path(path)
    if path.is_dir():
        raise DiffauditError(f"{path} is a folder; expected {expected}")
    if not path.is_file():
        raise DiffauditError(missing or f"{path} does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        head = _head(path)  # read only on failure: numpy calls any file without a zip or .npy header "pickled data"
        if head is not None and not head.startswith((*ZIP_MAGIC, NPY_MAGIC)):
            raise DiffauditError(f"{path}: not a readable {kind}: not an .npz (zip) archive ({_what_it_is(head)})") from None
        raise DiffauditError(f"{path}: not a readable {kind} ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DiffauditError(f"{path}: expected {expected}, found a single .npy array")
    return npz


def make_private_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` and its missing parents owner-only (0o700): outputs may hold training images.

    Only the folders this call creates are made private; a folder that already exists (a user's
    ``--out`` that is group-readable on purpose, or a symbolic link to one) keeps its mode, since
    diffaudit must not change the permissions of a folder it did not make. The files written into
    it through :func:`atomic_write` are created owner-only (0o600), so they stay private either way.
    """
    path = Path(path)
    try:
        missing = _missing_folders(path)
        if missing:  # an existing folder is not written to (a finished run may lie on read-only storage)
            check_storage(path)
        for folder in missing:
            _make_owner_only(folder)
        if not path.is_dir():
            raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(path))
    except OSError as exc:
        raise storage_error(path, exc) from exc
    return path


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist, outermost first (the ones to create)."""
    missing = []
    while not os.path.lexists(path) and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def _make_owner_only(folder: Path) -> None:
    """Create ``folder`` with mode 0o700 exactly (the umask may take bits from ``mkdir``'s mode, e.g. the
    owner's write bit). A folder that another process made meanwhile is theirs, and keeps its mode."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)
