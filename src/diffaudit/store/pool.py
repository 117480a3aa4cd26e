"""Several sample stores read as one set of generations (a pool).

The paper's untargeted extraction from CIFAR-10 models (Carlini et al. 2023, §5.1) samples 2^16 images
from each of 16 models (2^20 in all) and counts the training images extracted over all of them: each
training image once, at its first generation. One store holds one model's generations, so that count
needs the stores read together. A pool is a folder holding ``pool.json``, the list of its member stores;
wherever ``--samples`` is read (``verify``, ``extract``, ``report``, Ray workers), a pool reads as the
members' generations one store after another, member 0 first, so "first generation" means the first
member that made it.

Ids: generation ``p<P>-i<I>`` of member ``k`` is ``m<k>:p<P>-i<I>`` (:func:`pooled_id`), since every
store has a ``p0-i0``. Like a store's own ids, these are positions and name no file.

A pool copies nothing: its members are read where they lie, recorded as absolute paths or object-store
URLs (a relative path written by hand is read from the pool's folder), so stores moved elsewhere are
pooled again. Each member's identity (:attr:`SampleStore.identity`) is recorded when it is pooled, and a
member sampled again since is refused rather than read as other generations under the same name; the
pool's identity (:attr:`SamplePool.identity`) is a digest of its members'.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import read_json
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.sharded import ShardedImages
from diffaudit.store.location import is_object_url
from diffaudit.store.sample_store import SampleStore

#: The file that makes a folder a pool: ``{"schema_version": 1, "members": [store, ...], "identities": [...]}``
#: (``identities``: each member's :attr:`SampleStore.identity` when pooled; a pool written without them is
#: read without that check).
POOL_FILE = "pool.json"
#: A pooled generation id: member ``k``'s generation ``id`` is ``m<k>:<id>``.
POOLED_ID = re.compile(r"m(\d+):(.+)")
#: The fewest members a pool has (one store is read as itself).
MIN_MEMBERS = 2


def pooled_id(member: int, generation_id: str) -> str:
    """The id of member ``member``'s generation ``generation_id`` in a pool: ``m<member>:<id>``."""
    return f"m{member}:{generation_id}"


def split_pooled_id(pooled: str) -> tuple[int, str] | None:
    """(member, the generation's id in its store) of a pooled id; None for any other id."""
    m = POOLED_ID.fullmatch(pooled)
    return None if m is None else (int(m.group(1)), m.group(2))


