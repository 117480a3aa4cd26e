"""Where a sample store lies: a local folder, or a prefix of an object store (through fsspec).

A store is a handful of small JSON files and ``.npy`` shards, each written once and whole. On a
local (or shared POSIX) folder a file is whole because it is written to a temporary name and renamed
(:func:`~diffaudit.core.io.atomic_write`). On an object store there is no rename, and none is
needed: an object written by one PUT (or one completed multipart upload) is seen whole or not at
all. Only protocols that guarantee this are taken (:data:`OBJECT_PROTOCOLS`); others, such as SFTP
or HTTP, are refused rather than risking a half-written shard that would count as finished.

Both kinds answer the same few questions (:class:`LocalFolder`, :class:`ObjectFolder`): does a file
exist, read or write a JSON document or an array, list a folder, and a local file to memory-map. An
object store's shards are copied once into a private local cache (:func:`cache_root`), keyed by the
store's identity (its manifest's digest) and checked against the object's size, and memory-mapped
from there: a command walking 2^20 generations reads each shard from the store once.

fsspec finds credentials and endpoints as it always does (the environment, ``~/.aws``, or
``FSSPEC_S3_*`` variables); every Ray worker does the same on its own node.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import (atomic_write, dumps_json, load_npy, loads_json, make_private_dir, read_json,
                               save_npy_atomic, write_json_atomic)

#: A sample store's manifest (:mod:`~diffaudit.store.sample_store`): what makes a location a store.
MANIFEST = "manifest.json"
#: fsspec protocols whose objects appear whole once written (S3 and compatibles, Google Cloud Storage,
#: Azure Blob and Data Lake, and fsspec's in-process ``memory`` filesystem).
OBJECT_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")
#: What installing object-store support takes, for errors.
INSTALL_HINT = "pip install 'diffaudit[objects]' (fsspec and s3fs; gcsfs or adlfs for gs:// or az://)"


def url_protocol(spec: str | os.PathLike) -> str | None:
    """The protocol of a URL ``spec`` (``s3`` of ``s3://bucket/x``), None for a plain path or ``file://``."""
    text = str(spec)
    if "://" not in text:
        return None
    protocol = text.split("://", 1)[0].lower()
    return None if protocol in ("file", "local") else protocol


def is_object_url(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names an object store (any URL but ``file://``)."""
    return url_protocol(spec) is not None


def local_path(spec: str | os.PathLike) -> Path:
    """A plain path, or the path of a ``file://`` URL."""
    text = str(spec)
    return Path(text.split("://", 1)[1]) if "://" in text else Path(text)


def cache_root() -> Path:
    """Where copies of object-store shards are kept: ``$DIFFAUDIT_CACHE``, else ``$XDG_CACHE_HOME/diffaudit``,
    else ``~/.cache/diffaudit``."""
    if os.environ.get("DIFFAUDIT_CACHE"):
        return Path(os.environ["DIFFAUDIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffaudit"


class LocalFolder:
    """A store in a local (or shared POSIX) folder ``path``: whole files by rename."""

    is_local = True

    def __init__(self, path: str | os.PathLike):
        self.path = local_path(path)
        self.url = str(self.path)

    def __str__(self) -> str:
        return self.url

    def name(self, rel: str) -> str:
        """``rel`` (``shards/shard-000001.npy``) as a user reads it in a message."""
        return str(self.path / rel)

    def shared_name(self) -> str:
        """How another process (a Ray worker on another node, another working directory) opens this store."""
        return str(self.path.resolve())

    def exists(self, rel: str) -> bool:
        return (self.path / rel).exists()

    def is_file(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def read_json(self, rel: str) -> Any:
        return read_json(self.path / rel)

    def write_json(self, rel: str, obj: Any, *, create: bool = False) -> bool:
        """Write ``rel`` whole; with ``create``, only where it does not exist (False: it does, and is kept;
        a local store is written by one process at a time, :mod:`~diffaudit.core.folder_lock`)."""
        if create and (self.path / rel).exists():
            return False
        write_json_atomic(self.path / rel, obj)
        return True

    def write_npy(self, rel: str, array: np.ndarray) -> None:
        save_npy_atomic(self.path / rel, array)

    def read_npy(self, rel: str, *, mmap: bool = False) -> np.ndarray:
        return load_npy(self.path / rel, mmap=mmap)

    def listdir(self, rel: str) -> list[str]:
        """Names in folder ``rel`` (empty when it does not exist)."""
        folder = self.path / rel
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def mappable(self, rel: str, identity: str, size: int | None = None) -> Path:
        """A local file holding ``rel`` to memory-map: the file itself."""
        return self.path / rel


class ObjectFolder:
    """A store under the prefix ``url`` of an object store (fsspec): whole objects by single writes.

    Raises :class:`DiffauditError` for a protocol outside :data:`OBJECT_PROTOCOLS`, and when fsspec
    or the protocol's package is not installed.
    """

    is_local = False
    path = None

    def __init__(self, url: str):
        protocol = url_protocol(url)
        if protocol not in OBJECT_PROTOCOLS:
            raise DiffauditError(
                f"{url}: diffaudit keeps sample stores only on object stores whose objects appear whole once written "
                f"({', '.join(p + '://' for p in OBJECT_PROTOCOLS)}) or in a local or mounted folder; mount "
                f"{protocol}:// as a filesystem and give its path"
            )
        try:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise DiffauditError(f"{url}: reading and writing {protocol}:// needs {exc.name or 'its fsspec package'}: "
                                 f"{INSTALL_HINT}") from None
        except (ValueError, OSError) as exc:
            raise DiffauditError(f"{url}: not a usable {protocol}:// location ({exc})") from None
        self.root = self.root.rstrip("/")
        self.url = url.rstrip("/")

    def __str__(self) -> str:
        return self.url

    def name(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def shared_name(self) -> str:
        return self.url

    def _key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _fresh(self, rel: str) -> str:
        """``rel``'s key, with what this process remembers of the objects beside it forgotten (fsspec
        caches listings, and other processes, such as workers on other nodes, write into the store too)."""
        key = self._key(rel)
        self.fs.invalidate_cache(key.rsplit("/", 1)[0] if "/" in rel else self.root)
        return key

    def _failed(self, what: str, rel: str, exc: Exception) -> DiffauditError:
        return DiffauditError(f"{self.name(rel)}: could not {what} ({type(exc).__name__}: {exc})")

    def exists(self, rel: str) -> bool:
        try:
            return bool(self.fs.exists(self._fresh(rel)))
        except OSError as exc:
            raise self._failed("look it up", rel, exc) from None

    is_file = exists  # objects only: a "folder" is a prefix, never asked for by name

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._fresh(rel))
        except FileNotFoundError:
            raise DiffauditError(f"{self.name(rel)} does not exist") from None
        except OSError as exc:
            raise self._failed("read it", rel, exc) from None

    def write_bytes(self, rel: str, data: bytes, *, create: bool = False) -> bool:
        """Write object ``rel`` whole; with ``create``, only where none exists (False: one does, and is kept).

        ``create`` is a conditional write where the backend makes one (S3's ``If-None-Match``, fsspec's
        ``mode="create"``); a backend without it is asked first whether the object exists, which two
        writers starting at the same moment can both pass.
        """
        key = self._key(rel)
        try:
            try:
                self.fs.pipe_file(key, data, mode="create" if create else "overwrite")
            except (TypeError, NotImplementedError):  # a backend whose pipe_file has no mode
                if create and self.exists(rel):
                    return False
                self.fs.pipe_file(key, data)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._failed("write it", rel, exc) from None
        return True

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return loads_json(data.decode("utf-8"), self.name(rel))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise DiffauditError(f"{self.name(rel)} is not valid JSON: {exc}") from None

    def write_json(self, rel: str, obj: Any, *, create: bool = False) -> bool:
        return self.write_bytes(rel, (dumps_json(obj) + "\n").encode("utf-8"), create=create)

    def write_npy(self, rel: str, array: np.ndarray) -> None:
        if array.dtype == object:
            raise TypeError("object arrays are not stored (they would need pickle)")
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self.write_bytes(rel, buffer.getvalue())

    def read_npy(self, rel: str, *, mmap: bool = False) -> np.ndarray:
        """The array in object ``rel`` (read whole; ``mmap`` is a local file's option and is ignored here:
        use :meth:`mappable`)."""
        try:
            return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)
        except ValueError as exc:
            raise DiffauditError(f"{self.name(rel)}: not a readable .npy array without pickle ({exc})") from None
        except EOFError as exc:
            raise DiffauditError(f"{self.name(rel)}: damaged or truncated .npy object ({exc or 'empty'})") from None

    def sizes(self, rel: str) -> dict[str, int]:
        """Name -> size in bytes of the objects directly under prefix ``rel`` (empty when there are none)."""
        key = self._key(rel)
        self.fs.invalidate_cache(key)
        try:
            entries = self.fs.ls(key, detail=True)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._failed("list it", rel, exc) from None
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                for e in entries if e.get("type") == "file"}

    def listdir(self, rel: str) -> list[str]:
        return sorted(self.sizes(rel))

    def all_objects(self) -> list[str]:
        """Every object under the store's prefix, relative to it."""
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._failed("list it", "", exc) from None
        return sorted(k[len(self.root) + 1:] for k in found if k.startswith(self.root + "/"))

    def remove(self, rels: list[str]) -> None:
        """Delete the objects ``rels`` (in one request where the store takes several at once)."""
        if not rels:
            return
        try:
            self.fs.rm([self._key(rel) for rel in rels])
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._failed("delete it", rels[0], exc) from None
        self.fs.invalidate_cache(self.root)

    def mappable(self, rel: str, identity: str, size: int | None = None) -> Path:
        """A local copy of object ``rel`` to memory-map, in the cache folder of the store ``identity``.

        A copy whose size is the object's (``size``, else looked up) is used as it is: a finished shard
        is never rewritten, and a store of other generations has another identity. Any other copy is
        fetched again, through a temporary file renamed into place, so an interrupted fetch never
        leaves a partial copy.
        """
        folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        size = self.sizes(folder).get(name) if size is None else size
        if size is None:
            raise DiffauditError(f"{self.name(rel)} does not exist")
        copy = make_private_dir(cache_root() / "stores" / identity.replace(":", "-") / folder) / name
        if copy.is_file() and copy.stat().st_size == size:
            return copy
        try:
            with self.fs.open(self._key(rel), "rb") as src:
                atomic_write(copy, lambda dst: shutil.copyfileobj(src, dst, 1 << 22))
        except OSError as exc:
            raise self._failed(f"copy it to {copy}", rel, exc) from None
        return copy


def open_location(spec: str | os.PathLike) -> LocalFolder | ObjectFolder:
    """The location ``spec`` names: an object store for a URL (``s3://bucket/prefix``), else a local folder."""
    return ObjectFolder(str(spec)) if is_object_url(spec) else LocalFolder(spec)
