"""Shadow models for LiRA: one DDPM per column of a membership matrix.

Carlini et al. 2023, Sec. 5 (membership inference): 16 models, each on a random half of the data.

Layout of the output folder::

    settings.json            the command's settings (resume checks them)
    membership.npz           a copy of the matrix (``diffaudit mia`` reads it by default)
    model-00/ .. model-KK/   run directories of :func:`diffaudit.models.training.train` (or of the
                             trainer given, e.g. DP-SGD's, to train shadows as their target trained)
    result.json              written when every model is finished

Model k trains on the examples with ``matrix[:, k]`` True, with training seed
``derive_seed(seed, "shadow", k)`` (different initialisation and batch order per model). A finished
model (its ``result.json`` exists) is never retrained; an interrupted one resumes from its last
checkpoint, so a killed run continued later ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from diffaudit.core.faults import fault_point
from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import stage_line
from diffaudit.core.seeds import derive_seed
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.membership import Membership, save_membership
from diffaudit.models.training import TrainConfig, is_finished, train


def shadow_dir(out_dir: str | Path, k: int) -> Path:
    """The run directory of shadow model ``k``: ``out_dir/model-{k:02d}``."""
    return Path(out_dir) / f"model-{int(k):02d}"


def shadow_seed(seed: int, k: int) -> int:
    """Training seed of shadow model ``k`` (fits in 63 bits)."""
    return derive_seed(int(seed), "shadow", int(k))


def train_shadows(
    dataset: ImageDataset,
    membership: Membership,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    models: Sequence[int] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    data_record: dict[str, Any] | None = None,
    workers: int = 1,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    trainer: Callable[..., Path] | None = None,
) -> list[Path]:
    """Train the shadow models ``models`` (default: every column) and return their run directories.

    Args:
        dataset: N examples, the same (keys, order) as the matrix rows.
        membership: the matrix (N, M) with its keys.
        config: training hyper-parameters; its ``seed`` is replaced per model by :func:`shadow_seed`.
        out_dir: the shadows folder (must already be prepared by the caller for resume checks).
        models: which columns to train (indices in [0, M)).
        seed: the run seed the per-model seeds derive from.
        workers: models trained at once, each in its own process (on one GPU, small models leave
            it idle most of the time, so 2-4 at once raise the throughput; on the CPU keep 1).
            Every model gets exactly the arguments it would get alone, so results do not depend on it.
        upgrade: how each run folder reads settings an earlier version recorded
            (:meth:`~diffaudit.models.training.RunPlan.open`); picklable when ``workers`` > 1.
        trainer: what trains one model, called as :func:`~diffaudit.models.training.train` is
            (``trainer(dataset, config, run_dir, device=, train_indices=, data_record=, upgrade=)`` -> the
            run directory); default :func:`~diffaudit.models.training.train`. Shadows of a DP-SGD target
            take DP-SGD's (:func:`diffaudit.defenses.dp_training.dp_trainer`, given by the command, since
            defences sit above attacks); picklable when ``workers`` > 1.
    """
    membership.check_keys(dataset.keys, dataset=f"dataset {dataset.source}")
    m = membership.n_models
    ks = list(range(m)) if models is None else [int(k) for k in models]
    bad = [k for k in ks if not 0 <= k < m]
    if bad:
        raise DiffauditError(f"model index {bad[0]} is out of range: the membership matrix has {m} models (0..{m - 1})")
    out = Path(out_dir)
    save_membership(out / "membership.npz", membership.matrix, membership.keys, membership.seed)
    jobs = []
    for k in ks:
        run = shadow_dir(out, k)
        if is_finished(run):
            stage_line(f"shadows: model {k} is finished ({run}); skipped")
            continue
        cfg = dataclasses.replace(config, seed=shadow_seed(seed, k))
        record = dict(data_record or {"source": dataset.source}, model_index=k)
        jobs.append((k, run, cfg, membership.column_indices(k), record))
    if workers < 1:
        raise DiffauditError(f"--workers must be at least 1; got {workers}")
    trainer = train if trainer is None else trainer
    if workers == 1 or len(jobs) <= 1:
        for k, run, cfg, idx, record in jobs:
            trainer(dataset, cfg, run, device=device, train_indices=idx, data_record=record, upgrade=upgrade)
            fault_point("shadows.model")
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            try:
                futures = [pool.submit(_train_one, trainer, dataset, cfg, run, str(device), idx, record, upgrade)
                           for _, run, cfg, idx, record in jobs]
                for fut in as_completed(futures):
                    fut.result()  # re-raises a worker's error
                    fault_point("shadows.model")
            except KeyboardInterrupt:
                _interrupt_workers()
                raise
    return [shadow_dir(out, k) for k in ks]


def _interrupt_workers() -> None:
    """Stop the worker processes at once, when this process is interrupted: each model keeps its last
    checkpoint (written atomically) and the re-run resumes from it. Left alone, a worker interrupted by
    Ctrl-C took up the next model already queued to it, and one that SIGTERM did not reach (it is sent to
    this process alone) trained on, while the pool's shutdown waited for both."""
    import multiprocessing

    # the futures are not cancelled: the pool marks them broken itself (3.11 raised InvalidStateError in its
    # manager thread, printed as a traceback, on setting that on a cancelled one)
    for worker in multiprocessing.active_children():
        worker.terminate()
    for worker in multiprocessing.active_children():
        worker.join(timeout=10)


def _train_one(trainer: Callable[..., Path], dataset: ImageDataset, config: TrainConfig, run: Path, device: str, indices,
               record: dict, upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> str:
    """One shadow model in a worker process (top level, so it pickles)."""
    return str(trainer(dataset, config, run, device=device, train_indices=indices, data_record=record, upgrade=upgrade))
