"""Where a sample store lies: a local folder, or a prefix of an object store (through fsspec).

A store is a handful of small JSON files and ``.npy`` shards, each written once and whole. On a
local (or shared POSIX) folder a file is whole because it is written to a temporary name and renamed
(:func:`~diffaudit.core.io.atomic_write`). On an object store there is no rename, and none is
needed: an object written by one PUT (or one completed multipart upload) is seen whole or not at
all. Only protocols that guarantee this are taken (:data:`OBJECT_PROTOCOLS`); others, such as SFTP
or HTTP, are refused rather than risking a half-written shard that would count as finished.

Both kinds answer the same few questions (:class:`LocalFolder`, :class:`ObjectFolder`): does a file
exist, read or write a JSON document or an array, list a folder, and a local file to memory-map. An
object store's shards are copied once into a private local cache (:func:`cache_root`), one folder per
store (its URL and its manifest's digest), each copy named by the object's size and tag (ETag),
and memory-mapped from there: a command walking 2^20 generations reads each shard from the store once.

fsspec finds credentials and endpoints as it always does (the environment, ``~/.aws``, or
``FSSPEC_S3_*`` variables); every Ray worker does the same on its own node.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.folder_identity import FolderIdentity
from diffaudit.core.io import (atomic_write, dumps_json, load_npy, loads_json, make_private_dir, read_json,
                               save_npy_atomic, write_json_atomic)

#: A sample store's manifest (:mod:`~diffaudit.store.sample_store`): what makes a location a store.
MANIFEST = "manifest.json"
#: fsspec protocols whose objects appear whole once written (S3 and compatibles, Google Cloud Storage,
#: Azure Blob and Data Lake, and fsspec's in-process ``memory`` filesystem).
OBJECT_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")
#: What installing object-store support takes, for errors.
INSTALL_HINT = "pip install 'diffaudit[objects]' (fsspec and s3fs; gcsfs or adlfs for gs:// or az://)"


class StoreReadError(DiffauditError):
    """The object store failed (credentials, network, a refusal): not a statement about what it holds."""


def check_reachable_by_workers(spec: str | os.PathLike | None, flag: str) -> None:
    """Refuse ``--ray`` with a ``memory://`` location: fsspec's memory filesystem lives inside one process,
    so every Ray worker would see an empty one of its own."""
    if spec is not None and url_protocol(spec) == "memory":
        raise DiffauditError(f"{flag} {spec}: memory:// exists only inside this process, so Ray workers cannot reach it; "
                             "use a shared folder or an object store (s3://, gs://, az://) with --ray")


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

    def __init__(self, path: str | os.PathLike):
        self.path = local_path(path)
        self.url = str(self.path)
        # the folder as it is now, checked before each write (None where it is yet to be made)
        self._identity = FolderIdentity.of(self.path) if self.path.is_dir() else None

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
        if (self.path / rel).is_dir():  # read_json's own error would read as the file's contents being wrong
            raise StoreReadError(f"{self.path / rel}: could not read it (a folder in its place)")
        try:
            return read_json(self.path / rel)
        except OSError as exc:  # no permission: the storage's failure, not the file's contents
            raise StoreReadError(f"{self.path / rel}: could not read it ({exc.strerror or exc})") from None

    def write_json(self, rel: str, obj: Any, *, create: bool = False) -> bool:
        """Write ``rel`` whole; with ``create``, only where it does not exist (False: it does, and is kept;
        a local store is written by one process at a time, :mod:`~diffaudit.core.folder_lock`)."""
        self._check_still_here()
        if create and (self.path / rel).exists():
            return False
        write_json_atomic(self.path / rel, obj)
        return True

    def write_npy(self, rel: str, array: np.ndarray) -> None:
        self._check_still_here()
        save_npy_atomic(self.path / rel, array)

    def _check_still_here(self) -> None:
        """Refuse to write when the folder was moved or removed since it was opened (the write would make
        its path again; :mod:`~diffaudit.core.folder_identity`)."""
        if self._identity is not None:
            self._identity.check()

    def read_npy(self, rel: str) -> np.ndarray:
        return load_npy(self.path / rel)

    def listdir(self, rel: str) -> list[str]:
        """Names in folder ``rel`` (empty when it does not exist)."""
        folder = self.path / rel
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def remove(self, rels: list[str]) -> None:
        """Delete the files ``rels``, in that order (one already gone is skipped)."""
        for rel in rels:
            (self.path / rel).unlink(missing_ok=True)

    def mappable(self, rel: str, identity: str, info: "ObjectInfo | None" = None) -> Path:
        """A local file holding ``rel`` to memory-map: the file itself."""
        return self.path / rel


class ObjectInfo(NamedTuple):
    """What a listing says of an object: its size in bytes and a tag that changes when it is rewritten
    (the ETag, or a modification time where the store gives no ETag; empty where it gives neither)."""

    size: int
    tag: str


def _object_info(entry: dict[str, Any]) -> ObjectInfo:
    tag = next((entry[k] for k in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated", "created")
                if entry.get(k) not in (None, "")), "")
    return ObjectInfo(int(entry.get("size") or 0), str(tag))


def canonical_url(url: str) -> str:
    """``url`` as settings record it: the protocol in lower case, no trailing slash (every spelling of one
    prefix compares equal on a resume)."""
    protocol, rest = url.split("://", 1)
    return f"{protocol.lower()}://{rest.rstrip('/')}"


class ObjectFolder:
    """A store under the prefix ``url`` of an object store (fsspec): whole objects by single writes.

    Every failure of the store (missing credentials, an endpoint that does not answer, a refusal) is a
    :class:`DiffauditError` naming the object and what was being done, with the backend's own words:
    backends raise errors of their own kinds (botocore, aiohttp, google-auth) that share no base class.

    Raises :class:`DiffauditError` for a protocol outside :data:`OBJECT_PROTOCOLS`, a URL that names
    no bucket, and when fsspec or the protocol's package is not installed.
    """

    path = None

    def __init__(self, url: str):
        protocol = url_protocol(url)
        if protocol not in OBJECT_PROTOCOLS:
            raise DiffauditError(
                f"{url}: diffaudit keeps sample stores only on object stores whose objects appear whole once written "
                f"({', '.join(p + '://' for p in OBJECT_PROTOCOLS)}) or in a local or mounted folder; mount "
                f"{protocol}:// as a filesystem and give its path"
            )
        self.url = canonical_url(url)
        try:
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(self.url)
        except ImportError as exc:
            raise DiffauditError(f"{url}: reading and writing {protocol}:// needs {exc.name or 'its fsspec package'}: "
                                 f"{INSTALL_HINT}") from None
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise DiffauditError(f"{url}: not a usable {protocol}:// location ({type(exc).__name__}: {exc})") from None
        self.root = root.rstrip("/")
        if not self.root.strip("/"):
            raise DiffauditError(f"{url} names no bucket (or container): give one, e.g. {protocol}://bucket/store")

    def __str__(self) -> str:
        return self.url

    def name(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def shared_name(self) -> str:
        return self.url

    def _key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _forget(self, folder: str) -> None:
        """Forget what this process remembers of the objects under ``folder`` (fsspec caches listings, and
        other processes, such as workers on other nodes, write into the store too)."""
        self.fs.invalidate_cache(self._key(folder))

    def _failed(self, what: str, rel: str, exc: BaseException) -> StoreReadError:
        return StoreReadError(f"{self.name(rel)}: could not {what} ({type(exc).__name__}: {exc})")

    def exists(self, rel: str) -> bool:
        try:
            self._forget(rel.rsplit("/", 1)[0] if "/" in rel else "")
            return bool(self.fs.exists(self._key(rel)))
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise self._failed("look it up", rel, exc) from None

    is_file = exists  # objects only: a "folder" is a prefix, never asked for by name

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._key(rel))
        except FileNotFoundError:
            raise DiffauditError(f"{self.name(rel)} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise self._failed("read it", rel, exc) from None

    def read_json_many(self, rels: list[str]) -> dict[str, Any]:
        """Rel -> the JSON document of each object ``rels``, fetched concurrently where the backend can; a
        :class:`DiffauditError` in place of one that is missing or is not valid JSON, and a
        :class:`StoreReadError` in place of one the store failed to give."""
        keys = [self._key(rel) for rel in rels]
        if getattr(self.fs, "async_impl", False) and keys:  # s3fs, gcsfs, adlfs: one request each, all at once
            import asyncio

            from fsspec.asyn import sync

            async def fetch_all():  # by exact key: fs.cat would read a "[" in a key as a pattern
                return await asyncio.gather(*[self.fs._cat_file(k) for k in keys], return_exceptions=True)

            found = sync(self.fs.loop, fetch_all)
        else:
            found = []
            for key in keys:
                try:
                    found.append(self.fs.cat_file(key))
                except Exception as exc:  # noqa: BLE001 - see the class docstring
                    found.append(exc)
        out: dict[str, Any] = {}
        for rel, data in zip(rels, found):
            if isinstance(data, FileNotFoundError):
                out[rel] = DiffauditError(f"{self.name(rel)} does not exist")
            elif isinstance(data, BaseException):
                out[rel] = self._failed("read it", rel, data)
            else:
                try:
                    out[rel] = self.parse_json(data, rel)
                except DiffauditError as exc:
                    out[rel] = exc
        return out

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
        except FileExistsError as exc:
            if create:
                return False
            raise self._failed("write it", rel, exc) from None  # e.g. a "folder" of that name is in the way
        except DiffauditError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise self._failed("write it", rel, exc) from None
        return True

    def read_json(self, rel: str) -> Any:
        return self.parse_json(self.read_bytes(rel), rel)

    def parse_json(self, data: bytes, rel: str) -> Any:
        """The JSON document ``data`` that object ``rel`` holds (read from it, or from its local copy)."""
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

    def read_npy(self, rel: str) -> np.ndarray:
        """The array in object ``rel``, read whole (:meth:`mappable` gives a local copy to memory-map)."""
        try:
            return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)
        except ValueError as exc:
            raise DiffauditError(f"{self.name(rel)}: not a readable .npy array without pickle ({exc})") from None
        except EOFError as exc:
            raise DiffauditError(f"{self.name(rel)}: damaged or truncated .npy object ({exc or 'empty'})") from None

    def entries(self, rel: str) -> dict[str, ObjectInfo]:
        """Name -> :class:`ObjectInfo` of the objects directly under prefix ``rel`` (empty when there are none)."""
        key = self._key(rel)
        try:
            self.fs.invalidate_cache(key)
            listed = self.fs.ls(key, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise self._failed("list it", rel, exc) from None
        out = {}
        for e in listed:
            name = str(e.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
            if e.get("type") == "file" and name and not str(e.get("name", "")).endswith("/"):
                out[name] = _object_info(e)
        return out

    def listdir(self, rel: str) -> list[str]:
        return sorted(self.entries(rel))

    def info(self, rel: str) -> ObjectInfo:
        """The size and tag of object ``rel``, from one request (not a listing of its folder)."""
        try:
            entry = self.fs.info(self._key(rel))
        except FileNotFoundError:
            raise DiffauditError(f"{self.name(rel)} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise self._failed("look it up", rel, exc) from None
        return _object_info(entry)

    def all_objects(self) -> list[str]:
        """Every object under the store's prefix, relative to it; the empty "folder" objects that consoles
        make (a key ending in ``/``) are not objects of a store and are left out."""
        try:
            self._forget("")
            found = self.fs.find(self.root + "/")
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise self._failed("list it", "", exc) from None
        prefix = self.root.lstrip("/") + "/"
        names = (k.lstrip("/")[len(prefix):] for k in found if k.lstrip("/").startswith(prefix))
        return sorted(n for n in names if n and not n.endswith("/"))

    def remove(self, rels: list[str]) -> None:
        """Delete the objects ``rels`` one by one (by exact key: never read as a pattern, so a ``[`` or
        ``*`` in a name deletes that object only)."""
        for rel in rels:
            try:
                self.fs.rm_file(self._key(rel))
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                raise self._failed("delete it", rel, exc) from None
        self._forget("")

    def mappable(self, rel: str, identity: str, info: ObjectInfo | None = None) -> Path:
        """A local copy of object ``rel`` to memory-map, in the cache folder of this store (its URL and
        ``identity``).

        The copy's name carries a digest of the object's size and tag (``info``, else looked up): two
        stores with one manifest (two GPUs of one kind may round differently) have their own folders,
        an object written anew has another tag and so another copy, and a copy is fetched through a
        temporary file renamed into place, so no reader ever maps a partial copy or one of another
        version. An object whose store gives no tag is fetched every time. The cache folder must be
        this user's alone (:func:`private_cache_folder`): a copy planted by another user is never read.
        """
        info = self.info(rel) if info is None else info
        folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        where = hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:12]
        cache = private_cache_folder(Path("stores") / f"{identity.replace(':', '-')}-{where}" / folder)
        # untagged: one copy, fetched anew each time and renamed over the last (a reader that mapped the last
        # keeps its file until it lets go)
        version = hashlib.sha256(f"{info.size} {info.tag}".encode("utf-8")).hexdigest()[:16] if info.tag else "untagged"
        copy = cache / f"{name}.{version}"
        if info.tag and copy.is_file() and copy.stat().st_size == info.size:
            return copy
        try:
            with self.fs.open(self._key(rel), "rb") as src:
                atomic_write(copy, lambda dst: shutil.copyfileobj(src, dst, 1 << 22))
        except DiffauditError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise self._failed(f"copy it to {copy}", rel, exc) from None
        return copy


def private_cache_folder(relative: Path) -> Path:
    """``cache_root() / relative``, made owner-only where missing; refused where it or a folder above it
    inside the cache belongs to another user or its group or others may write to it (a shared
    ``DIFFAUDIT_CACHE`` would let them plant copies that pass for a store's shards)."""
    root = cache_root()
    folder = make_private_dir(root / relative)
    for path in [root, *[root / Path(*relative.parts[:i]) for i in range(1, len(relative.parts) + 1)]]:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise DiffauditError(
                f"the cache folder {path} belongs to another user, or its group or others may write to it, so copies "
                "there could have been planted; point DIFFAUDIT_CACHE at a folder of your own (chmod go-w)"
            )
    return folder


def open_location(spec: str | os.PathLike) -> LocalFolder | ObjectFolder:
    """The location ``spec`` names: an object store for a URL (``s3://bucket/prefix``), else a local folder."""
    return ObjectFolder(str(spec)) if is_object_url(spec) else LocalFolder(spec)
