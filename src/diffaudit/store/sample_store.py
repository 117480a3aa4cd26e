"""Sharded, resumable, atomic storage of generations (docs/architecture.md, Conventions: generations).

Layout of a store folder::

    settings.json              the sampling settings (resume checks them)
    manifest.json              totals, shard size, image shape, prompts
    shards/shard-NNNNNN.npy    uint8 (S, H, W, C): generations with ordinals [N*S, (N+1)*S)
    shards/shard-NNNNNN.json   sidecar: ids, seeds, prompts, sampler settings (written last)
    result.json                written when every shard is done

Generation ordinal o belongs to prompt p = o // per_prompt, image i = o % per_prompt; its id is
``p<p>-i<i>`` and its seed ``generation_seed(seed, p, i)``. A shard counts as finished only when
its sidecar exists; both files are written atomically, so a killed writer leaves either a whole
shard or nothing, and a resumed run redoes exactly the unfinished shards. Finished shards are never
rewritten.

A shard damaged after it was finished (its pixels file truncated or edited in place) is not finished:
resuming a store in a folder (:meth:`SampleStore.create`) looks at every finished shard's pixels file
(:meth:`SampleStore.damaged_shards`), warns of each damaged one by name, and unfinishes it so it is made
again, bitwise the same (each image has its own seed). Readers refuse a damaged shard, naming it and
saying to re-run ``diffaudit sample`` with the same ``--out`` to repair it.

A store never takes another run's shards for its own: a folder holding a manifest or shards but no
``settings.json``, or no manifest but shards, is refused when created, and a shard whose sidecar
records other sampler settings, ids, seeds or prompts than the manifest plans for it is refused
when read.

A store lies in a local (or shared POSIX) folder, or under a prefix of an object store given as a
URL (``s3://bucket/store``, :mod:`~diffaudit.store.location`): the ids and the rules are the same;
how a file is made whole and how ``--out`` is claimed differ (:mod:`~diffaudit.store.object_out`),
and so does where a shard's pixels lie. An object store has no lock, so two writers of one shard
may meet: each writes its pixels to ``shards/shard-NNNNNN.<12 hex>.npy`` of its own, the sidecar
(created only where none exists) names them in ``pixels``, and the writer whose sidecar came first
owns the shard (:meth:`SampleStore.write_shard`). No shard's object (pixels or sidecar) is ever overwritten.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.faults import fault_point
from diffaudit.core.folder_lock import writer
from diffaudit.core.progress import progress_bar, warning_line
from diffaudit.core.io import load_npy, make_private_dir
from diffaudit.core.npz_arrays import read_npy_header
from diffaudit.core.outdir import SETTINGS_FILE, prepare_out_dir, recorded_command, recorded_settings
from diffaudit.core.seeds import generation_seed
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.sharded import ShardedImages
from diffaudit.store.location import MANIFEST, LocalFolder, ObjectFolder, ObjectInfo, StoreReadError, open_location
from diffaudit.store.object_out import prepare_object_out, recorded

Location = LocalFolder | ObjectFolder
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.json$")  # 6 digits, more from shard 1,000,000 on
#: A shard's pixels: ``shard-NNNNNN.npy`` in a folder, ``shard-NNNNNN.<12 hex>.npy`` on an object store.
_PIXELS_RE = re.compile(r"^shard-(\d{6,})(?:\.[0-9a-f]{12})?\.npy$")
_SHARD_FILE = re.compile(r"^shard-\d{6,}(\.json|(?:\.[0-9a-f]{12})?\.npy)$")
#: The sidecar field recording the SHA-256 of a shard's pixels (the array's bytes in C order, not the
#: ``.npy`` header), written with the shard; sidecars of stores made before it have none.
DIGEST_FIELD = "pixels_sha256"


def pixels_digest(images: np.ndarray) -> str:
    """:data:`DIGEST_FIELD` of ``images``: the SHA-256 of its bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def _npy_damage(path: Path, expected: tuple[int, ...]) -> str | None:
    """What is wrong with the ``.npy`` file ``path`` that should hold a uint8 array of shape ``expected``,
    from its size and header alone (a stat and the first few hundred bytes, never the pixels); None when
    nothing is."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            shape, fortran, dtype, offset = read_npy_header(f)
    except FileNotFoundError:
        return "it is missing"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    except (ValueError, EOFError) as exc:  # no magic, a cut or garbled header
        return f"its .npy header is damaged or truncated ({exc or 'empty'})"
    if dtype != np.uint8 or fortran or tuple(shape) != tuple(expected):
        order = " (Fortran order)" if fortran else ""
        return f"its header says {dtype} {tuple(shape)}{order}, not the uint8 {tuple(expected)} its sidecar and the manifest say"
    want = offset + int(np.prod(expected, dtype=np.int64))
    if size != want:
        return f"it is {size} bytes, not the {want} its header and sidecar promise ({'truncated' if size < want else 'extra bytes at its end'})"
    return None


def generation_id(prompt_index: int, image_index: int) -> str:
    return f"p{prompt_index}-i{image_index}"


#: What :func:`generation_id` writes; a sidecar id that is not of this form is refused when read
#: (ids name exported files, so a hand-edited ``../x`` must not become a path).
GENERATION_ID = re.compile(r"p\d+-i\d+")


def _shard_name(index: int, ext: str) -> str:
    """File name of shard ``index``'s pixels (``npy``) or sidecar (``json``) in ``shards/``."""
    return f"shard-{index:06d}.{ext}"


