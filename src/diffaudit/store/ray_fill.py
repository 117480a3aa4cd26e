"""Distributed generation on a Ray cluster: shards spread over worker actors (one per GPU).

Every worker writes whole shards straight into the same store (a shared filesystem mounted at the same
path on every node, or an object-store URL every node can reach), with the same per-image seeds as a
single-process run, so the union of shards is bitwise the set one machine would produce. That holds for
one device type and micro-batch, so the workers take both from the store's recorded settings (the
workers' device ``--device`` names on the cluster, :func:`~diffaudit.core.device.resolve_devices`), and
a worker whose sampler settings or model weights (its ``--model`` folder on its node) differ from the
recorded ones refuses to write: a store is never filled by two kinds of sampler or two models. Shard
completion is the sidecar file, written last and atomically: a worker lost mid-shard leaves that shard
unfinished, Ray restarts the actor and retries the task, and a final sweep redoes any shard still
pending; a finished shard is never written twice (:mod:`diffaudit.core.ray_pool`). A head without the
workers' device (a CPU-only head node of a GPU cluster) has the model opened on a worker to settle the
store's settings (:func:`source_on_worker`).

Ray is optional (``pip install 'diffaudit[ray]'``).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import Timer, stage_line
from diffaudit.core.ray_pool import connect, run_parts, say_if_waiting, worker_error
from diffaudit.store.sample_store import SampleStore


def _open_on_this_node(store_path: str) -> SampleStore:
    """The store as a worker's node sees it; a folder missing there is said to need sharing (each node
    reads and writes the path on its own disk)."""
    from diffaudit.store.location import is_object_url, local_path

    if not is_object_url(store_path) and not local_path(store_path).exists():
        raise DiffauditError(f"Ray worker: {store_path} does not exist on this node; --out must lie on a filesystem "
                             "every node shares (mounted at the same path), or be an object-store URL (s3://...)")
    return SampleStore.open(store_path)


class _ShardWorker:
    """Holds one model in memory and fills shards on request."""

    def __init__(self, store_path: str, model: str, options: dict[str, Any], torch_threads: int):
        import torch

        from diffaudit.core.device import resolve_device
        from diffaudit.models.digest import model_digest
        from diffaudit.sampling.sources import open_source

        if torch_threads:
            torch.set_num_threads(torch_threads)
        opts = dict(options)
        self.batch_size = opts.pop("batch_size")
        self.store = _open_on_this_node(store_path)
        recorded = self.store.manifest["sampler"]
        opts["micro_batch"] = recorded.get("micro_batch", opts.get("micro_batch"))
        self.source = open_source(model, device=resolve_device(recorded["device_type"]), **opts)
        differ = sorted(k for k, v in self.source.settings().items() if recorded.get(k) != v)
        # a store made before the digest left out train_ids.json recorded the folder's with it (sample.upgrade_settings)
        want = recorded.get("model_digest")
        if want is not None and want != model_digest(model, members=False) and want != model_digest(model):
            differ.append("the contents of --model: the worker's --model folder holds other weights")
        if differ:
            raise DiffauditError(
                f"Ray worker: its sampler settings differ from those {store_path} records ({', '.join(differ)}); "
                "a store is filled by one kind of sampler only"
            )

    def fill(self, index: int) -> int:
        from diffaudit.store.fill import fill_shard

        fill_shard(self.store, index, self.source, batch_size=self.batch_size)
        return index


class _SourcePlanner:
    """A Ray actor that opens the source on a worker's device for a head without that device, reports
    what the store records of it and checks the prompts. The source is opened at the first call, so
    that an error opening it reaches the head as that call's error."""

    def __init__(self, model: str, options: dict[str, Any], device_type: str):
        self.model, self.options, self.device_type, self.source = model, options, device_type, None

    def _opened(self):
        if self.source is None:
            from diffaudit.core.device import resolve_device
            from diffaudit.sampling.sources import open_source

            self.source = open_source(self.model, device=resolve_device(self.device_type), **self.options)
        return self.source

    def describe(self) -> dict[str, Any]:
        source = self._opened()
        return {"settings": source.settings(), "image_shape": tuple(source.image_shape), "num_classes": source.num_classes}

    def check_prompts(self, prompts: list[str | None]) -> None:
        self._opened().check_prompts(prompts)


