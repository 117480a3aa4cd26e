"""Near-duplicate groups of a training set, and deduplication (paper Sections 4.2.1 and 7).

Pipeline: embed every image in bounded batches (:mod:`diffaudit.defenses.embedders`), find every
pair at similarity ≥ threshold with faiss (:mod:`diffaudit.defenses.neighbours`: the *edges*).

Two things are built from the edges, and they differ on purpose:

- *Groups* (reporting): connected components of size ≥ 2 (copies of copies are one group).
  Per image, ``duplicate_count`` = size of its group − 1 (0 for a unique image; what ``prompts
  --duplicates`` ranks captions by); ``neighbour_count`` = the number of images directly at or
  above the threshold. ``result.json`` lists the groups, and for each the members it keeps.
- *The keep list* (deduplication: ``keep.json``, ``train --dedup``, ``--write-deduped``,
  ``n_removed``): greedy in index order, as imagededup's ``get_files_to_remove`` (which the paper
  used): image i is kept unless an already-kept image is its near-duplicate
  (:func:`~diffaudit.defenses.neighbours.greedy_keep`). Every removed image has a kept
  near-duplicate (recorded in ``keep.json`` as ``removed_duplicate_of``) and no two kept images are
  near-duplicates. A group is therefore not reduced to one image when it is a chain a~b~c whose ends
  are not near-duplicates (a and c are both kept).

The paper removed 5,275 CIFAR-10 near-duplicates at similarity > 0.85 and extraction fell from
1,280 to 986 images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import load_npy, read_json, save_npy_atomic, save_npz_atomic, write_json_atomic
from diffaudit.core.outdir import recorded_settings
from diffaudit.core.progress import progress_bar
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.options import data_flags
from diffaudit.defenses.embedders import Embedder
from diffaudit.defenses.neighbours import (EdgeAccumulator, Edges, build_index, check_search_options, connected_groups,
                                           greedy_keep, kept_partner, search_edges)

#: How the keep list is chosen from the edges (recorded in ``result.json`` and ``keep.json``).
KEEP_RULE = "greedy"


@dataclass
class DedupResult:
    """Near-duplicate groups of N images, and the images deduplication keeps.

    Attributes:
        n: number of images.
        threshold: similarity at or above which two images are joined.
        edges: the pairs found, with their similarity (treat as read-only: :attr:`keep_mask` is
            computed from them once).
        groups: connected components (member index arrays, size ≥ 2), ordered by smallest member:
            for reporting (``duplicate_count``, ``result.json``), not what deduplication removes.
        embedder: the embedder's settings.
        index: the faiss index kind used.
    """

    n: int
    threshold: float
    edges: Edges
    groups: list[np.ndarray]
    embedder: dict[str, Any] = field(default_factory=dict)
    index: str = "flat"

    @property
    def duplicate_count(self) -> np.ndarray:
        """int64 (N,): how many other images share the image's group."""
        out = np.zeros(self.n, dtype=np.int64)
        for g in self.groups:
            out[g] = len(g) - 1
        return out

    @property
    def neighbour_count(self) -> np.ndarray:
        """int64 (N,): how many images are directly at or above the threshold."""
        return np.bincount(self.edges.pairs.reshape(-1), minlength=self.n).astype(np.int64)

    @cached_property
    def keep_mask(self) -> np.ndarray:
        """bool (N,): the images deduplication keeps (greedy in index order, :func:`greedy_keep`)."""
        return greedy_keep(self.n, self.edges.pairs)

    def keep_indices(self) -> np.ndarray:
        """Sorted int64 indices deduplication keeps: every image that no earlier kept image duplicates."""
        return np.flatnonzero(self.keep_mask)

    def removed_indices(self) -> np.ndarray:
        """Sorted int64 indices deduplication removes; each has a kept near-duplicate (:meth:`duplicate_of`)."""
        return np.flatnonzero(~self.keep_mask)

    def duplicate_of(self) -> np.ndarray:
        """int64 (N,): for a removed image, its most similar kept near-duplicate; -1 for a kept image."""
        return kept_partner(self.keep_mask, self.edges)

    def result_fields(self, keys: list[str]) -> dict[str, Any]:
        """The command's own ``result.json`` fields (``groups`` with the members each keeps, per-image
        counts, totals; ``n_removed`` counts the keep list's removals, not the group members)."""
        group_sim = _group_similarity(self.edges, self.groups)
        keep = self.keep_mask
        return {
            "embedder": self.embedder,
            "threshold": self.threshold,
            "index": self.index,
            "n_images": self.n,
            "n_groups": len(self.groups),
            "n_in_groups": int(sum(len(g) for g in self.groups)),
            "keep_rule": KEEP_RULE,
            "n_removed": int(self.n - keep.sum()),
            "n_edges": len(self.edges),
            "groups": [
                {"members": g.tolist(), "keys": [keys[i] for i in g], "size": len(g), "kept": g[keep[g]].tolist(),
                 "min_edge_similarity": s}
                for g, s in zip(self.groups, group_sim)
            ],
            "duplicate_count": self.duplicate_count.tolist(),
            "neighbour_count": self.neighbour_count.tolist(),
        }