@dataclass(frozen=True)
class ShardPlan:
    """What shard ``index`` holds: ordinals [start, stop)."""

    index: int
    start: int
    stop: int


def _shard_files(loc: Location) -> list[str]:
    """Names of the shard files (pixels or sidecars) in the store's ``shards`` folder, sorted."""
    return [n for n in loc.listdir("shards") if _SHARD_FILE.match(n)]


def _refuse_unowned_store(loc: LocalFolder) -> None:
    """Refuse a folder without ``settings.json`` that holds a manifest or shards, before writing to it.

    Such files are another run's (e.g. left by a ``--fresh`` of an earlier version killed while
    deleting, which removed the settings first): new settings beside them would make them count
    as this run's. Nothing is written, so the folder stays as it was for the user to inspect.
    """
    found = ([MANIFEST] if loc.exists(MANIFEST) else []) + [f"shards/{n}" for n in _shard_files(loc)[:1]]
    if loc.exists(SETTINGS_FILE) or not found:
        return
    raise DiffauditError(
        f"{loc} holds {' and '.join(found)} but no {SETTINGS_FILE}: they are left from an interrupted or other "
        f"run and may have been made with other settings. Delete {loc} yourself, or choose another --out"
    )


def _refuse_orphan_shards(loc: Location) -> None:
    """Refuse to start a new store in ``loc`` (no manifest yet) whose ``shards/`` already holds shards.

    They are another run's work, or one whose manifest was lost: a new manifest would count them as
    finished generations of this run whatever settings made them.
    """
    found = _shard_files(loc)
    if found:
        raise DiffauditError(
            f"{loc.name('shards')} already holds {len(found)} shard file(s) (e.g. {found[0]}) but {loc} has no "
            f"{MANIFEST}: they are left from an interrupted or other run and may have been made with other "
            f"settings. Delete {loc} (or pass --fresh) to start over, or choose another --out"
        )


