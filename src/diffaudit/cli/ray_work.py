"""The nearest-neighbour searches of `extract` and `verify` on a Ray cluster (``--ray``; issue 8).

The searches are already resumable in chunks of queries, one atomic ``knn-<lo>-<hi>.npz`` per chunk
(:mod:`diffaudit.attacks.extraction.knn_cache`). With ``--ray`` the pending chunks are computed by
worker actors (:func:`~diffaudit.core.ray_pool.run_parts`), each reading the same generations and
training images on its node (:class:`ImagesRecipe`) and writing its chunks into the command's
``--out`` on a shared filesystem; the command then reads every chunk as it reads those of an
interrupted run. The search is exact, so the chunks, and the result, are those one process writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import make_private_dir
from diffaudit.core.progress import Timer, stage_line


def data_recipe(spec: str, identity: str, options: dict[str, Any], data_cache: str | None,
                pick=None) -> "ImagesRecipe":
    """The recipe of a dataset ``spec`` loaded with ``options``: a built-in CIFAR-10 name carries the
    folder this node found its shards in (``--cifar-root``, else ``$DIFFAUDIT_CIFAR10`` and the usual
    places), since a worker's node may not have that variable set."""
    from diffaudit.data.builtin import BUILTIN_NAMES, find_cifar10_root

    options = dict(options)
    if spec in BUILTIN_NAMES and str(spec).startswith("cifar10") and options.get("cifar_root") is None:
        options["cifar_root"] = str(find_cifar10_root(None).resolve())
    return ImagesRecipe("data", spec, identity, options=options, data_cache=data_cache,
                        pick=None if pick is None else tuple(int(i) for i in pick))


@dataclass(frozen=True)
class ImagesRecipe:
    """How a worker reads, on its own node, the images the command read.

    Attributes:
        kind: ``generations`` (``--samples``: a store, folder, shards or .npz) or ``data`` (a dataset
            spec loaded with ``options``, through ``data_cache`` when set);
        spec: the path or built-in name; identity: what the command found there before ``pick``
            (:func:`~diffaudit.store.samples_identity` of generations, the
            :func:`~diffaudit.data.digest.dataset_digest` of data), compared by the worker;
        options: the loader's keyword arguments (``data``); data_cache: ``--data-cache`` (``data``);
        pick: the positions kept after loading (``--from-extract`` medoids, the baseline's equal-size
            pick), None for all.
    """

    kind: str
    spec: str
    identity: str | None
    options: dict[str, Any] = field(default_factory=dict)
    data_cache: str | None = None
    pick: tuple[int, ...] | None = None

    def load(self):
        """The images as the command read them; :class:`DiffauditError` when the worker's node holds
        other ones (other files at the same path, a store sampled anew) or cannot read them."""
        if self.kind == "generations":
            from diffaudit.attacks.extraction.inputs import read_generations
            from diffaudit.store import samples_identity

            ds = read_generations(self.spec)
            found = samples_identity(self.spec, ds)
        elif self.kind == "data":
            from diffaudit.data import load_dataset
            from diffaudit.data.decoded import load_dataset_to_disk
            from diffaudit.data.digest import dataset_digest

            ds = (load_dataset_to_disk(self.spec, self.data_cache, fresh=False, **self.options) if self.data_cache
                  else load_dataset(self.spec, **self.options))
            found = dataset_digest(ds)
        else:
            raise ValueError(f"unknown kind of images {self.kind!r}")
        if found != self.identity:
            raise DiffauditError(f"Ray worker: {self.spec} holds other images on this node than where the command started "
                                 f"({found}, not {self.identity}); give every node the same files (a shared filesystem)")
        return ds if self.pick is None else ds.subset(list(self.pick))