@dataclass(frozen=True)
class WorkerSource:
    """What the head knows of a source opened on a Ray worker (:func:`source_on_worker`): its settings,
    image shape (H, W, C) and classes (None: not class-conditional), and ``check_prompts``, which asks
    the worker."""

    sampler: dict[str, Any]
    image_shape: tuple[int, int, int]
    num_classes: int | None
    check: Callable[[list[str | None]], None]

    def settings(self) -> dict[str, Any]:
        return dict(self.sampler)

    def check_prompts(self, prompts: Sequence[str | None]) -> None:
        self.check(list(prompts))


@contextmanager
def source_on_worker(address: str, model: str, options: dict[str, Any], device_type: str) -> Iterator[WorkerSource]:
    """The source ``open_source(model, **options)`` on one Ray worker's ``device_type`` (a GPU of its own
    for cuda), for a head that lacks that device: the store's settings are then those the workers
    resolve (``--micro-batch auto`` probed on a worker's GPU, bf16 with ``--fast``), which they check
    before writing. The worker is released when the context ends. A worker's refusal (a prompt the
    model cannot take, a damaged model folder) is raised as it is."""
    ray = connect(address)
    actor = ray.remote(max_restarts=0)(_SourcePlanner).options(
        num_cpus=1, num_gpus=1 if device_type == "cuda" else 0).remote(model, options, device_type)

    def ask(ref):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # "this machine" in a refusal is the worker's node
            raise DiffauditError(f"sample, on the Ray worker: {worker_error(exc, 'opening the model failed')}") from None
        except ray.exceptions.RayError as exc:  # the worker died (out of memory, its node lost)
            raise DiffauditError(f"sample: the Ray worker opening the model died ({type(exc).__name__}); "
                                 "re-run to retry") from None

    try:
        say_if_waiting(ray, [actor], device_type == "cuda", "sample")
        described = ask(actor.describe.remote())
        yield WorkerSource(described["settings"], tuple(described["image_shape"]), described["num_classes"],
                           lambda prompts: ask(actor.check_prompts.remote(prompts)))
    finally:
        ray.kill(actor)


def fill_store_ray(store: SampleStore, model: str, args: argparse.Namespace, options: dict[str, Any], *,
                   workers: int | None = None, torch_threads: int = 1, max_rounds: int = 5) -> int:
    """Fill every pending shard of ``store`` on the Ray cluster at ``args.ray``, each worker opening the
    source as ``open_source(model, **options)`` (the micro-batch the store records) and filling
    ``args.batch_size`` images at a time; returns images made (:func:`~diffaudit.core.ray_pool.run_parts`:
    one worker per GPU when the store records cuda, else one per CPU)."""
    use_gpu = store.manifest["sampler"]["device_type"] == "cuda"  # what the command resolved for the workers and recorded
    todo = store.pending()

    def size(k: int) -> int:
        plan = store.plan(k)
        return plan.stop - plan.start

    worker_args = (store.location.shared_name(), str(model), {**options, "batch_size": args.batch_size})
    with Timer() as tm:
        n_workers = run_parts(args.ray, _ShardWorker, worker_args,
                              store.pending, label="sample (ray)", size=size, total=int(store.manifest["n_total"]),
                              completed=int(store.manifest["n_total"]) - sum(size(k) for k in todo),
                              unit="img", use_gpu=use_gpu, workers=workers or getattr(args, "ray_workers", None),
                              threads=torch_threads, max_rounds=max_rounds)
    made = sum(size(k) for k in todo)
    stage_line(f"sample (ray, {n_workers} worker{'s' if n_workers != 1 else ''}): {made} images in {tm.seconds:.1f}s "
               f"-> {store.name}")
    return made
