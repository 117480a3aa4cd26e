"""Distributed generation on a Ray cluster: shards spread over worker actors (one per GPU).

Every worker writes whole shards straight into the same store (a shared filesystem mounted at the
same path on every node, or an object-store URL every node can reach), with the same per-image seeds as a single-process run, so the
union of shards is bitwise the set one machine would produce. That holds for one device type and
micro-batch, so the workers take both from the store's recorded settings (the device the command
resolved on the head, ``--device``), and a worker whose sampler settings or model weights (its
``--model`` folder on its node) differ from the recorded ones refuses to write: a store is never
filled by two kinds of sampler or two models. Shard completion is the sidecar file, written last and
atomically: a worker lost mid-shard leaves that shard unfinished, Ray restarts the actor and retries
the task, and a final sweep redoes any shard still pending; a finished shard is never written twice
(:mod:`diffaudit.core.ray_pool`).

Ray is optional (``pip install 'diffaudit[ray]'``).
"""

from __future__ import annotations

import argparse
from typing import Any

from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import Timer, stage_line
from diffaudit.core.ray_pool import run_parts
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
    """Fill every pending shard of ``store`` on the Ray cluster at ``args.ray``; returns images made
    (:func:`~diffaudit.core.ray_pool.run_parts`: one worker per GPU when the store records cuda, else
    one per CPU)."""
    use_gpu = store.manifest["sampler"]["device_type"] == "cuda"  # what the head resolved and recorded
    todo = store.pending()

    def size(k: int) -> int:
        plan = store.plan(k)
        return plan.stop - plan.start

    with Timer() as tm:
        n_workers = run_parts(args.ray, _ShardWorker, (store.location.shared_name(), str(model), _source_options(args)),
                              store.pending, label="sample (ray)", size=size, total=int(store.manifest["n_total"]),
                              completed=int(store.manifest["n_total"]) - sum(size(k) for k in todo),
                              unit="img", use_gpu=use_gpu, workers=workers or getattr(args, "ray_workers", None),
                              threads=torch_threads, max_rounds=max_rounds)
    made = sum(size(k) for k in todo)
    stage_line(f"sample (ray, {n_workers} workers): {made} images in {tm.seconds:.1f}s -> {store.name}")
    return made
