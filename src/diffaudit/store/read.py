"""Read any ``--samples`` input as an :class:`ImageDataset`.

A sample store (folder with ``manifest.json``), a pool of stores (:mod:`~diffaudit.store.pool`), an image folder, WebDataset shards, or an ``.npz``
with uint8 ``images`` and an optional per-image ``prompts`` array. Prompts come back in
``captions`` (None for unconditional samples).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.identity import file_identity
from diffaudit.core.npz_arrays import read_npz_array
from diffaudit.data import load_dataset
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.digest import dataset_digest
from diffaudit.data.npz import string_list
from diffaudit.store.location import MANIFEST, is_object_url
from diffaudit.store.pool import SamplePool
from diffaudit.store.sample_store import SampleStore


def samples_identity(spec: str, samples: ImageDataset | None = None) -> str | None:
    """What, beside its path, tells whether ``spec`` still holds the same generations when a command
    resumes (``verify`` and ``extract`` record it in their settings, so cached neighbours of other
    generations are never reused).

    A sample store (a folder or an object-store URL): :attr:`SampleStore.identity`, a digest of its
    manifest without the model folder's path. A pool: :attr:`SamplePool.identity`, of its members'.
    A file: a digest of its contents, or its size and modification time above
    :data:`~diffaudit.core.identity.HASHED_FILE_BYTES`. An image folder or shards: the
    :func:`~diffaudit.data.digest.dataset_digest` of ``samples`` (``spec`` as read; None when it is not given).
    """
    if SampleStore.is_store(spec):
        return SampleStore.open(spec).identity
    if SamplePool.is_pool(spec):
        return SamplePool.open(spec).identity
    path = Path(spec)
    if path.is_file():
        return file_identity(path)
    return None if samples is None else "data:" + dataset_digest(samples)


def _sampler(spec: str) -> dict[str, Any]:
    """The sampler settings a sample store's manifest records (a pool: those all its members record alike); {} for
    any other input, or a store that records none."""
    if SamplePool.is_pool(spec):
        return SamplePool.open(spec).sampler()
    if not SampleStore.is_store(spec):
        return {}
    sampler = SampleStore.open(spec).manifest.get("sampler")
    return sampler if isinstance(sampler, dict) else {}


def sampler_kind(spec: str) -> str | None:
    """The kind of model a sample store's generations came from, as its manifest records it
    (``pixel`` or ``stable-diffusion``); None for any other input, or a store that records none."""
    kind = _sampler(spec).get("kind")
    return kind if isinstance(kind, str) else None


def sampler_classes(spec: str) -> int | None:
    """How many classes the class-conditional model that made a sample store's generations has (its prompts
    are class indices); None for any other model or input."""
    n = _sampler(spec).get("num_classes")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def read_samples(spec: str, *, lazy: bool = False, **load_options) -> ImageDataset:
    """``spec`` as a dataset; a sample store (or a pool of them) with ``lazy`` is memory-mapped (images: ShardedImages),
    every other input is decoded into memory (load_options: those of ``load_dataset``)."""
    if SampleStore.is_store(spec):
        return SampleStore.open(spec).to_dataset(lazy=lazy)
    if SamplePool.is_pool(spec):
        return SamplePool.open(spec).to_dataset(lazy=lazy)
    if is_object_url(spec):
        raise DiffauditError(f"{spec} is not a sample store (no {MANIFEST} there); from an object store diffaudit reads "
                             "sample stores only (`diffaudit sample --out URL` writes one)")
    ds = load_dataset(spec, **load_options)
    if str(spec).endswith(".npz") and Path(spec).is_file():
        with np.load(spec, allow_pickle=False) as z:
            if "prompts" in z.files:
                try:
                    prompts = read_npz_array(z, spec, "prompts")  # declared size checked before allocating
                except ValueError as exc:  # an object array: reading it would unpickle (and could run code)
                    raise DiffauditError(
                        f"{spec}: array 'prompts' is an object array, which diffaudit never loads (unpickling can run "
                        f"code); store prompts as a fixed-width string array, e.g. np.array(prompts, dtype=str) ({exc})"
                    ) from None
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise DiffauditError(f"{spec}: array 'prompts' is damaged or truncated ({exc})") from None
                if load_options.get("subset"):
                    raise DiffauditError(f"{spec}: --subset with per-image prompts is not supported")
                ds.captions = string_list(prompts, spec, "prompts", len(ds))
    return ds