def _group_similarity(edges: Edges, groups: list[np.ndarray]) -> list[float]:
    """Smallest edge similarity inside each group (how loose its weakest link is)."""
    if not groups:
        return []
    owner = np.full(int(max(g.max() for g in groups)) + 1, -1, dtype=np.int64)
    for gi, g in enumerate(groups):
        owner[g] = gi
    out = np.full(len(groups), np.inf)
    if len(edges):
        gi = owner[edges.pairs[:, 0]]
        np.minimum.at(out, gi, edges.similarity)
    return [round(float(v), 6) for v in out]


def embed_all(embedder: Embedder, images: np.ndarray, *, batch_size: int = 4096, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Plain embeddings (view 0) of every image, batch by batch.

    With ``cache_dir``, each batch is saved as ``chunk-NNNNNN.npy`` as soon as it is done and reused
    by a re-run (resume after a kill); the chunk size is part of the caller's settings.
    """
    n = len(images)
    parts = []
    cache = Path(cache_dir) if cache_dir is not None else None
    with progress_bar("embed", n, unit="img") as bar:
        for c, s in enumerate(range(0, n, batch_size)):
            path = None if cache is None else cache / f"chunk-{c:06d}.npy"
            if path is not None and path.exists():
                part = load_npy(path)
            else:
                part = embedder.embed(np.asarray(images[s:s + batch_size]))
                if path is not None:
                    save_npy_atomic(path, part)
            parts.append(part)
            bar.advance(len(part))
    if not parts:
        raise DiffauditError("no images to embed (the dataset is empty)")
    return np.concatenate(parts)


#: The similarities each metric gives (:mod:`diffaudit.defenses.embedders`): cosine may be negative.
SIMILARITY_RANGE = {"cosine": (-1.0, 1.0), "hamming": (0.0, 1.0)}


def check_threshold(threshold: float, metric: str) -> float:
    """``threshold`` as a float, when it is a finite similarity the ``metric`` can give; else a
    :class:`DiffauditError`. Called before the output folder records it (a NaN is not even JSON)."""
    lo, hi = SIMILARITY_RANGE.get(metric, (-1.0, 1.0))
    th = float(threshold)
    if not (math.isfinite(th) and lo <= th <= hi):
        raise DiffauditError(f"--threshold must be a finite similarity in [{lo:g}, {hi:g}] ({metric} similarity, "
                             f"1 = identical); got {threshold}")
    return th


def find_duplicates(
    images: np.ndarray,
    embedder: Embedder,
    *,
    threshold: float | None = None,
    index: str = "flat",
    k: int = 64,
    nlist: int | None = None,
    nprobe: int = 16,
    batch_size: int = 4096,
    seed: int = 0,
    base: np.ndarray | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> DedupResult:
    """Near-duplicate groups of ``images`` (uint8 (N, H, W, C); a ``np.memmap`` keeps memory bounded).

    Args:
        embedder: any registered embedder; its ``max_shift`` adds translated query views.
        threshold: similarity at or above which two images are duplicates, finite and within the
            metric's range (:func:`check_threshold`; default: the embedder's calibrated ``default_threshold``).
        index: ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate, for millions of images).
        k: neighbours per query for ``hnsw`` (≥ 1).
        nlist, nprobe: IVF cells (≥ 1; default 4·sqrt(N), at most N/39: :func:`~diffaudit.defenses.neighbours.ivf_cells`) and cells searched (≥ 1).
        batch_size: images embedded / queried at once.
        seed: seed of the IVF k-means.
        base: precomputed plain embeddings (N, ...), e.g. from :func:`embed_all`.
        cache_dir: where :func:`embed_all` keeps its chunks.
    """
    th = check_threshold(embedder.default_threshold if threshold is None else threshold, embedder.metric)
    check_search_options(k=k, nlist=nlist, nprobe=nprobe)
    n = len(images)
    if base is None:
        base = embed_all(embedder, images, batch_size=batch_size, cache_dir=cache_dir)
    if len(base) != n:
        raise DiffauditError(f"{len(base)} embeddings for {n} images")
    idx = build_index(base, metric=embedder.metric, dim=embedder.dim, kind=index, nlist=nlist, nprobe=nprobe, seed=seed)
    acc = EdgeAccumulator()
    with progress_bar("search", n, unit="img") as bar:
        for s in range(0, n, batch_size):
            ids = np.arange(s, min(n, s + batch_size))
            views = [base[s:s + batch_size]] if embedder.max_shift == 0 else embedder.embed_views(np.asarray(images[s:s + batch_size]))
            for v in views:
                search_edges(idx, v, ids, acc, metric=embedder.metric, dim=embedder.dim, threshold=th, kind=index, k=k)
            bar.advance(len(ids))
    edges = acc.result()
    del acc  # its copy of the edges
    return DedupResult(n=n, threshold=th, edges=edges, groups=connected_groups(n, edges.pairs),
                       embedder=embedder.settings(), index=index)


def write_keep_list(path: str | os.PathLike, dataset: ImageDataset, result: DedupResult) -> Path:
    """``keep.json``: the keys and indices training keeps (``diffaudit train --dedup``), those removed
    (``removed_keys``, ``removed_indices``) and, aligned with them, the kept near-duplicate each removed
    image was dropped for (``removed_duplicate_of``: keys)."""
    keep, removed = result.keep_indices(), result.removed_indices()
    partner = result.duplicate_of()[removed]
    return write_json_atomic(path, {
        "source": dataset.source,
        "n_dataset": len(dataset),
        "keep_rule": KEEP_RULE,
        "keys": [dataset.keys[i] for i in keep],
        "indices": keep.tolist(),
        "removed_keys": [dataset.keys[i] for i in removed],
        "removed_indices": removed.tolist(),
        "removed_duplicate_of": [dataset.keys[i] for i in partner],
    })


def load_keep_list(path: str | os.PathLike, dataset: ImageDataset, *, data_spec: str | None = None,
                   data_options: dict[str, Any] | None = None) -> np.ndarray:
    """Indices of ``dataset`` kept by a dedup run's ``keep.json`` (matched by key, so a re-ordered
    load of the same data still works): every example except the keep list's ``removed_keys``.
    ``data_spec`` and ``data_options``: how the caller's ``--data`` was given, for the error message.

    Raises:
        DiffauditError: the file is not a keep list, names kept keys the dataset lacks, or the dataset
            holds keys in neither its ``keys`` nor its ``removed_keys`` (it was made for other data).
    """
    return keep_list_selection(path, dataset, data_spec=data_spec, data_options=data_options)[0]


def keep_list_selection(path: str | os.PathLike, dataset: ImageDataset, *, data_spec: str | None = None,
                        data_options: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, dropped): sorted int64 indices of ``dataset`` that a ``keep.json`` keeps and removes.

    Every example of ``dataset`` must be named by the keep list (in ``keys`` or ``removed_keys``):
    one it does not name was never checked for duplicates, so the list was made for other data.
    ``data_spec`` and ``data_options`` (the loader options, as ``cli.common.data_options``): how the
    caller's ``--data`` was given, so that the error names the options that differ (a keep list of
    all digits used with ``--subset 64`` names keys the subset lacks, though they are digits).
    """
    rec = read_json(path)
    if not isinstance(rec, dict) or "keys" not in rec:
        raise DiffauditError(f"{path}: not a keep list (expected `keys`; write one with `diffaudit dedup`)")
    pos = dataset.index_of()
    here = data_flags(data_spec, data_options) if data_spec is not None else (dataset.source or "the dataset")
    missing = [k for k in rec["keys"] if k not in pos]
    if missing:
        raise _other_data_error(path, rec, dataset, here, f"{len(missing)} of its {len(rec['keys'])} kept keys are "
                                f"not in --data {here} (first: {missing[0]!r})")
    removed = set(rec.get("removed_keys") or [])
    named = removed | set(rec["keys"])
    unnamed = [k for k in dataset.keys if k not in named]
    if unnamed:
        raise _other_data_error(path, rec, dataset, here, f"{len(unnamed)} of the {len(dataset)} examples of --data "
                                f"{here} are not in its kept or removed keys (first: {unnamed[0]!r})")
    dropped = np.asarray(sorted(pos[k] for k in removed if k in pos), dtype=np.int64)
    return np.setdiff1d(np.arange(len(dataset), dtype=np.int64), dropped), dropped