class KnnChunkWorker:
    """A Ray worker of one search: holds the queries and the reference (prepared on its device) and
    computes the spans of queries it is handed, each into its cache file
    (:func:`~diffaudit.attacks.extraction.knn_cache.compute_chunk`); a span whose file is there already
    (the task retried after its worker was killed) is not computed again."""

    def __init__(self, queries: ImagesRecipe, reference: ImagesRecipe | None, k: int, cache_dir: str,
                 knn_kwargs: dict[str, Any], device_type: str, exclude_self: bool, fault_name: str, threads: int):
        import torch

        from diffaudit.attacks.extraction.knn_cache import prepare_reference
        from diffaudit.core.device import resolve_device

        if threads:
            torch.set_num_threads(threads)
        self.queries = queries.load().images
        ref = self.queries if reference is None else reference.load().images
        self.kw = dict(knn_kwargs, device=resolve_device(device_type))
        self.prepared = prepare_reference(ref, self.kw)
        self.k, self.cache_dir, self.exclude_self, self.fault_name = k, cache_dir, exclude_self, fault_name

    def fill(self, span: tuple[int, int]) -> tuple[int, int]:
        from diffaudit.attacks.extraction.knn_cache import chunk_path, compute_chunk, is_cached

        lo, hi = span
        if not is_cached(self.cache_dir, lo, hi, self.k):
            compute_chunk(self.queries, self.prepared, self.k, lo, hi, chunk_path(self.cache_dir, lo, hi),
                          exclude_self=self.exclude_self, fault_name=self.fault_name, **self.kw)
        return span


#: Queries a worker searches at a time (a span of a cached chunk): small enough that a chunk of 16,384
#: CIFAR-sized queries is shared by 16 workers, large enough that the matrix products stay efficient.
SPAN_ROWS = 1024


def knn_on_ray(address: str, queries, query_recipe: ImagesRecipe, reference_recipe: ImagesRecipe | None, k: int,
               cache_dir: Path, *, device, backend: str, label: str, exclude_self: bool = False,
               fault_name: str = "knn-chunk") -> None:
    """Compute the chunks of the search of ``queries`` (what ``query_recipe`` loads) against what
    ``reference_recipe`` loads (None: the queries themselves) that ``cache_dir`` lacks, on the Ray
    cluster at ``address``. Each pending chunk is cut into spans of :data:`SPAN_ROWS` queries that the
    workers search (one worker per GPU when ``device`` is cuda, else one per node using its CPUs, so a
    node holds one copy of the reference); the spans' files are then merged into the chunk files a
    single process writes, which the caller reads with
    :func:`~diffaudit.attacks.extraction.knn_cache.iter_cached_knn`."""
    from diffaudit.attacks.extraction.knn_cache import is_cached, merge_spans, pending_chunks, split_chunks
    from diffaudit.core.ray_pool import run_parts

    if not len(queries):
        return
    cache_dir = Path(cache_dir).resolve()  # the workers' nodes write there, whatever their working directory
    make_private_dir(cache_dir)
    chunks = split_chunks(pending_chunks(queries, k, cache_dir), SPAN_ROWS)
    spans = [span for parts in chunks.values() for span in parts]
    if not spans:
        return
    kept = sum(hi - lo for lo, hi in spans if is_cached(cache_dir, lo, hi, k))  # spans an interrupted run finished
    todo = sum(hi - lo for lo, hi in spans) - kept
    with Timer() as t:
        n = run_parts(address, KnnChunkWorker,
                      (query_recipe, reference_recipe, k, str(cache_dir), {"backend": backend}, device.type,
                       exclude_self, fault_name),
                      lambda: [s for s in spans if not is_cached(cache_dir, *s, k)], label=f"{label} (ray)",
                      size=lambda span: span[1] - span[0], total=todo, unit="img",
                      use_gpu=device.type == "cuda", threads=None, per_node=True)
        for chunk, parts in chunks.items():
            merge_spans(cache_dir, chunk, parts, k)
    workers = f"{n} worker{'s' if n != 1 else ''}"
    earlier = f"; {kept:,} finished earlier, kept" if kept else ""
    stage_line(f"{label}: neighbours of {todo:,} queries computed on Ray ({workers}, {t.seconds:.1f} s){earlier}")
