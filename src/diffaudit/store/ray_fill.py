"""Distributed generation on a Ray cluster: shards spread over worker actors (one per GPU).

Every worker writes whole shards straight into the same store folder (a local path, or a shared
filesystem mounted on every node), with the same per-image seeds as a single-process run, so the
union of shards is bitwise the set one machine would produce. That holds for one device type and
micro-batch, so the workers take both from the store's recorded settings (the device the command
resolved on the head, ``--device``), and a worker whose sampler settings or model weights (its
``--model`` folder on its node) differ from the recorded ones refuses to write: a store is never
filled by two kinds of sampler or two models. Shard completion is the sidecar file, written last and atomically: a worker lost
mid-shard leaves that shard unfinished, Ray restarts the actor and retries the task, and a final
sweep redoes any shard still pending; a finished shard is never written twice.

Ray is optional (``pip install 'diffaudit[ray]'``).
"""

from __future__ import annotations

import argparse
from typing import Any

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import Timer, progress_bar, stage_line
from diffaudit.store.sample_store import SampleStore


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": args.steps, "eta": args.eta, "micro_batch": args.micro_batch, "guidance_scale": args.guidance_scale,
            "scheduler": args.scheduler, "fast": args.fast, "compile": getattr(args, "compile", False),
            "batch_size": args.batch_size}


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
        self.store = SampleStore.open(store_path)
        recorded = self.store.manifest["sampler"]
        opts["micro_batch"] = recorded.get("micro_batch", opts.get("micro_batch"))
        self.source = open_source(model, device=resolve_device(recorded["device_type"]), **opts)
        differ = sorted(k for k, v in self.source.settings().items() if recorded.get(k) != v)
        if "model_digest" in recorded and model_digest(model) != recorded["model_digest"]:
            differ.append("model_digest: the worker's --model folder holds other weights")
        if differ:
            raise DiffauditError(
                f"Ray worker: its sampler settings differ from those {store_path} records ({', '.join(differ)}); "
                "a store is filled by one kind of sampler only"
            )

    def fill(self, index: int) -> int:
        from diffaudit.store.fill import fill_shard

        fill_shard(self.store, index, self.source, batch_size=self.batch_size)
        return index


def fill_store_ray(store: SampleStore, model: str, args: argparse.Namespace, *, workers: int | None = None,
                   torch_threads: int = 1, max_rounds: int = 5) -> int:
    """Fill every pending shard of ``store`` on the Ray cluster at ``args.ray``; returns images made."""
    try:
        import ray
    except ImportError:
        raise DiffauditError("--ray needs Ray: pip install 'ray>=2.9' (or diffaudit[ray])") from None
    if not ray.is_initialized():
        ray.init(address=None if args.ray in ("local",) else args.ray, ignore_reinit_error=True, log_to_driver=False)
    device_type = store.manifest["sampler"]["device_type"]  # what the head resolved and recorded
    use_gpu = device_type == "cuda"
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if use_gpu and gpus == 0:
        raise DiffauditError(f"{store.path} records sampling on cuda, but the Ray cluster at {args.ray} has no GPU; "
                             "run on a cluster with GPUs, or sample on the CPU (--device cpu, in another --out)")
    n_workers = workers or getattr(args, "ray_workers", None) or (
        gpus if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1))))
    Worker = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=torch_threads, max_restarts=4, max_task_retries=4)(_ShardWorker)
    actors = [Worker.remote(str(store.path), str(model), _source_options(args), torch_threads) for _ in range(n_workers)]
    made = 0
    with Timer() as tm, progress_bar("sample (ray)", int(store.manifest["n_total"]), unit="img") as bar:
        for _ in range(max_rounds):
            todo = store.pending()
            if not todo:
                break
            # Round-robin shards over actors; each actor works through its queue in order.
            futures = {actors[i % len(actors)].fill.remote(k): k for i, k in enumerate(todo)}
            pending = list(futures)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    k = ray.get(done[0])
                    n = store.plan(k).stop - store.plan(k).start
                    made += n
                    bar.advance(n)
                except ray.exceptions.RayError:
                    pass  # the shard stays pending; the next round redoes it
    if store.pending():
        raise DiffauditError(f"{len(store.pending())} shards could not be generated on the Ray cluster; re-run to retry")
    stage_line(f"sample (ray, {n_workers} workers): {made} images in {tm.seconds:.1f}s -> {store.path}")
    return made