def _keep_list_origin(path: str | os.PathLike, rec: dict[str, Any]) -> str:
    """What a keep list was made on: ``--data SPEC OPTIONS`` from the settings.json of the dedup folder
    that holds it, else the ``source`` it records (a keep list moved elsewhere)."""
    settings = recorded_settings(Path(path).parent, "dedup") or {}
    if isinstance(settings.get("data"), str):
        options = settings.get("data_options")
        text = data_flags(settings["data"], options if isinstance(options, dict) else None)
        return f"--data {text}" + ("" if text != settings["data"] else " (no data options)")
    return str(rec.get("source") or "another dataset")


def _other_data_error(path, rec: dict[str, Any], dataset: ImageDataset, here: str, detail: str) -> DiffauditError:
    """The error for a keep list made on other data than ``dataset`` (``here``: how --data was given)."""
    n_kept, n_removed = len(rec["keys"]), len(rec.get("removed_keys") or [])
    return DiffauditError(
        f"{path} was made on other data than --data {here}: {detail}. The keep list names {n_kept + n_removed} examples "
        f"({n_kept} kept, {n_removed} removed) of {_keep_list_origin(path, rec)}; --data {here} holds {len(dataset)}. "
        f"Make the keep list with the same --data and data options as training: `diffaudit dedup --data {here} --out DIR`, "
        "then pass --dedup DIR/keep.json")


