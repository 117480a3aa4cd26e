"""Read any ``--samples`` input as an :class:`ImageDataset`.

A sample store (folder with ``manifest.json``), an image folder, WebDataset shards, or an ``.npz``
with uint8 ``images`` and an optional per-image ``prompts`` array. Prompts come back in
``captions`` (None for unconditional samples).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.dataset import ImageDataset
from diffaudit.store.sample_store import SampleStore


def read_samples(spec: str, *, lazy: bool = False, **load_options) -> ImageDataset:
    """``spec`` as a dataset; a sample store with ``lazy`` is memory-mapped (images: ShardedImages),
    every other input is decoded into memory (load_options: those of ``load_dataset``)."""
    if SampleStore.is_store(spec):
        return SampleStore.open(spec).to_dataset(lazy=lazy)
    ds = load_dataset(spec, **load_options)
    if str(spec).endswith(".npz") and Path(spec).is_file():
        with np.load(spec, allow_pickle=False) as z:
            if "prompts" in z.files:
                try:
                    prompts = z["prompts"]
                except ValueError as exc:  # an object array: reading it would unpickle (and could run code)
                    raise DiffauditError(
                        f"{spec}: array 'prompts' is an object array, which diffaudit never loads (unpickling can run "
                        f"code); store prompts as a fixed-width string array, e.g. np.array(prompts, dtype=str) ({exc})"
                    ) from None
                if len(prompts) != len(ds):
                    raise DiffauditError(f"{spec}: {len(prompts)} prompts for {len(ds)} images")
                if load_options.get("subset"):
                    raise DiffauditError(f"{spec}: --subset with per-image prompts is not supported")
                ds.captions = [str(p) for p in prompts]
    return ds