class SampleStore:
    """A folder (or object-store prefix) of generation shards. Open with :meth:`create` (writer) or
    :meth:`open` (reader).

    ``location``: where it lies (a path, a URL, or a :mod:`~diffaudit.store.location` object);
    ``path`` is its local folder (None on an object store) and ``name`` how messages name it.
    """

    def __init__(self, location: str | Path | Location, manifest: dict[str, Any]):
        self.location = location if isinstance(location, (LocalFolder, ObjectFolder)) else open_location(location)
        self.path: Path | None = self.location.path
        self.name = self.location.url
        self.manifest = manifest
        self._entries: dict[str, ObjectInfo] = {}  # object store: shard file -> its size and tag, from the last listing

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, settings: dict[str, Any], prompts: list[str | None], per_prompt: int,
               image_shape: tuple[int, int, int], shard_size: int, fresh: bool = False,
               upgrade=None, check_shards: bool = False) -> "SampleStore":
        """Create a store, or reopen one made with the same settings (resume; ``upgrade``: see
        :func:`~diffaudit.core.outdir.prepare_out_dir`), its damaged shards unfinished
        (:meth:`unfinish_damaged`; ``check_shards``: every finished shard's digest read)."""
        if per_prompt < 1 or not prompts:
            raise DiffauditError("nothing to generate: need at least one prompt and one image per prompt")
        if shard_size < 1:
            raise DiffauditError("--shard-size must be at least 1")
        full = {**settings, "prompts": prompts, "per_prompt": per_prompt, "shard_size": shard_size}
        loc = open_location(path)
        if isinstance(loc, ObjectFolder):
            prepare_object_out(loc, "sample", full, fresh=fresh, upgrade=upgrade)
        else:
            if not fresh:
                _refuse_unowned_store(loc)
            loc = LocalFolder(prepare_out_dir(loc.path, "sample", full, fresh=fresh, upgrade=upgrade,
                                              setup_files=(MANIFEST,))[0])
        total = len(prompts) * per_prompt
        manifest = {
            "schema_version": 1, "n_total": total, "per_prompt": per_prompt, "shard_size": shard_size,
            "n_shards": -(-total // shard_size), "image_shape": list(image_shape), "prompts": prompts,
            "seed": settings.get("seed", 0), "sampler": settings,
        }
        resumed = loc.exists(MANIFEST)
        if not resumed:
            _refuse_orphan_shards(loc)
            loc.write_json(MANIFEST, manifest, create=True)  # of two writers on an object store, one manifest
        if loc.path is not None:
            make_private_dir(loc.path / "shards")
        store = cls(loc, loc.read_json(MANIFEST))
        if resumed:
            store.unfinish_damaged(full=check_shards)
        return store

    @classmethod
    def open(cls, path: str | Path) -> "SampleStore":
        loc = open_location(path)
        if not loc.is_file(MANIFEST):
            if loc.path is not None and not loc.path.exists():
                raise DiffauditError(f"{loc} does not exist (expected a sample store, written by `diffaudit sample`)")
            inner = loc.path / "samples" if loc.path is not None else None
            hint = f"; {inner} is one (an audit's generations)" if inner is not None and (inner / MANIFEST).is_file() else ""
            command = recorded_command(loc.path) if loc.path is not None and loc.path.is_dir() else None
            if command not in (None, "sample"):  # another command's folder, said as what it is (as verify says it)
                raise DiffauditError(f"{loc} is the output folder of `diffaudit {command}`, not a sample store"
                                     + (hint or "; pass the sample store `diffaudit sample` wrote"))
            raise DiffauditError(f"{loc} is not a sample store (no {MANIFEST}){hint}")
        return cls(loc, loc.read_json(MANIFEST))

    @staticmethod
    def is_store(path: str | Path) -> bool:
        """Whether ``path`` (a folder or an object-store URL) holds a store's manifest."""
        return open_location(path).is_file(MANIFEST)

    @staticmethod
    def recorded_settings(path: str | Path) -> dict[str, Any] | None:
        """The settings `diffaudit sample` recorded in the store at ``path`` (a folder or a URL), or None
        (no store there yet, or another command's output)."""
        loc = open_location(path)
        if isinstance(loc, LocalFolder):
            return recorded_settings(loc.path, "sample")
        record = recorded(loc)
        return record["settings"] if record is not None and record["command"] == "sample" else None

    @functools.cached_property
    def identity(self) -> str:
        """``store:`` and a digest of the manifest (model weights digest, seed, sampler, prompts: the images
        are a function of it) without the model folder's path: the same store elsewhere is the same."""
        sampler = dict(self.manifest.get("sampler") or {})
        sampler.pop("model", None)
        body = json.dumps({**self.manifest, "sampler": sampler}, sort_keys=True).encode("utf-8")
        return "store:" + hashlib.sha256(body).hexdigest()[:16]

    # -- plan ----------------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        return int(self.manifest["n_shards"])

    def plan(self, index: int) -> ShardPlan:
        s = int(self.manifest["shard_size"])
        return ShardPlan(index, index * s, min((index + 1) * s, int(self.manifest["n_total"])))

    def ordinal_info(self, ordinal: int) -> tuple[int, int, int, str | None]:
        """(prompt index, image index, seed, prompt) of a generation ordinal."""
        per = int(self.manifest["per_prompt"])
        p, i = divmod(int(ordinal), per)
        return p, i, generation_seed(int(self.manifest["seed"]), p, i), self.manifest["prompts"][p]

    def shard_request(self, index: int) -> dict[str, list]:
        """ids, seeds, prompt indices and prompts of shard ``index``."""
        pl = self.plan(index)
        info = [self.ordinal_info(o) for o in range(pl.start, pl.stop)]
        return {
            "ids": [generation_id(p, i) for p, i, _, _ in info],
            "seeds": [s for _, _, s, _ in info],
            "prompt_indices": [p for p, _, _, _ in info],
            "prompts": [pr for _, _, _, pr in info],
        }

    # -- shards --------------------------------------------------------------------------
    @staticmethod
    def _npy(index: int) -> str:
        """A local store's pixels of shard ``index`` (an object store's sidecar names its own, :meth:`write_shard`)."""
        return f"shards/{_shard_name(index, 'npy')}"

    @staticmethod
    def _sidecar(index: int) -> str:
        return f"shards/{_shard_name(index, 'json')}"

    @property
    def _on_objects(self) -> bool:
        return isinstance(self.location, ObjectFolder)

    def is_complete(self, index: int) -> bool:
        """Whether shard ``index`` is finished: its sidecar exists (written after its pixels, and removed
        before them), and in a folder a pixels file of it too (``shard-NNNNNN.npy``, or an object store's
        ``shard-NNNNNN.<hex>.npy`` copied into a folder). On an object store the sidecar names its pixels,
        and :meth:`stray_shards` finds one whose pixels are gone."""
        if not self.location.exists(self._sidecar(index)):
            return False
        if self._on_objects:
            return True
        return self.location.exists(self._npy(index)) or any(
            _PIXELS_RE.fullmatch(p.name) for p in (self.location.path / "shards").glob(f"shard-{index:06d}.*.npy"))

    def _listed_sidecars(self) -> list[int]:
        """Indices of every shard sidecar in one listing of ``shards/`` (on an object store, kept for
        :meth:`read_shard`), beyond the manifest's shards too; in a folder, only those beside pixels."""
        if self._on_objects:
            self._entries = self.location.entries("shards")
            names = set(self._entries)
        else:
            names = set(self.location.listdir("shards"))
        with_pixels = {int(m.group(1)) for m in map(_PIXELS_RE.fullmatch, names) if m}
        out = []
        for name in names:
            m = _SHARD_RE.match(name)
            k = int(m.group(1)) if m else -1
            if m and name == _shard_name(k, "json") and (self._on_objects or k in with_pixels):
                out.append(k)
        return sorted(out)

    def completed(self) -> list[int]:
        """Indices of the finished shards (:meth:`is_complete`) this store's manifest plans, from one listing
        (a sidecar beyond them is another run's, never counted: :meth:`stray_shards` removes it)."""
        return [k for k in self._listed_sidecars() if k < self.n_shards]

    def pending(self) -> list[int]:
        done = set(self.completed())
        return [k for k in range(self.n_shards) if k not in done]

    def write_shard(self, index: int, images: np.ndarray, *, unless_finished: bool = False) -> bool:
        """Write shard ``index`` (uint8 (S, H, W, C)); returns whether it did.

        A finished shard is never rewritten: it is refused, or with ``unless_finished`` kept as it is
        (False). On an object store, which has no lock, the pixels go to an object of this writer's own
        (``shard-NNNNNN.<random>.npy``) that the sidecar names, and the sidecar is created only where none
        exists: of two writers of one shard (another command with the same settings, or one still
        writing after ``--fresh`` replaced the store), the one whose sidecar is created owns the shard
        with the pixels it wrote, and the other removes its own pixels; no shard's object is ever overwritten.
        """
        if self.is_complete(index):
            if unless_finished:
                return False
            raise DiffauditError(f"shard {index} of {self.name} is finished; finished shards are never rewritten")
        pl = self.plan(index)
        exp = (pl.stop - pl.start, *self.manifest["image_shape"])
        if images.dtype != np.uint8 or tuple(images.shape) != exp:
            raise DiffauditError(f"shard {index}: expected uint8 {exp}, got {images.dtype} {images.shape}")
        req = self.shard_request(index)
        meta = {"shard": index, "start": pl.start, "stop": pl.stop, "ids": req["ids"], "seeds": req["seeds"],
                "prompts": req["prompts"], "sampler": self.manifest["sampler"], DIGEST_FIELD: pixels_digest(images)}
        if not self._on_objects:
            self.location.write_npy(self._npy(index), images)
            fault_point("store.between_files")  # a crash here leaves pixels without a sidecar: unfinished
            self.location.write_json(self._sidecar(index), meta)
            return True
        pixels = f"shards/shard-{index:06d}.{secrets.token_hex(6)}.npy"
        self.location.write_npy(pixels, images)
        fault_point("store.between_files")
        if self.location.write_json(self._sidecar(index), {**meta, "pixels": pixels[len("shards/"):]}, create=True):
            return True
        try:  # another writer's sidecar came first: the shard and its pixels are its
            self.location.remove([pixels])
        except DiffauditError as exc:  # e.g. no right to delete: the unused object stays (docs: known limits)
            warning_line("sample", f"shard {index} was finished by another writer; {exc}")
        if unless_finished:
            return False
        raise DiffauditError(f"shard {index} of {self.name} was finished by another writer meanwhile; finished shards "
                             "are never rewritten")

    def read_shard(self, index: int, *, mmap: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """uint8 (n, H, W, C) of a finished shard (memory-mapped with ``mmap``; on an object store, its
        local copy) and its sidecar.

        On an object store, a shard the last listing (:meth:`completed`) showed finished is not looked up
        again, and with ``mmap`` its sidecar is read from the local cache too: opening a cached store of
        1,024 shards then costs its listing, not thousands of requests."""
        return self._read(index, mmap=mmap)[:2]

    def _read(self, index: int, *, mmap: bool) -> tuple[np.ndarray, dict[str, Any], Path | None]:
        """:meth:`read_shard`, and with ``mmap`` the local file the pixels are mapped from."""
        loc, sidecar = self.location, self._sidecar(index)
        listed = _shard_name(index, "json") in self._entries
        if not listed and not self.is_complete(index):
            raise DiffauditError(f"shard {index} of {self.name} is not finished")
        if mmap and listed:
            meta = loc.parse_json(self._local_copy(sidecar).read_bytes(), sidecar)
        else:
            meta = loc.read_json(sidecar)
        if not isinstance(meta, dict) or not isinstance(meta.get("ids"), list):
            self._check_same_run(index, meta)  # says what is wrong with it
        bad = [i for i in meta["ids"] if not (isinstance(i, str) and GENERATION_ID.fullmatch(i))]
        if bad:
            raise DiffauditError(f"{loc.name(sidecar)}: id {bad[0]!r} is not a generation id (p<prompt>-i<image>); "
                                 "the sidecar was edited or damaged")
        self._check_same_run(index, meta)
        pixels = f"shards/{self._pixels_name(index, meta)}"
        expected = (len(meta["ids"]), *self.manifest["image_shape"])
        if not self._on_objects:  # a stat and a header read: a truncated file is named before numpy fails on it
            reason = _npy_damage(self.location.path / pixels, expected)
            if reason is not None:
                raise self._damaged(index, pixels, reason)
        try:
            path = self._local_copy(pixels) if mmap else None
            images = load_npy(path, mmap=True) if mmap else loc.read_npy(pixels)
        except StoreReadError:
            raise
        except DiffauditError as exc:  # damaged or truncated (an object store's copy included)
            raise self._damaged(index, pixels, str(exc)) from None
        if images.dtype != np.uint8 or tuple(images.shape) != tuple(expected):
            raise self._damaged(index, pixels, f"{images.dtype} {tuple(images.shape)}, not the uint8 {tuple(expected)} "
                                               "its sidecar and the manifest say (an edited or damaged file)")
        digest = meta.get(DIGEST_FIELD)
        if not mmap and isinstance(digest, str) and pixels_digest(images) != digest:  # in memory already: cheap
            raise self._damaged(index, pixels, f"its pixels' SHA-256 is not the {DIGEST_FIELD} its sidecar records "
                                               "(changed after it was written)")
        return images, meta, path

    def _damaged(self, index: int, pixels: str, reason: str) -> DiffauditError:
        """The error a reader raises for shard ``index`` whose pixels file ``pixels`` is damaged."""
        return DiffauditError(f"{self.location.name(pixels)}: {reason}. Shard {index} of {self.name} is damaged; "
                              f"re-run `diffaudit sample` with the same flags and --out {self.name} to repair it "
                              "(it is made again, bitwise the same)")

    def damaged_shards(self, *, full: bool = False) -> dict[int, str]:
        """Finished shards of a store in a folder whose pixels file is damaged -> what is wrong with it.

        Cheap by default, as a store may hold millions of images (hundreds of GB): each finished shard's
        pixels file is stat'ed and its ``.npy`` header read, and the file must be exactly as long as that
        header (uint8, the shard's shape as its sidecar and the manifest say) promises: a truncated file,
        or one with bytes added, is damaged. A same-size change of its bytes cannot be seen so; the
        :data:`DIGEST_FIELD` the sidecar records (stores written since it was added) tells it, at the cost
        of reading the pixels, so it is checked only for shards whose pixels file was modified after its
        sidecar was written (the sidecar is written last, so a shard as written never is: an edit in
        place, or a truncation, makes it so), or for every shard with ``full``. A copy of a store that does
        not keep modification times (``cp`` without ``-p``) may have some shards' digests checked on every
        resume: correct, just slower. A sidecar without a digest (an older store) has its size checked only.

        On an object store the pixels are objects uploaded whole and never rewritten, so nothing is
        looked at: {} (:meth:`read_shard` checks a shard as it reads it, there as here)."""
        if self._on_objects:
            return {}
        shards = self.location.path / "shards"
        out = {}
        done = self.completed()
        # reading every shard's pixels takes a while (a bar); the cheap check is done before a bar would show
        with progress_bar("check shards", len(done), unit="shard") if full else contextlib.nullcontext() as bar:
            for k in done:
                reason = self._damage(k, shards, full)
                if reason is not None:
                    out[k] = reason
                if bar is not None:
                    bar.advance(1)
        return out

    def _damage(self, k: int, shards: Path, full: bool) -> str | None:
        """What is wrong with finished shard ``k``'s pixels file in folder ``shards`` ("PATH: reason"), None
        when nothing is, or when its sidecar is another run's (:meth:`stray_shards`' business); see
        :meth:`damaged_shards`."""
        pl = self.plan(k)
        expected = (pl.stop - pl.start, *self.manifest["image_shape"])
        sidecar = shards / _shard_name(k, "json")
        pixels = shards / _shard_name(k, "npy")
        meta = None
        if not pixels.exists():  # an object store's shard-NNNNNN.<hex>.npy copied into a folder: its sidecar names it
            try:
                meta = self.location.read_json(self._sidecar(k))
                pixels = shards / self._pixels_name(k, meta)
            except StoreReadError:
                raise
            except DiffauditError:  # another run's or a damaged sidecar: stray_shards' business
                return None
        reason = _npy_damage(pixels, expected)
        if reason is None and (full or self._modified_after(pixels, sidecar)):
            try:
                meta = meta if meta is not None else self.location.read_json(self._sidecar(k))
            except StoreReadError:
                raise
            except DiffauditError:
                return None
            digest = meta.get(DIGEST_FIELD) if isinstance(meta, dict) else None
            if isinstance(digest, str) and pixels_digest(load_npy(pixels, mmap=True)) != digest:
                reason = f"its pixels' SHA-256 is not the {DIGEST_FIELD} its sidecar records (changed after it was written)"
        return None if reason is None else f"{pixels}: {reason}"

    @staticmethod
    def _modified_after(pixels: Path, sidecar: Path) -> bool:
        """Whether file ``pixels`` was modified after ``sidecar`` (False when either cannot be stat'ed)."""
        try:
            return pixels.stat().st_mtime_ns > sidecar.stat().st_mtime_ns
        except OSError:
            return False

    def unfinish_damaged(self, *, full: bool = False) -> list[int]:
        """Unfinish (:meth:`discard`) the finished shards whose pixels file is damaged (:meth:`damaged_shards`,
        with ``full`` every shard's digest read), with a warning naming each, so the next fill makes them
        again; returns their indices. Run when a store is resumed (:meth:`create`)."""
        damaged = self.damaged_shards(full=full)
        for k, reason in damaged.items():
            warning_line("sample", f"shard {k} of {self.name} is damaged ({reason}); it is treated as unfinished "
                                   "and made again")
        if damaged:
            self.discard(sorted(damaged))
        return sorted(damaged)

    def _local_copy(self, rel: str) -> Path:
        """A local file holding ``rel`` (``shards/...``) to memory-map: the file itself, or on an object store
        its copy in the local cache (:meth:`~diffaudit.store.location.ObjectFolder.mappable`)."""
        return self.location.mappable(rel, self.identity, self._entries.get(rel[len("shards/"):]))

    def _pixels_name(self, index: int, meta: dict[str, Any]) -> str:
        """The file in ``shards/`` holding shard ``index``'s pixels: the one its sidecar ``meta`` names (an
        object store's), else ``shard-NNNNNN.npy``; a name of another shard's, or a path, is refused."""
        name = meta.get("pixels", _shard_name(index, "npy"))
        m = _PIXELS_RE.fullmatch(name) if isinstance(name, str) else None
        if m is None or int(m.group(1)) != index:
            raise DiffauditError(f"{self.location.name(self._sidecar(index))}: its pixels {name!r} are not a file of "
                                 f"shard {index}; the sidecar was edited or damaged")
        return name

    def _check_same_run(self, index: int, meta: dict[str, Any]) -> None:
        """Refuse shard ``index`` when its sidecar ``meta`` is not what this store's manifest plans for it.

        A shard left by another run (e.g. of a ``--fresh`` killed part-way by an earlier version)
        records other sampler settings, or other ids, seeds or prompts; mixing it in would make a
        store whose generations come from two runs. The ids and prompts are compared in full; the
        seeds at the shard's two ends (each costs a hash; every seed comes from the manifest's run
        seed, which the sampler settings also record), so a read stays about as cheap as parsing
        the sidecar. A manifest without a run seed (a store made by hand) has its seeds unchecked.
        """
        pl, per, prompts = self.plan(index), int(self.manifest["per_prompt"]), self.manifest["prompts"]
        ids = [generation_id(*divmod(o, per)) for o in range(pl.start, pl.stop)]
        what = None
        if not isinstance(meta, dict):
            what = "contents (it is not a JSON object)"
        elif meta.get("sampler") != self.manifest.get("sampler"):
            what = "sampler settings"
        elif meta.get("ids") != ids:
            what = "generation ids"
        elif meta.get("prompts") != [prompts[o // per] for o in range(pl.start, pl.stop)]:
            what = "prompts"
        elif "seed" in self.manifest and not self._seeds_match(pl, meta.get("seeds")):
            what = "seeds"
        if what is not None:
            raise DiffauditError(
                f"{self.location.name(self._sidecar(index))}: shard {index} records other {what} than "
                f"{self.location.name(MANIFEST)}; "
                "it was made by another run (e.g. left by an interrupted --fresh). Delete the store "
                "(or re-run `diffaudit sample` with --fresh) to start over, or choose another --out"
            )

    def _seeds_match(self, plan: ShardPlan, seeds: Any) -> bool:
        """Whether ``seeds`` (a sidecar's) has the shard's length and its first and last seeds."""
        if not isinstance(seeds, list) or len(seeds) != plan.stop - plan.start:
            return False
        ends = {0: plan.start, len(seeds) - 1: plan.stop - 1}
        return all(seeds[k] == self.ordinal_info(o)[2] for k, o in ends.items())

    def stray_shards(self) -> list[int]:
        """Finished shards whose sidecar is not what this store's manifest plans (:meth:`_check_same_run`), or
        cannot be read: another run's, written into the store while it was made anew (an object store has
        no lock, so a command still writing when ``--fresh`` deleted its store can add a shard after), lying
        beyond the manifest's shards, or naming pixels that are gone."""
        self.check_still_this_store()  # judged against the manifest the store holds now, never a replaced one
        listed = self._listed_sidecars()
        stray = [k for k in listed if k >= self.n_shards]  # e.g. of a run with more shards, landing after --fresh
        inside = [k for k in listed if k < self.n_shards]
        sidecars = [self._sidecar(k) for k in inside]
        if self._on_objects:
            metas = self.location.read_json_many(sidecars)  # concurrently: thousands of small objects
        else:
            metas = {}
            for rel in sidecars:
                try:
                    metas[rel] = self.location.read_json(rel)
                except DiffauditError as exc:  # missing or not JSON (a stray), or a StoreReadError (raised below)
                    metas[rel] = exc
        for k, rel in zip(inside, sidecars):
            meta = metas[rel]
            if isinstance(meta, StoreReadError):  # the store failed: nothing is judged (nor discarded) on it
                raise meta
            try:
                if isinstance(meta, DiffauditError):
                    raise meta
                self._check_same_run(k, meta)
                pixels = self._pixels_name(k, meta)
            except DiffauditError:
                stray.append(k)
                continue
            if not self._pixels_exist(pixels):  # a sidecar whose pixels are gone: unfinished
                stray.append(k)
        return sorted(stray)

    def _pixels_exist(self, name: str) -> bool:
        """Whether the pixels file ``name`` in ``shards/`` is there (on an object store, by the last listing)."""
        if self._on_objects:
            return name in self._entries
        return (self.location.path / "shards" / name).is_file()

    def discard(self, indices: list[int]) -> None:
        """Unfinish shards ``indices``: their sidecars first (a shard without one is unfinished), then pixels.

        Only the pixels each sidecar names are removed (a sidecar that cannot be read leaves its pixels as
        an unused file): on an object store others of the same shard may be another writer's, still
        uploading, whose sidecar is created next."""
        pixels = []
        for k in indices:
            try:
                meta = self.location.read_json(self._sidecar(k))
                pixels.append(f"shards/{self._pixels_name(k, meta)}" if isinstance(meta, dict) else None)
            except DiffauditError:
                pixels.append(None)
        self.location.remove([self._sidecar(k) for k in indices])
        self.location.remove([p for p in pixels if p is not None])

    def check_still_this_store(self) -> None:
        """Refuse to go on when the manifest in the store is no longer this store's: another command's
        ``--fresh`` replaced the store meanwhile (an object store has no lock to prevent it; a replacement
        between this look and what follows it is still possible, and the next `sample` on the store
        finds the shards it leaves, :meth:`stray_shards`)."""
        try:
            found = self.location.read_json(MANIFEST)
        except StoreReadError:
            raise
        except DiffauditError:  # gone, or not JSON: replaced (or being replaced)
            found = None
        if found != self.manifest:
            raise DiffauditError(f"{self.name} was replaced by another command meanwhile (its {MANIFEST} is no longer "
                                 "the one this command made or resumed); nothing more is written. Re-run to resume the "
                                 "store as it is now, or choose another --out")

    def iter_shards(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for k in self.completed():
            yield self.read_shard(k)

    def to_dataset(self, *, require_complete: bool = True, lazy: bool = False) -> ImageDataset:
        """All finished generations as a dataset: keys are generation ids, captions the prompts.

        With ``lazy`` the images are a :class:`~diffaudit.data.ShardedImages` over the memory-mapped
        shards: only the rows a command indexes are read, so memory stays bounded by its block size
        (2^20 CIFAR-sized generations are 3.2 GB on disk, never all in memory).
        """
        if require_complete and self.pending():
            unfinished = f"{self.name}: {len(self.pending())} of {self.n_shards} shards are unfinished"
            pid = writer(self.path) if self.path is not None else None
            if pid is not None:
                raise DiffauditError(f"{unfinished}: `diffaudit sample` (pid {pid}) is still writing it; wait for it to "
                                     "finish, then run this again")
            raise DiffauditError(f"{unfinished}; re-run `diffaudit sample` to finish")
        imgs, keys, prompts = [], [], []
        for k in self.completed():
            images, meta, path = self._read(k, mmap=lazy)  # checks the shard against its sidecar
            imgs.append(path if lazy else images)
            keys += meta["ids"]
            prompts += meta["prompts"]
        if not imgs:
            raise DiffauditError(f"{self.name} holds no finished generations")
        conditional = any(p is not None for p in prompts)
        images = ShardedImages(imgs, name=self.name) if lazy else np.concatenate(imgs)
        return ImageDataset(images, keys, captions=[str(p) for p in prompts] if conditional else None, source=self.name)
