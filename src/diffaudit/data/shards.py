"""WebDataset tar shards, given as a brace pattern (``data/train-{000000..000004}.tar``) or a glob
(``data/train-*.tar``).

The pattern is expanded with ``braceexpand`` (as ``webdataset`` does; :func:`expand_braces` when it is
not installed), then each path holding ``*``, ``?`` or ``[`` that names no file itself is matched as a
glob, its matches in sorted order (the order a brace range gives zero-padded names). Each shard is read by a
small memory-mapped ustar reader when it is an uncompressed tar of plain headers (fast: it parses
the 100,000 CIFAR-10 headers in a fraction of a second), and otherwise by :mod:`tarfile` in stream
mode (``.gz``, ``.bz2``, ``.xz``, pax/GNU headers). Members are grouped into samples exactly as
``webdataset`` does: consecutive members sharing the prefix before the first dot of
their base name form one sample, whose ``__key__`` is that prefix (directories included:
``a/b.c.jpg`` has key ``a/b`` and extension ``c.jpg``); extensions are lower-cased; members named
``__*__`` are metadata and ignored, as are members without an extension. The tests check the keys
against ``webdataset.WebDataset`` itself. Reading the tar directly (rather than through
``webdataset``'s pipeline) is what lets every failure name its shard and member:

- A sample's image is its one member with an image extension (``.png .jpg .jpeg .webp .bmp .tif
  .tiff``), else its one member whose last extension is one (``.seg.png``, decoded by that last
  extension as webdataset does); beside a plain image extension, dotted ones (a mask ``.seg.png``) are
  other members, like ``.json``. A sample with two plain image members (``.png`` and ``.jpg``), or
  without one and with two dotted ones, is an error naming the shard and the sample, whatever
  ``skip_bad`` says: files named with a dot before the extension (``img.001.png``, ``img.002.png``)
  are all one sample (``img``) to WebDataset, and reading one of them would silently drop the rest.
  ``.cls`` is its label (an ASCII integer >= 0) and ``.txt`` its caption (UTF-8). When some samples
  carry a label (caption) every sample must: a sample lacking it, or with no image, is a bad sample
  (an error, or skipped and recorded with ``skip_bad``). A load that never uses captions
  (``need_captions=False``) keeps a sample whose caption is missing or unreadable, and leaves out the
  captions of every sample instead (:func:`~diffaudit.data.entries.drop_captions`).
- A member named with an absolute path (``/x``, ``C:x``) or a ``..`` component (``../../x``), a link
  or a device member, is refused with an error naming the shard and the member, whatever
  ``skip_bad`` says (nothing is ever extracted to disk; such a shard is not trusted at all).
- A truncated or unreadable shard is an error naming it. An uncompressed shard must end with the
  tar end-of-archive marker (two zero blocks) right after its last member: :mod:`tarfile` stops
  silently at a truncation that falls on a member boundary or at a garbled header, and this check
  catches both. With ``skip_bad`` the complete samples before the damage are kept and the shard is
  recorded in ``skipped``. A compressed shard is first decompressed to a temporary file (its
  compressor's checks catch a cut or damaged stream: :mod:`tarfile`'s stream reader alone stops
  silently there), every byte decompressed before the damage kept, and then read and checked as an
  uncompressed one.
- Hostile sizes are refused before they are read. A compressed shard may decompress to at most
  :data:`~diffaudit.core.decompression.MAX_DECOMPRESSION_RATIO` times its size (or
  :data:`~diffaudit.core.decompression.MIN_DECOMPRESSED_LIMIT`, whichever is larger): a 153 KB ``.tar.xz`` that inflates to 1 GiB is a decompression bomb, an error naming the
  shard whatever ``skip_bad`` says (decompressing a genuine one yourself and passing the ``.tar``
  lifts the limit: a plain tar is read in place). A member over :data:`MAX_MEMBER_BYTES`, and a GNU
  sparse member (a 10 KB member may declare gigabytes of holes), is a bad sample naming the member
  (an error, or skipped and recorded with ``skip_bad``); neither is ever read.
- A write to the temporary file that fails (a full disk), or memory running out, is said as what it
  is, never as a damaged shard (which ``skip_bad`` would skip).
- A key found twice (in one shard or across shards) is an error naming both places. A key that comes
  back after other samples' members with other extensions (every ``.png`` first, then every ``.cls``)
  is said as what it is: a sample's files must lie next to each other in the tar, since WebDataset
  groups consecutive members. A brace pattern that names one shard twice is refused.
- Listing keeps where each image lies in an uncompressed shard (a :class:`Span`), not its bytes, and
  reads it again when it is decoded: loading 1 image from 721 MiB of shards peaked at 244 MiB RSS
  against 1,129 MiB when listing held every sample's bytes. A compressed shard's spans point into its
  decompressed temporary tar, which stays until the last span into it is gone (or the process
  exits), so its images are not held in memory either. The tar of a process killed outright
  (SIGKILL) is removed by the next process of the same host name and PID namespace that decompresses a shard
  (:func:`remove_stale_temp_tars`).
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import errno
import glob
import gzip
import lzma
import mmap
import os
import re
import tarfile
import tempfile
import threading
import weakref
import zlib
from pathlib import Path
from typing import NamedTuple

from diffaudit.core import decompression
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import host_tag, remove_left_by_exited_writers
from diffaudit.core.progress import bytes_text
from diffaudit.data.entries import Entry, Listing, gc_paused
from diffaudit.data.images import IMAGE_EXTENSIONS, BadImageError, decode_image

_META = re.compile(r"__[^/]*__($|/)")
_DRIVE = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
END_OF_ARCHIVE = 1024  # two 512-byte zero blocks (POSIX ustar)
#: What reading a damaged shard raises (tar, file system, compressors).
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
#: OSErrors that say the machine ran out of something (memory, disk, file handles), not that a shard is damaged.
_RESOURCE_ERRNOS = {errno.ENOMEM: "out of memory: free memory or use a machine with more",
                    errno.ENOSPC: "the disk is full: free space", errno.EDQUOT: "the disk quota is used up: free space",
                    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
                    errno.ENFILE: "too many open files on this machine: close some"}

#: The largest member (image, label, caption) a shard may hold, in bytes; a larger one is a bad sample,
#: never read. Real images are a few MiB at most.
MAX_MEMBER_BYTES = 256 << 20


_BRACE_PATTERN = re.compile(r"\{[^{}]*(?:\.\.|,)[^{}]*\}")


def is_shard_spec(spec: str) -> bool:
    """Whether ``spec`` names tar shards: a brace pattern (``{000..004}``, ``{a,b}``) or a
    ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` path. An existing folder never is (``../run{1}``)."""
    if os.path.isdir(os.path.expanduser(spec)):
        return False
    return bool(_BRACE_PATTERN.search(spec)) or spec.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as ``braceexpand`` does it, for numeric ranges and lists.

    ``{000..003}`` keeps the zero padding (``000 001 002 003``), ``{3..1}`` counts down, ``{a,b}``
    lists; several braces expand left-major (the first varies slowest). Used when the
    ``braceexpand`` package (a ``webdataset`` dependency) is not installed, e.g. on a bare GPU machine.
    """
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if r:
        a, b = r.groups()
        padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-").startswith("0") for x in (a, b))
        width = max(len(a), len(b)) if padded else 0
        step = 1 if int(b) >= int(a) else -1
        options = [str(v).zfill(width) for v in range(int(a), int(b) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]  # not a range or a list: kept literally
    return [head + o + t for o in options for t in expand_braces(tail)]


def _glob(path: Path, pattern: str) -> list[Path]:
    """``path`` itself, or with glob characters (``*``, ``?``, ``[``) and no file of that very name, the files
    it matches in sorted order; a glob that matches none is an error naming it (the shell, given it unquoted,
    would have passed it on as it is, too)."""
    text = str(path)
    if not any(c in text for c in "*?[") or path.exists():
        return [path]
    found = sorted(Path(m) for m in glob.glob(text) if os.path.isfile(m))
    if not found:
        raise DiffauditError(f"no shard matches {text}" + ("" if text == pattern else f" (of {pattern})"))
    return found


def expand_pattern(pattern: str) -> list[Path]:
    """Shard paths of a brace pattern (``{000000..000004}``, ``{a,b}``), in pattern order, each glob in it
    (``*``, ``?``, ``[...]``) replaced by the files it matches, sorted.

    Raises:
        DiffauditError: a shard of the pattern does not exist, a glob matches no file, or the pattern names
            one shard twice (``{000000,000000}``, ``{a,*}``, or two paths to one file): naming it.
    """
    try:
        from braceexpand import braceexpand
    except ImportError:  # pragma: no cover - braceexpand comes with webdataset
        braceexpand = expand_braces
    paths = [m for p in braceexpand(pattern) for m in _glob(Path(p).expanduser(), pattern)]
    if not paths:
        raise DiffauditError(f"{pattern}: the pattern names no shards")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DiffauditError(
            f"shard {missing[0]} does not exist ({len(missing)} of the {len(paths)} shards of {pattern} are missing)"
        )
    first: dict[str, Path] = {}  # real path -> the pattern's first path to it
    for p in paths:
        earlier = first.setdefault(os.path.realpath(p), p)
        if earlier is not p:
            also = "" if earlier == p else f" (as {earlier} and as {p})"
            raise DiffauditError(f"{pattern} names shard {earlier} twice{also}; name each shard once, or its samples "
                                 "would be read twice")
    return paths


def unsafe_member_reason(name: str) -> str | None:
    """Why a tar member name is unsafe (absolute, drive letter, ``..`` component), or None."""
    if name[:1] in ("/", "\\"):
        return "is an absolute path"
    if name[1:2] == ":" and _DRIVE.match(name):
        return "starts with a drive letter"
    if ".." in name and ".." in _SEPARATORS.split(name):
        return "climbs out of the archive with '..'"
    return None


def _compression(path: Path):
    """The module that decompresses ``path`` (gzip, bz2, lzma), or None for a plain tar."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, module in zip(_COMPRESSED_MAGIC, (gzip, bz2, lzma)):
        if head.startswith(magic):
            return module
    return None


class _TempTar:
    """A compressed shard's decompressed tar: a temporary file that lives as long as this object, which
    every span into it holds (``Span.owner``), so the listing keeps spans, not bytes. The file is
    removed, and its descriptor in the table of open shards closed, when the last span is gone, at
    exit, or by :meth:`remove`."""

    def __init__(self, path: Path, stamp: tuple[int, int, int, int]):
        self.path, self.stamp = path, stamp  # stamp: :func:`file_stamp` of the written file
        self.remove = weakref.finalize(self, _remove_temp, path, self.stamp)


def _remove_temp(path: Path, stamp: tuple[int, int, int, int]) -> None:
    _OPEN_SHARDS.forget(stamp)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _decompressed(path: Path, module) -> tuple[_TempTar, BaseException | None]:
    """(the decompressed tar of ``path`` in a temporary file, the compressor's error or None).

    The compressor's checks catch a stream that is cut short or damaged (``EOFError``, ``OSError``,
    ``zlib.error``, ``lzma.LZMAError``); what it decompressed before the damage stays in the file, so
    the complete samples before it can be kept. Decompression stops as soon as the output passes
    :func:`~diffaudit.core.decompression.decompressed_limit` (memory stays at one 64 KiB block; the disk at the limit).

    Raises:
        DiffauditError: the shard decompresses past the limit (a decompression bomb), or the temporary
            file cannot be written (a full disk: said as such, never as a damaged shard).
    """
    limit = decompression.decompressed_limit(path.stat().st_size)
    remove_stale_temp_tars()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_TAR_PREFIX}{host_tag()}-{os.getpid()}-", suffix=".tar")
    except OSError as exc:
        raise _temp_error(path, exc) from None
    try:
        try:
            damage = _inflate(path, module, fd, limit)
            stamp = file_stamp(fd)
        finally:
            os.close(fd)
        return _TempTar(Path(tmp), stamp), damage
    except BaseException:
        os.unlink(tmp)
        raise


#: Start of a decompressed shard's temporary file name: ``diffaudit-shard-<host>-<pid>-<random>.tar``.
TEMP_TAR_PREFIX = "diffaudit-shard-"
_TEMP_TAR = re.compile(rf"^{TEMP_TAR_PREFIX}(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[^/]*\.tar$")
_swept: set[str] = set()  # temporary directories already swept by this process


def remove_stale_temp_tars() -> int:
    """Delete the decompressed tars that processes of this host (name and PID namespace) left in the temporary directory when they
    were killed (SIGKILL gives no chance to remove them); returns how many. Once per process and
    temporary directory; a tar of a running process, of another host or not ours to delete is kept."""
    folder = tempfile.gettempdir()
    if folder in _swept:
        return 0
    _swept.add(folder)
    try:
        paths = [Path(folder, n) for n in os.listdir(folder) if n.startswith(TEMP_TAR_PREFIX)]
    except OSError:
        return 0
    # gone already, or another user's in a shared /tmp: skipped
    return remove_left_by_exited_writers(paths, _TEMP_TAR, ignore=(OSError,))


def _inflate(path: Path, module, fd: int, limit: int) -> BaseException | None:
    """Decompress ``path`` into the open file ``fd``, at most ``limit`` bytes; the compressor's error or None.

    Every byte decompressed before damage is written: ``read1`` decompresses one chunk of input at a
    time and raises only when the damage comes before any output. (``read(n)`` gathers several chunks
    into its ``n`` bytes and drops them all when a later one is cut: a 35 KB tar cut from a 2 KB
    ``.tar.gz`` kept none of its 16 complete samples.)"""
    written = 0
    with module.open(path, "rb") as src:  # an error opening it is the shard's (a read)
        while True:
            try:
                block = src.read1(1 << 16)  # at most this many bytes, of one chunk of input
            except _READ_ERRORS as exc:  # the shard's damage; a failing write below is the disk's
                return exc
            if not block:
                return None
            written += len(block)
            if written > limit:
                raise DiffauditError(
                    f"shard {path} decompresses to more than {bytes_text(limit)}, over diffaudit's limit for a compressed "
                    f"shard of {bytes_text(path.stat().st_size)} ({decompression.MAX_DECOMPRESSION_RATIO} times its size, "
                    f"at least {bytes_text(decompression.MIN_DECOMPRESSED_LIMIT)}: MAX_DECOMPRESSION_RATIO and "
                    "MIN_DECOMPRESSED_LIMIT in diffaudit.core.decompression); it is refused as a decompression bomb. If it is a genuine shard, "
                    "decompress it yourself (gunzip -k, xz -dk, bunzip2 -k) and pass the .tar, which is read in place"
                )
            try:
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as exc:
                raise _temp_error(path, exc) from None


def _temp_error(path: Path, exc: OSError) -> DiffauditError:
    """A failure to write a shard's decompressed temporary file: the disk's, never the shard's."""
    return DiffauditError(
        f"could not decompress shard {path} into a temporary file in {tempfile.gettempdir()}: "
        f"{exc.strerror or exc}. Free space there, or point TMPDIR at a folder with room for the shard "
        "decompressed (or decompress it yourself and pass the .tar, which is read in place)"
    )


def _check_end_of_archive(path: Path, offset: int) -> None:
    """Raise ``tarfile.ReadError`` unless ``path`` holds two zero blocks at ``offset``."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(END_OF_ARCHIVE)
    if len(tail) < END_OF_ARCHIVE:
        raise tarfile.ReadError(f"ends at byte {path.stat().st_size} without the tar end-of-archive marker")
    if tail.count(0) != END_OF_ARCHIVE:
        raise tarfile.ReadError(f"unreadable tar header at byte {offset}")


class Span(NamedTuple):
    """Where a member's bytes lie in an uncompressed shard: ``length`` bytes from ``offset``.

    Listing records spans instead of bytes, so a dataset's encoded images are never all held in
    memory (they are read again, one at a time, when decoded). ``stamp`` (:func:`file_stamp`) is the
    shard as it was listed: a shard replaced or rewritten since is an error, never other pixels."""

    path: Path
    offset: int
    length: int
    stamp: tuple[int, int, int, int]
    owner: "_TempTar | None" = None  # a compressed shard's temporary tar, kept while the span lives

    def read(self, fd: int | None = None) -> bytes:
        """The member's bytes, read through ``fd`` when given (an open descriptor of the listed file),
        else through the table of open shards; ``tarfile.ReadError`` when the shard has changed."""
        data = read_at(fd, self.length, self.offset) if fd is not None else _OPEN_SHARDS.pread(self)
        if len(data) != self.length:
            raise tarfile.ReadError(f"{self.path} ends inside a member (at byte {self.offset + len(data)})")
        return data


def read_at(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes of ``fd`` from ``offset``, fewer only where the file ends: one ``os.pread``
    returns at most about 2 GiB (Linux), so it is called until the whole span is read."""
    chunks, done = [], 0
    while done < length:
        chunk = os.pread(fd, length - done, offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def file_stamp(fd: int) -> tuple[int, int, int, int]:
    """(device, inode, size, modification time in ns) of an open file: which file, and which version of it."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _OpenFiles:
    """The last ``size`` shards read from, kept open (reading 50,000 images from 5 shards opens 5
    files, not 50,000); least recently used closed first. A shard is opened only while it is the file
    it was when listed (same stamp), so a shard replaced at its path is never read through an old
    descriptor, nor its new contents through old offsets. A lock guards the table (reads are
    serialised); it is re-entrant, since a temporary tar's removal (:meth:`forget`) may run from the
    garbage collector while this thread holds it."""

    def __init__(self, size: int = 16):
        self.size, self._fds, self._lock = size, collections.OrderedDict(), threading.RLock()

    def forget(self, stamp: tuple[int, int, int, int]) -> None:
        """Close the descriptor of the file ``stamp`` (a temporary tar being removed), if open."""
        with self._lock:
            fd = self._fds.pop(stamp, None)
            if fd is not None:
                os.close(fd)

    def pread(self, span: "Span") -> bytes:
        key = span.stamp  # (device, inode, size, mtime): one version of one file
        with self._lock:
            fd = self._fds.get(key)
            if fd is None:
                fd = os.open(span.path, os.O_RDONLY)
                if file_stamp(fd) != span.stamp:
                    os.close(fd)
                    raise tarfile.ReadError(f"{span.path} has changed since it was listed")
                while len(self._fds) >= self.size:
                    os.close(self._fds.popitem(last=False)[1])
                self._fds[key] = fd
            else:
                self._fds.move_to_end(key)
            return read_at(fd, span.length, span.offset)


_OPEN_SHARDS = _OpenFiles()


class _BadMember(NamedTuple):
    """A member listed but never read, and why (too large, a sparse file): its sample is a bad sample."""

    reason: str


def _member_too_large(length: int) -> _BadMember:
    return _BadMember(f"is {bytes_text(length)}, over diffaudit's limit of {bytes_text(MAX_MEMBER_BYTES)} per member "
                      "(MAX_MEMBER_BYTES in diffaudit.data.shards); it is never read")


_SPARSE = _BadMember("is a GNU sparse file, which diffaudit does not read (a few bytes may declare gigabytes of "
                     "holes); re-create the shard without sparse files (tar without --sparse)")


class _NeedsTarfile(Exception):
    """The fast reader met something only :mod:`tarfile` handles (pax/GNU headers, odd checksums)."""


_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR, _DIRECTORY, _LINKS, _SPECIAL = (b"0", b"\0", b"7"), (b"5",), (b"1", b"2"), (b"3", b"4", b"6")
_POSIX_MAGIC = b"ustar\x0000"


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise _NeedsTarfile("base-256 number")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _NeedsTarfile("non-octal number") from None


def _plain_members(path: Path, owner: _TempTar | None = None):
    """(name, kind, span) of every member of an uncompressed ustar/v7 tar, its headers read from a
    memory map (``span``: a :class:`Span` for files, a :class:`_BadMember` for one over
    :data:`MAX_MEMBER_BYTES`, else None; ``owner``: the temporary tar ``path`` is, if it is one).

    About 4x faster than :mod:`tarfile` on shards of small files (the CIFAR-10 shards hold 20,000
    members each). Raises ``_NeedsTarfile`` on anything it does not handle itself (pax or GNU
    extension headers, base-256 sizes, a header whose checksum does not add up), so that the caller
    re-reads the shard with :mod:`tarfile`; raises ``tarfile.ReadError`` on truncation or a missing
    end-of-archive marker. ``kind`` is ``file``, ``dir``, ``link`` or ``special``.
    """
    with open(path, "rb") as f:
        stamp = file_stamp(f.fileno())
        size = stamp[2]
        if size == 0:
            raise tarfile.ReadError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            off = 0
            while True:
                if off + END_OF_ARCHIVE > size:
                    raise tarfile.ReadError(f"ends at byte {size} without the tar end-of-archive marker")
                hdr = mm[off:off + _BLOCK]
                if hdr == _ZERO_BLOCK:
                    if mm[off + _BLOCK:off + END_OF_ARCHIVE] != _ZERO_BLOCK:
                        raise _NeedsTarfile("lone zero block")
                    return
                if _octal(hdr[148:156]) != 256 + sum(hdr) - sum(hdr[148:156]):
                    raise _NeedsTarfile("checksum")
                flag = hdr[156:157]
                name = hdr[:100].split(b"\0", 1)[0]
                if hdr[257:265] == _POSIX_MAGIC and hdr[345]:
                    name = hdr[345:500].split(b"\0", 1)[0] + b"/" + name
                name = name.decode("utf-8", "surrogateescape")
                length = _octal(hdr[124:136])
                if flag in _REGULAR:
                    kind = "dir" if flag == b"\0" and name.endswith("/") else "file"
                elif flag in _DIRECTORY:
                    kind = "dir"
                elif flag in _LINKS:
                    kind, length = "link", 0
                elif flag in _SPECIAL:
                    kind, length = "special", 0
                else:
                    raise _NeedsTarfile(f"type {flag!r}")
                start = off + _BLOCK
                if start + length > size:
                    raise tarfile.ReadError("unexpected end of data")
                if kind != "file":
                    yield name.rstrip("/") if kind == "dir" else name, kind, None
                elif length > MAX_MEMBER_BYTES:
                    yield name, kind, _member_too_large(length)
                else:
                    yield name, kind, Span(path, start, length, stamp, owner)
                off = start + -(-length // _BLOCK) * _BLOCK


def _tarfile_members(path: Path, owner: _TempTar | None = None):
    """(name, kind, span) of every member of an uncompressed tar, read by :mod:`tarfile` in stream
    mode (pax/GNU headers), then the end-of-archive check. A GNU sparse member, and one over
    :data:`MAX_MEMBER_BYTES`, comes as a :class:`_BadMember` and is never read (expanding a sparse
    member's holes took 3.4 GB of memory for a 10 KB one)."""
    with open(path, "rb") as f:
        stamp = file_stamp(f.fileno())
        with tarfile.open(fileobj=f, mode="r|") as tf:
            for member in tf:
                if member.isreg() and member.issparse():
                    yield member.name, "file", _SPARSE
                elif member.isreg() and member.size > MAX_MEMBER_BYTES:
                    yield member.name, "file", _member_too_large(member.size)
                elif member.isreg():
                    yield member.name, "file", Span(path, member.offset_data, member.size, stamp, owner)
                elif member.isdir():
                    yield member.name, "dir", None
                else:
                    yield member.name, "link" if (member.issym() or member.islnk()) else "special", None
            end = tf.offset
    _check_end_of_archive(path, end)


def _group(path: Path, members, samples: list) -> None:
    """Append the samples of ``members`` to ``samples`` (webdataset grouping; see the module doc).

    Raises:
        DiffauditError: an unsafe, link or special member; a sample with two members of one extension,
            or whose image is ambiguous (:func:`_check_one_image`).
    """
    key, parts, names = None, None, {}
    for name, kind, data in members:
        reason = unsafe_member_reason(name)
        if reason:
            raise DiffauditError(f"{path}: member {name!r} {reason}; the shard is refused")
        if kind == "dir":
            continue
        if kind != "file":
            raise DiffauditError(f"{path}: member {name!r} is a {'link' if kind == 'link' else 'special file'}; "
                                 "shards may hold regular files only")
        if "__" in name and (_META.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__"))):
            continue
        m = _BASE_PLUS_EXT.match(name)
        if not m:
            continue
        prefix, ext = m.group(1), m.group(2).lower()
        if prefix != key:
            if parts is not None:
                if len(parts) > 1:
                    _check_one_image(path, key, parts, names)
                samples.append((key, parts))
            key, parts, names = prefix, {}, {}
        if ext in parts:
            raise DiffauditError(f"{path}: sample {key!r} has two .{ext} members")
        parts[ext] = data
        names[ext] = name
    if parts is not None:
        if len(parts) > 1:
            _check_one_image(path, key, parts, names)
        samples.append((key, parts))


#: How WebDataset names samples, said where a file name with a dot before its extension misleads.
_FIRST_DOT_RULE = "WebDataset names a sample by its file name up to the first dot"
_NO_DOT_BEFORE_EXTENSION = "rename the files without a dot before the extension"


_PLAIN_IMAGE_EXTENSIONS = frozenset(IMAGE_EXTENSIONS)


def _is_image_ext(ext: str) -> bool:
    """Whether a (lower-case) extension is an image's: ``png``, or dotted as ``seg.png``."""
    return ext in IMAGE_EXTENSIONS or ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


def _listed(items: list[str], most: int = 4) -> str:
    """``a, b, c`` or, past ``most`` items, ``a, b, c, d, ... (9 in all)``."""
    return ", ".join(items) if len(items) <= most else f"{', '.join(items[:most])}, ... ({len(items)} in all)"


def _check_one_image(path: Path, key: str, parts: dict, names: dict[str, str]) -> None:
    """Make sure sample ``key`` has one image for :func:`_image_ext` to pick.

    ``parts`` and ``names`` map the sample's extensions to its members' data and names. Several image
    members with no way to tell which is the image is an error naming the shard, the sample and its
    image members: two with plain image extensions (``.png`` and ``.jpg``), or, without one, two with
    dotted ones (``a.b.k0.png`` and ``a.b.k1.png``, all sample ``a``: WebDataset's first-dot rule).
    Beside a plain one, dotted ones (a mask ``.seg.png``) are other members.

    Raises:
        DiffauditError: the sample's image is ambiguous (never skipped: it is how the shard was written).
    """
    plain = _PLAIN_IMAGE_EXTENSIONS.intersection(parts)
    if len(plain) == 1:  # the common case (an image, its label and caption), decided at C speed
        return
    images = sorted(plain or (e for e in parts if _is_image_ext(e)))
    if len(images) < 2:
        return
    members = _listed([names[e] for e in images])
    if plain:
        raise DiffauditError(
            f"sample {key!r} in {path} has several image members ({members}): diffaudit reads one image per sample "
            "and cannot tell which is its image; keep one image per sample (give the others names of their own)")
    example = names[images[0]]
    folder, _, base = example.rpartition("/")
    stem, _, last = base.rpartition(".")
    renamed = f"{folder}/" * bool(folder) + stem.replace(".", "_") + "." + last
    raise DiffauditError(
        f"sample {key!r} in {path} has several image members ({members}): {_FIRST_DOT_RULE}, so they are all "
        f"sample {key!r}, of which one image would be read and the others dropped; {_NO_DOT_BEFORE_EXTENSION} "
        f"({example} as {renamed}), so that each image is a sample of its own")


def _resolve(samples: list, tar: Path) -> None:
    """Read in place, from the shard ``tar``, the members listing needs as bytes: labels and captions
    (each at most :data:`MAX_MEMBER_BYTES`); images stay spans. Samples without a readable member
    (all sparse, say) need nothing read."""
    listed = next((d.stamp for _, parts in samples for d in parts.values() if isinstance(d, Span)), None)
    if listed is None:
        return
    fd = os.open(tar, os.O_RDONLY)
    try:
        if file_stamp(fd) != listed:
            raise tarfile.ReadError(f"{tar} changed while it was being read")
        for _, parts in samples:
            for ext, data in parts.items():
                if isinstance(data, Span) and ext in ("cls", "txt"):
                    parts[ext] = data.read(fd)
    finally:
        os.close(fd)


def read_shard(path: Path, *, skip_bad: bool) -> tuple[list[tuple[str, dict[str, bytes | Span]]], str | None]:
    """The samples of one shard, in order: ``[(key, {extension: bytes or Span})]``: images and other
    members as :class:`Span` (read when decoded; a compressed shard's point into its temporary
    decompressed tar), labels and captions as bytes, a member never read as a :class:`_BadMember`.

    Returns:
        (samples, damage): ``damage`` is None for a sound shard; with ``skip_bad``, the reason the
        shard could not be read to its end (the samples before the damage are returned).

    Raises:
        DiffauditError: an unsafe member or a decompression bomb (always), a truncated/unreadable
            shard (unless ``skip_bad``), or memory, disk or file handles running out (always: the
            machine's problem, not the shard's).
    """
    samples: list[tuple[str, dict[str, bytes | Span | _BadMember]]] = []
    made: list[_TempTar] = []  # the temporary decompressed tar, once made
    try:
        _read_members(path, samples, made)
        return samples, None
    except MemoryError:
        error = DiffauditError(f"ran out of memory reading shard {path}; free memory or use a machine with more, "
                               "and re-run")
    except _READ_ERRORS as exc:
        problem = _resource_problem(exc)
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if problem:
            error = DiffauditError(f"could not read shard {path}: {exc.strerror or exc} ({problem}, then re-run; "
                                   "the shard itself is not known to be damaged)")
        elif skip_bad:  # ``samples`` holds the samples completed before the damage (the spans keep the tar)
            return samples, f"truncated or unreadable ({why}); kept the {len(samples)} samples before the damage"
        else:
            error = DiffauditError(f"shard {path} is truncated or unreadable ({why}); re-create or re-download it, "
                                   "or pass --skip-bad to keep the complete samples before the damage")
    except DiffauditError as exc:
        error = exc
    for temp in made:
        temp.remove()
    raise error from None


def _read_members(path: Path, samples: list, made: list) -> None:
    """Append the samples of shard ``path`` to ``samples`` (the one being read when damage is met, possibly
    incomplete, is never appended), a compressed shard decompressed first into a temporary tar appended
    to ``made``; raises the damage met, the compressor's (which says more than the cut tar it left)
    rather than the tar reader's."""
    module = _compression(path)
    temp, damage = (None, None) if module is None else _decompressed(path, module)
    if temp is not None:
        made.append(temp)
    tar = path if temp is None else temp.path
    try:
        try:
            _group(path, _plain_members(tar, temp), samples)
        except _NeedsTarfile:
            samples.clear()
            _group(path, _tarfile_members(tar, temp), samples)
    except _READ_ERRORS as exc:
        if damage is None or _resource_problem(exc):
            raise
    finally:
        _resolve(samples, tar)
    if damage is not None:
        raise damage


def _resource_problem(exc: BaseException) -> str | None:
    """What ran out, with advice, when ``exc`` is the machine's (memory, disk, file handles); else None."""
    return _RESOURCE_ERRNOS.get(exc.errno) if isinstance(exc, OSError) else None


def _image_ext(parts: dict[str, bytes]) -> str | None:
    """The sample's image member: its exact image extension, else its extension whose last component is
    one (``seg.png``, decoded by its last extension as webdataset does); :func:`_check_one_image` has made
    sure there is at most one of the kind picked."""
    for ext in IMAGE_EXTENSIONS:
        if ext in parts:
            return ext
    for ext in sorted(parts):
        if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            return ext
    return None


def _reader(data: bytes | Span, name: str):
    """The entry's pixel reader: decodes ``data``, read from its shard first when it is a span (a
    shard changed since it was listed is then a bad image naming it, like an undecodable one). A
    member never read (a :class:`_BadMember`) has no reader: its entry's ``problem`` says why."""
    if isinstance(data, Span):
        return lambda: decode_image(_span_bytes(data, name), name)
    return lambda: decode_image(data, name)


def _span_bytes(span: Span, name: str) -> bytes:
    try:
        return span.read()
    except (OSError, tarfile.ReadError) as exc:
        raise BadImageError(name, f"cannot read it from its shard ({exc}); was the shard changed or removed after "
                                  "it was listed?") from None


def list_shards(paths: list[Path], *, source: str, skip_bad: bool) -> Listing:
    """The samples of ``paths`` (in order) as entries keyed by their WebDataset ``__key__``.

    Raises:
        DiffauditError: an unsafe member, a damaged shard (unless ``skip_bad``), a duplicate key.
    """
    with gc_paused():
        return _list_shards(paths, source=source, skip_bad=skip_bad)


def _list_shards(paths: list[Path], *, source: str, skip_bad: bool) -> Listing:
    raw: list[tuple[Path, str, dict[str, bytes]]] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, int] = {}  # key -> its sample's index in ``raw``
    for path in paths:
        samples, damage = read_shard(path, skip_bad=skip_bad)
        if damage:
            skipped.append((str(path), damage))
        for key, parts in samples:
            if key in seen:
                raise _repeated_key(key, raw[seen[key]][0], raw[seen[key]][2], path, parts)
            seen[key] = len(raw)
            raw.append((path, key, parts))
    has_labels = any("cls" in p for _, _, p in raw)
    has_captions = any("txt" in p for _, _, p in raw)
    entries = []
    files = {path: str(path) for path in paths}  # one string per shard, shared by its entries
    for path, key, parts in raw:
        name = f"{path}:{key}"
        problems: list[str] = []
        ext = _image_ext(parts)
        if ext is None:
            problems.append(f"sample has no image ({', '.join('.' + e for e in IMAGE_EXTENSIONS)}); "
                            f"it holds {', '.join('.' + e for e in sorted(parts))}")
        else:
            name = f"{path}:{key}.{ext}"
        if ext is not None and isinstance(parts[ext], _BadMember):
            problems.append(f"the image member {parts[ext].reason}")
        label = caption = caption_problem = None
        if has_labels:
            if "cls" not in parts:
                problems.append("no .cls label while other samples have one")
            elif isinstance(parts["cls"], _BadMember):
                problems.append(f"its .cls member {parts['cls'].reason}")
            else:
                text = parts["cls"].decode("ascii", errors="replace").strip()
                if text.isascii() and text.isdigit():
                    label = int(text)
                else:
                    problems.append(f".cls label {text[:20]!r} is not an integer >= 0")
        if has_captions:  # a caption's problem apart: a load that needs no captions drops them instead
            if "txt" not in parts:
                dotted = sorted(e for e in parts if e.endswith(".txt"))
                caption_problem = "no .txt caption while other samples have one" + (
                    f" (its .{dotted[0]} is not one: {_FIRST_DOT_RULE}, so this is sample {key!r} with extensions "
                    f"{', '.join('.' + e for e in sorted(parts))}; {_NO_DOT_BEFORE_EXTENSION})" if dotted else "")
            elif isinstance(parts["txt"], _BadMember):
                caption_problem = f"its .txt member {parts['txt'].reason}"
            else:
                try:
                    caption = parts["txt"].decode("utf-8-sig").strip()  # without a byte-order mark
                except UnicodeDecodeError:
                    caption_problem = ".txt caption is not UTF-8"
        entries.append(Entry(
            key=key,
            name=name,
            read=_reader(parts[ext], name) if ext and not isinstance(parts[ext], _BadMember) else (lambda: None),
            label=label,
            caption=caption,
            problem="; ".join(problems) or None,
            file=files[path],
            image_file=True,
            caption_problem=caption_problem,
        ))
    return Listing(entries=entries, source=source, has_labels=has_labels, has_captions=has_captions,
                   skipped=skipped)


def _repeated_key(key: str, first_path: Path, first: dict, path: Path, parts: dict) -> DiffauditError:
    """The error for sample ``key`` met again in ``path`` (extensions ``parts``), first met in
    ``first_path`` (extensions ``first``). With no extension in common it is one sample whose files are
    apart (every ``.png`` first, then every ``.cls``): WebDataset groups consecutive members."""
    def exts(sample: dict) -> str:
        return ", ".join("." + e for e in sorted(sample))

    if set(first) & set(parts):
        where = "twice in" if first_path == path else f"in {first_path} and in"
        return DiffauditError(f"sample key {key!r} appears {where} {path} (with {exts(first)}, then with "
                              f"{exts(parts)}); keys must be unique")
    advice = ("WebDataset groups consecutive members into a sample, so a sample's files must lie next to each "
              "other in the tar: write the shard with its members sorted by name (tar --sort=name, or "
              "webdataset's ShardWriter)")
    if first_path == path:
        return DiffauditError(f"sample key {key!r} appears again in {path} after other samples' members (its "
                              f"{exts(first)} first, its {exts(parts)} later); {advice}")
    return DiffauditError(f"sample key {key!r} appears in {first_path} (its {exts(first)}) and again in {path} (its "
                          f"{exts(parts)}); {advice}, each sample in one shard")


def list_shard_pattern(pattern: str | os.PathLike, *, skip_bad: bool) -> Listing:
    """The samples of the shards named by the brace pattern (or single path) ``pattern``."""
    return list_shards(expand_pattern(str(pattern)), source=str(pattern), skip_bad=skip_bad)