class SamplePool:
    """A pool (see the module): ``path`` its folder, ``members`` its stores' paths or URLs, in order."""

    def __init__(self, path: str | Path, members: Sequence[str], identities: Sequence[str] | None = None):
        self.path = Path(path)
        self.members = [m if is_object_url(m) or Path(m).is_absolute() else str(self.path / m) for m in map(str, members)]
        self.identities = None if identities is None else [str(i) for i in identities]

    @staticmethod
    def is_pool(spec: str | Path) -> bool:
        """Whether ``spec`` is a local folder holding :data:`POOL_FILE`."""
        if is_object_url(str(spec)):
            return False
        try:
            return (Path(spec) / POOL_FILE).is_file()
        except OSError:  # a name too long, a folder this user may not enter: not a pool
            return False

    @classmethod
    def open(cls, spec: str | Path) -> "SamplePool":
        """The pool at ``spec``; its file checked (a list of at least :data:`MIN_MEMBERS` strings)."""
        record = read_json(Path(spec) / POOL_FILE)
        members = record.get("members") if isinstance(record, dict) else None
        identities = record.get("identities") if isinstance(record, dict) else None
        if (not isinstance(members, list) or len(members) < MIN_MEMBERS
                or not all(isinstance(m, str) and m for m in members)
                or not (identities is None or (isinstance(identities, list) and len(identities) == len(members)))):
            raise DiffauditError(f"{Path(spec) / POOL_FILE}: not a pool of sample stores (expected \"members\": a list of "
                                 f"at least {MIN_MEMBERS} store paths, as `diffaudit pool` writes)")
        return cls(spec, members, identities)

    def stores(self) -> list[SampleStore]:
        """The member stores, opened once per pool object; a member that is gone, no store, or sampled again
        since it was pooled (another identity than the one recorded) is refused, naming it and what to do."""
        return self._opened

    @functools.cached_property
    def _opened(self) -> list[SampleStore]:
        stores = [self._member(k, SampleStore.open, member) for k, member in enumerate(self.members)]
        for k, store in enumerate(stores):
            if self.identities is not None and store.identity != self.identities[k]:
                raise DiffauditError(f"pool {self.path}: member {k} ({self.members[k]}) holds other generations than "
                                     f"when it was pooled (store identity {self.identities[k]}, now {store.identity}: "
                                     f"sampled again since); pool the stores again: {self._again()}")
        return stores

    def _member(self, k: int, read, *args, **kwargs):
        """``read(*args, **kwargs)`` for member ``k``, its error said as that member's."""
        try:
            return read(*args, **kwargs)
        except DiffauditError as exc:
            raise DiffauditError(f"pool {self.path}: member {k} ({self.members[k]}) cannot be read: {exc}; a pool reads "
                                 "its stores where they were pooled: pool them again where they are now (`diffaudit "
                                 f"pool --samples STORE... --out {self.path} --fresh`)") from None

    def _again(self) -> str:
        """The command that pools the members again into this folder."""
        return f"diffaudit pool --samples {' '.join(self.members)} --out {self.path} --fresh"

    @property
    def identity(self) -> str:
        """``pool:`` and a digest of the members' identities in order (:attr:`SampleStore.identity`: their
        generations, wherever they lie)."""
        body = json.dumps([s.identity for s in self.stores()]).encode("utf-8")
        return "pool:" + hashlib.sha256(body).hexdigest()[:16]

    def sampler(self) -> dict[str, Any]:
        """The sampler settings every member records alike (``kind``, ``num_classes``), {} where they differ."""
        samplers = [s.manifest.get("sampler") if isinstance(s.manifest.get("sampler"), dict) else {} for s in self.stores()]
        return {key: samplers[0].get(key) for key in ("kind", "num_classes")
                if all(s.get(key) == samplers[0].get(key) for s in samplers)}

    def to_dataset(self, *, lazy: bool = False) -> ImageDataset:
        """Every member's finished generations, member 0 first, ids :func:`pooled_id` (each member must be
        finished, as a store read alone must be). With ``lazy`` the images stay memory-mapped shards."""
        check_alike(self.stores(), self.members, where=f"pool {self.path}")
        parts = [self._member(k, store.to_dataset, lazy=lazy) for k, store in enumerate(self.stores())]
        name = f"pool {self.path}"
        images = (ShardedImages.joined([p.images for p in parts], name=name) if lazy
                  else np.concatenate([np.asarray(p.images) for p in parts]))
        keys = [pooled_id(k, key) for k, p in enumerate(parts) for key in p.keys]
        captions = None if parts[0].captions is None else [c for p in parts for c in p.captions]
        return ImageDataset(images, keys, captions=captions, source=name)


def check_alike(stores: Sequence[SampleStore], names: Sequence[str], *, where: str) -> None:
    """Refuse member ``stores`` (named ``names``) whose generations cannot be read as one set, as their
    manifests say, before any shard is read: another image shape (H, W, C), or prompts beside none (a
    conditional model's generations pooled with an unconditional one's)."""
    shapes = [tuple(int(x) for x in s.manifest["image_shape"]) for s in stores]
    conditional = [any(p is not None for p in s.manifest["prompts"]) for s in stores]
    for k in range(1, len(stores)):
        if shapes[k] != shapes[0]:
            raise DiffauditError(f"{where}: {names[k]} holds {shapes[k]} (H, W, C) generations, {names[0]} "
                                 f"{shapes[0]}; a pool's members are generations of one size")
        if conditional[k] != conditional[0]:
            which, other = (names[k], names[0]) if conditional[k] else (names[0], names[k])
            raise DiffauditError(f"{where}: {which} was generated from prompts (or class indices) and {other} "
                                 "without: a pool's members are all conditional or all unconditional")