def copies_of_trained(path: str | os.PathLike, dataset: ImageDataset, dropped: np.ndarray,
                      trained: np.ndarray) -> np.ndarray:
    """The ``dropped`` indices (sorted int64) whose kept near-duplicate is among ``trained``: the images
    a model trained on ``trained`` holds copies of (a membership column intersected with the keep list
    trains on fewer than the list keeps). Each dropped image is judged by the kept near-duplicate it was
    dropped for (its most similar); a keep list without ``removed_duplicate_of`` (made before it was
    recorded) gives every dropped index."""
    rec = read_json(path)
    partners = rec.get("removed_duplicate_of")
    if not isinstance(partners, list) or len(partners) != len(rec.get("removed_keys") or []):
        return np.asarray(dropped, dtype=np.int64)
    pos = dataset.index_of()
    trained_set = set(np.asarray(trained, dtype=np.int64).tolist())
    copies = [pos[k] for k, partner in zip(rec["removed_keys"], partners)
              if k in pos and partner in pos and pos[partner] in trained_set]
    return np.asarray(sorted(copies), dtype=np.int64)


def write_deduped_npz(path: str | os.PathLike, dataset: ImageDataset, keep: np.ndarray) -> Path:
    """The kept images as an ``.npz`` (``images``, optional ``labels``/``captions``, and the original ``keys``).

    The ``keys`` array is a record of where each image came from: loaders name an npz's examples
    ``npz:<index>`` (Conventions: ids), so a model trained on this file is audited against this file.
    To keep the original ids, train on the original data with ``train --dedup keep.json``.
    """
    sub = dataset.subset(keep)
    arrays: dict[str, np.ndarray] = {"images": sub.images, "keys": np.asarray(sub.keys, dtype=str)}
    if sub.labels is not None:
        arrays["labels"] = sub.labels
    if sub.captions is not None:
        arrays["captions"] = np.asarray(sub.captions, dtype=str)
    return save_npz_atomic(path, **arrays)
