"""DDPM training of a ``UNet2DModel`` (Ho et al. 2020; the models the paper attacks).

Loss: E_{x, t, ε} ||ε − ε_θ(sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε, t)||², t uniform in [0, T).
Adam with linear warm-up, gradient clipping, EMA weights, optional horizontal flips,
bf16 autocast and ``torch.compile`` on a GPU.

Determinism: everything random at step s (batch order, t, ε, flips) derives from (seed, s) alone,
and model state is checkpointed every :func:`checkpoint_interval` steps, so a killed run resumed from
its last checkpoint ends with exactly the weights of an uninterrupted run (bitwise on the CPU).
Training never draws from (or reseeds) torch's global RNG.

Checkpoints: every ``min(checkpoint_every, max(1, steps // 2))`` steps (:func:`checkpoint_interval`),
so every run of two steps or more, also one shorter than ``checkpoint_every``, checkpoints at least
once, halfway. A checkpoint holds the loss-log window in progress (sum and count), so a run resumed between
two log lines logs the same means as an uninterrupted one.

Run directory:
    unet/                 EMA weights (save_pretrained, safetensors): what sampling and attacks load
    scheduler/            DDPMScheduler config
    train_config.json     TrainConfig + data record
    train_ids.json        keys and indices of the training examples, and repeats
    loss_log.jsonl        step, loss, lr
    checkpoints/step-N/   raw + EMA weights (safetensors), optimizer state, for resume (deleted once finished)
    state/                the same at the last step, when asked to keep it (``train --extend`` trains on from it)
    extended_from.json    the run (and its steps) this one trained on from, if any
    result.json           written last: the run is finished when it exists
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from diffaudit.core.errors import DiffauditError, NonFiniteError, SettingsMismatchError
from diffaudit.core.faults import check_storage, fault_point
from diffaudit.core.folder_identity import FolderIdentity
from diffaudit.core.io import (
    atomic_write, make_private_dir, os_error_of, read_json, storage_error, write_bytes_atomic, write_json_atomic, write_through,
)
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import progress_bar, stage_line
from diffaudit.core.results import write_result
from diffaudit.core.seeds import derive_seed, numpy_rng, torch_generator
from diffaudit.data.dataset import LABEL_SOURCES, ImageDataset, to_model_space
from diffaudit.data.digest import dataset_digest
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.models.run_extension import check_extension, extend_hint, extended_from, start_from
from diffaudit.models.run_files import STATE_DIR, checkpoint_dirs
from diffaudit.models.run_record import training_digests
from diffaudit.models.unets import build_unet, count_parameters, unet_config


#: The most images a training step takes: DDPM trains CIFAR-10 at 128, large-batch and DP-SGD runs at a few
#: thousand; 10^11 asked numpy for 745 GiB of batch positions.
MAX_BATCH_SIZE = 65_536


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (saved in ``train_config.json``).

    ``checkpoint_every`` is the longest interval between checkpoints; :func:`checkpoint_interval`
    gives the one used. ``log_every`` steps per loss-log line (the mean loss over those steps).
    """

    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    flip: bool = False
    class_conditional: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    bf16: bool = True  # autocast on CUDA only
    compile: bool = False  # torch.compile on CUDA only

    def validate(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise DiffauditError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_size > MAX_BATCH_SIZE:
            raise DiffauditError(f"--batch-size must be at most {MAX_BATCH_SIZE:,} images per step; got {self.batch_size:,}")
        if not (0 < self.lr < 1):
            raise DiffauditError(f"--lr must lie in (0, 1); got {self.lr}")
        if not (0 <= self.ema_decay < 1):
            raise DiffauditError(f"--ema-decay must lie in [0, 1); got {self.ema_decay}")
        if self.checkpoint_every % self.log_every:
            raise DiffauditError("--checkpoint-every must be a multiple of the log interval (log_every)")
        if self.warmup_steps < 0:
            raise DiffauditError(f"--warmup-steps must be >= 0; got {self.warmup_steps}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            # inf / nan would also be unrecordable (settings are strict JSON); a huge value never binds
            raise DiffauditError(f"--grad-clip must be a finite positive gradient norm; got {self.grad_clip} "
                                 "(for no clipping in effect give a large value such as 1e9)")


def checkpoint_interval(config: TrainConfig) -> int:
    """Steps between checkpoints: ``min(checkpoint_every, max(1, steps // 2))``.

    ``checkpoint_every`` is the longest interval; a run also checkpoints at least every half of its
    length, so one of at most ``checkpoint_every`` steps is not left without any checkpoint (a 400-step
    run with the default ``checkpoint_every`` 500 checkpoints at step 200; before, a kill at step 399
    lost every step). Runs longer than ``2 · checkpoint_every`` keep exactly ``checkpoint_every``. No
    checkpoint at the last step: the finished run directory replaces it.
    """
    return min(config.checkpoint_every, max(1, config.steps // 2))


def check_train_indices(train_indices, n_dataset: int) -> np.ndarray | None:
    """``train_indices`` as sorted distinct int64 dataset indices (None stays None: all examples).

    Raises :class:`DiffauditError` for a boolean mask (it would be read as the indices 0 and 1: pass
    ``np.flatnonzero(mask)``), non-integer values, a nested list, an empty set, indices outside
    [0, n_dataset) and repeated indices (copies go through ``repeats=`` / ``--repeat``, which DP-SGD
    takes as examples of their own). Shared by plain and DP-SGD training.
    """
    if train_indices is None:
        return None
    arr = np.asarray(train_indices)
    if arr.dtype == np.bool_:
        raise DiffauditError(
            f"training indices are a boolean mask (dtype bool, {arr.size} entries); they must be example indices: "
            "pass np.flatnonzero(mask) (a membership column's IN examples: Membership.column_indices(k))")
    if arr.size == 0:
        raise DiffauditError("the training set is empty (no example selected)")
    if arr.ndim != 1:
        raise DiffauditError(f"training indices must be a 1-D list of example indices; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DiffauditError(f"training indices must be integers (example indices); got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= n_dataset:
        raise DiffauditError(f"training indices must lie in [0, {n_dataset - 1}]; got {int(arr.min())}..{int(arr.max())}")
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != len(arr):
        rep = uniq[counts > 1]
        shown = ", ".join(str(int(i)) for i in rep[:5]) + (", ..." if len(rep) > 5 else "")
        raise DiffauditError(
            f"training indices must be distinct: {len(rep)} example(s) listed more than once ({shown}). "
            "Train on an example several times with repeats= (--repeat) instead (under DP-SGD each copy is then "
            "an example of its own)")
    return uniq


def check_finite_state(loss_value: float, model: torch.nn.Module, step: int, label: str = "training",
                       hint: str = "lower --lr or check the data") -> None:
    """Raise :class:`NonFiniteError` if ``loss_value`` (a log window's mean or running sum) or a weight
    of ``model`` is NaN or inf: checked at every log line and before every save."""
    if not math.isfinite(loss_value):
        raise NonFiniteError(f"{label} loss became {loss_value} by step {step}; {hint}")
    check_finite_weights(model, step, label)


def check_finite_weights(model: torch.nn.Module, step: int, label: str = "training") -> None:
    """Raise :class:`NonFiniteError` if a parameter of ``model`` holds NaN or inf (before it is saved)."""
    params = [p.detach() for p in model.parameters()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise NonFiniteError(f"{label}: the model weights became non-finite (NaN or inf) at step {step}; "
                             "nothing was saved from this step; lower --lr or check the data")


#: The most entries a training stream with repeats may hold (each example once, plus its extra copies).
#: The stream and its per-epoch permutations are held in memory, 8 bytes an entry each (and the stream
#: again on the device), so a count such as 10^11 must be refused before any of it is built, not end in
#: a MemoryError; 10^8 entries (under 1 GB an array) is far beyond any duplication study (CIFAR-10's
#: 50,000 images each repeated 2,000 times).
MAX_STREAM = 100_000_000


def expand_repeats(indices: np.ndarray, repeats: dict[int, int] | None) -> np.ndarray:
    """The training stream's index list: each index once, or ``repeats[index]`` times; a stream of more
    than :data:`MAX_STREAM` entries is refused."""
    if not repeats:
        return np.asarray(indices, dtype=np.int64)
    members = set(int(i) for i in indices)
    for i, r in repeats.items():
        if int(i) not in members:
            raise DiffauditError(f"repeat given for example {i}, which is not in the training set")
        if int(r) < 1:
            raise DiffauditError(f"repeat count of example {i} must be at least 1; got {r}")
    n_stream = len(indices) + sum(int(r) - 1 for r in repeats.values())  # Python ints: no overflow
    if n_stream > MAX_STREAM:
        i, r = max(repeats.items(), key=lambda item: int(item[1]))
        raise DiffauditError(f"the repeat counts make a training stream of {n_stream:,} entries (example {i}: {int(r):,} "
                             f"copies), more than the {MAX_STREAM:,} it may hold (every copy is an entry, in memory); "
                             "lower the counts")
    counts = np.asarray([int(repeats.get(int(i), 1)) for i in indices], dtype=np.int64)
    return np.repeat(np.asarray(indices, dtype=np.int64), counts)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The stream order of ``epoch`` (computed once per epoch, not once per step); read-only."""
    perm = numpy_rng(derive_seed(seed, "epoch", epoch)).permutation(n)
    perm.flags.writeable = False
    return perm


def batch_positions(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Positions (into the training stream of length n) of the examples in batch ``step``, int64 (batch_size,).

    The stream is the concatenation of per-epoch permutations, each seeded by (seed, epoch); a batch
    may span two epochs, and then hold one position twice (see :func:`epoch_batch_positions`).
    """
    start = step * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    k = 0
    while k < batch_size:
        epoch, offset = divmod(start + k, n)
        perm = _epoch_permutation(seed, epoch, n)
        take = min(batch_size - k, n - offset)
        out[k:k + take] = perm[offset:offset + take]
        k += take
    return out


def epoch_batch_positions(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Positions in [0, n) of batch ``step``: ``batch_size`` distinct ones, int64 (batch_size,).

    Epoch e is the permutation of (seed, e) (that of :func:`batch_positions`) cut into
    ``n // batch_size`` whole batches; its last ``n % batch_size`` positions sit out that epoch (other
    ones each epoch). A batch never spans two epochs, so it never holds an example twice (what DP-SGD's
    per-example sensitivity needs), and it is a pure function of (seed, step), so a resumed run draws
    the same batches. When ``batch_size`` divides ``n`` the batches equal :func:`batch_positions`'.
    """
    if not 1 <= batch_size <= n:
        raise DiffauditError(f"--batch-size {batch_size} must lie in [1, {n}] (the number of training examples)")
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    return _epoch_permutation(seed, epoch, n)[k * batch_size:(k + 1) * batch_size].astype(np.int64)


class Ema:
    """Exponential moving average of parameters with warm-up: decay_s = min(decay, (1+s)/(10+s))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        state = model.state_dict()
        keys = [k for k, v in state.items() if v.dtype.is_floating_point]
        shadow = [self.shadow[k] for k in keys]
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, [state[k].detach().float() for k in keys], alpha=1 - d)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)


_WARMUP_TIMING_STEPS = 10  # steps (compilation, allocator warm-up) left out of the steady-state rate


def lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def save_checkpoint(run: Path, step: int, model, ema: Ema, opt, log: list[dict],
                    window: tuple[float, int] = (0.0, 0)) -> None:
    """Write ``checkpoints/step-N/`` atomically (:func:`write_state`) and keep only the last two."""
    write_state(run / "checkpoints" / f"step-{step:08d}", step, model, ema, opt, log, window)
    for old in checkpoint_dirs(run)[:-2]:
        shutil.rmtree(old)


def write_state(final: Path, step: int, model, ema: Ema, opt, log: list[dict],
                window: tuple[float, int] = (0.0, 0)) -> None:
    """Write the training state after ``step`` steps into folder ``final`` at once (a hidden sibling,
    renamed): raw weights and EMA (safetensors), optimizer state, loss log, and ``state.json`` last
    (step; ``window``: (summed loss, steps) of the log line in progress). What a checkpoint holds, and a
    finished run's ``state/`` (:data:`~diffaudit.models.run_files.STATE_DIR`), which ``--extend`` reads."""
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    make_private_dir(tmp)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(tmp / "model.safetensors", lambda f: f.write(_st_bytes(sd)))
    atomic_write(tmp / "ema.safetensors", lambda f: f.write(_st_bytes(ema.shadow)))
    atomic_write(tmp / "optimizer.pt", lambda f: write_through(f, lambda w: torch.save(opt.state_dict(), w)))
    write_json_atomic(tmp / "log.json", log)
    state = {"step": step, "window": {"loss_sum": float(window[0]), "steps": int(window[1])}}
    write_json_atomic(tmp / "state.json", state)  # written last: marks the state complete
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _st_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def load_checkpoint(ck: Path, model, ema: Ema, opt) -> tuple[int, list[dict], tuple[float, int]]:
    """Load ``ck`` into model, EMA and optimizer; returns (step, log, loss-log window in progress)."""
    model.load_state_dict(load_file(ck / "model.safetensors"))
    ema.shadow = {k: v.float() for k, v in load_file(ck / "ema.safetensors").items()}
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it is about to refuse
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            opt_state = torch.load(ck / "optimizer.pt", weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError) as exc:
        # weights_only=True refuses any pickle that would import or call code: say so, without torch's
        # suggestion to retry with weights_only=False (that would run the file's code) or its other advice
        advice = ("weights_only", "Re-running", "file an issue", "documentation of torch.load")
        lines = [ln.strip() for ln in str(exc).splitlines()
                 if ln.strip() and not any(a in ln for a in advice)] or [type(exc).__name__]
        reason = next((ln for ln in lines if "GLOBAL" in ln.upper()), lines[0])
        raise DiffauditError(
            f"{ck / 'optimizer.pt'}: refused to load: it is not a plain weights-only checkpoint (it would need "
            f"arbitrary pickled objects or code, or it is damaged: {reason[:200]}). "
            "diffaudit loads weights only from safetensors and optimizer state only with torch.load(weights_only=True). "
            "Delete this checkpoint folder to resume from an earlier one, or re-run with --fresh."
        ) from None
    opt.load_state_dict(opt_state)
    state = read_json(ck / "state.json")
    win = state.get("window") or {}  # absent in older checkpoints, which were all taken at log lines
    return int(state["step"]), list(read_json(ck / "log.json")), (float(win.get("loss_sum", 0.0)), int(win.get("steps", 0)))


def resume(run: Path, model, ema: Ema, opt, device, label: str = "train",
           say: bool = True) -> tuple[int, list[dict], tuple[float, int]]:
    """Load ``run``'s newest complete checkpoint, if any, and put the EMA on ``device``; ``say``: name
    the step resumed from.

    Returns (next step, log, (summed loss, steps) of the loss-log window in progress).
    """
    start, log, window = 0, [], (0.0, 0)
    cks = checkpoint_dirs(run)
    if cks:
        start, log, window = load_checkpoint(cks[-1], model, ema, opt)
        if say:
            stage_line(f"{label}: resuming {run} from step {start}")
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    return start, log, window


def is_finished(run: str | Path) -> bool:
    return (Path(run) / "result.json").exists()


def drop_checkpoints(run: Path) -> None:
    """Delete a finished run's ``checkpoints/`` (after its ``result.json``: nothing resumes from them,
    and for the 35.7M-parameter CIFAR-10 model they hold about 1 GB per run)."""
    shutil.rmtree(Path(run) / "checkpoints", ignore_errors=True)


@dataclass
class RunPlan:
    """What a training run trains on and the settings that identify it (shared by plain and DP-SGD runs).

    Attributes:
        indices: sorted dataset indices of the training examples, int64 (n,).
        stream: the training stream's indices, each example repeated as asked, int64 (n_stream,).
        num_classes: class count for a class-conditional model, else None.
        unet_config: ``UNet2DModel`` keyword arguments.
        ids_record: what ``train_ids.json`` holds (keys, indices, repeats, n_dataset).
        settings: what identifies the run (resume compares them).
        config_record: what ``train_config.json`` holds.
    """

    indices: np.ndarray
    stream: np.ndarray
    num_classes: int | None
    unet_config: dict[str, Any]
    ids_record: dict[str, Any]
    settings: dict[str, Any]
    config_record: dict[str, Any]

    def open(self, out_dir: str | Path, *, fresh: bool = False,
             upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Path:
        """Create or reopen the run folder (resume) and record the config and training ids.

        ``upgrade``: the caller's reading of settings an earlier version recorded there, as
        :func:`~diffaudit.core.outdir.prepare_out_dir` takes it (the paths of the data record, which
        the caller makes, as typed then and canonical now): a run whose upgraded settings match
        resumes, its settings recorded anew."""
        run, _ = prepare_out_dir(out_dir, "train", self.settings, fresh=fresh, upgrade=upgrade,
                                 setup_files=("train_config.json", "train_ids.json"))
        if not is_finished(run):
            write_json_atomic(run / "train_config.json", self.config_record)
            write_json_atomic(run / "train_ids.json", self.ids_record)
        return run


def plan_run(dataset: ImageDataset, config: TrainConfig, *, train_indices=None, repeats: dict[int, int] | None = None,
             data_record: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> RunPlan:
    """Validate the training set and build a run's records; ``extra`` settings are added (e.g. ``dp``)."""
    n_all = len(dataset)
    checked = check_train_indices(train_indices, n_all)
    idx = np.arange(n_all, dtype=np.int64) if checked is None else checked
    if len(idx) == 0:
        raise DiffauditError("the training set is empty (no example selected)")
    stream = expand_repeats(idx, repeats)
    H, W, C = dataset.image_shape
    if H != W:
        raise DiffauditError(f"training needs square images; got {H}x{W} (use --image-size)")
    num_classes = None
    if config.class_conditional:
        if dataset.labels is None:
            raise DiffauditError(f"{dataset.source}: --class-conditional needs labels, and it has none; they come "
                                 f"from {LABEL_SOURCES}")
        # every class of the data, not only those the selected examples hold: a subset may miss one
        num_classes = max(len(dataset.class_names or []), int(dataset.labels.max()) + 1)
    ucfg = unet_config(config.preset, image_size=H, in_channels=C, num_classes=num_classes)
    ids_record = {
        "keys": [dataset.keys[i] for i in idx],
        "indices": idx.tolist(),
        "repeats": {dataset.keys[int(i)]: int(r) for i, r in sorted((repeats or {}).items())},
        "n_dataset": n_all,
    }
    data = data_record or {"source": dataset.source}
    settings = {"train": dataclasses.asdict(config), "unet": ucfg, "data": data,
                "training_set_digest": derive_seed(json.dumps(ids_record, sort_keys=True)),
                # the training examples' pixels: a resume after the data was rewritten in place is refused
                "training_pixels_digest": dataset_digest(dataset, idx), **(extra or {})}
    config_record = {**dataclasses.asdict(config), "unet": ucfg, "data": data, **(extra or {})}
    return RunPlan(idx, stream, num_classes, ucfg, ids_record, settings, config_record)


def init_model(config: TrainConfig, ucfg: dict[str, Any]):
    """The UNet's initial weights, seeded by (seed, "init"); torch's RNG is isolated and restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init") % (2**31))
        return build_unet(ucfg)


def build_unet_untouched_rng(ucfg: dict[str, Any]):
    """A UNet of ``ucfg`` whose weights are about to be overwritten; built inside ``fork_rng`` so its
    (meaningless) initialisation does not advance torch's global RNG."""
    with torch.random.fork_rng(devices=[]):
        return build_unet(ucfg)


def train(
    dataset: ImageDataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    train_indices: np.ndarray | list[int] | None = None,
    repeats: dict[int, int] | None = None,
    data_record: dict[str, Any] | None = None,
    fresh: bool = False,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    keep_state: bool = False,
    extend: str | Path | None = None,
) -> Path:
    """Train a DDPM on ``dataset[train_indices]`` (default: all) and write a run directory.

    ``train_indices``: distinct dataset indices, int (n,) (:func:`check_train_indices`; not a boolean mask).
    ``repeats`` maps example index -> number of copies in the training stream (duplication studies).
    Checkpoints every :func:`checkpoint_interval` steps. torch's global RNG is left untouched.
    Re-running with the same arguments resumes from the last checkpoint, or returns at once if finished.
    ``upgrade``: how the run folder reads settings an earlier version recorded (:meth:`RunPlan.open`).
    ``keep_state``: keep the final training state in ``state/`` (about three times the weights' size),
    so that ``extend`` can train on from it. ``extend``: a finished run that kept its state, trained
    with these settings but fewer steps: start from its state (:mod:`~diffaudit.models.run_extension`);
    the result equals an uninterrupted run of ``config.steps``.
    """
    config.validate()
    device = torch.device(device)
    plan = plan_run(dataset, config, train_indices=train_indices, repeats=repeats, data_record=data_record)
    idx, stream, ucfg, num_classes = plan.indices, plan.stream, plan.unet_config, plan.num_classes
    H, W, C = dataset.image_shape
    origin = None if extend is None else check_extension(extend, plan.settings, upgrade=upgrade)
    try:
        run = plan.open(out_dir, fresh=fresh, upgrade=upgrade)
    except SettingsMismatchError as e:  # a finished run asked for more steps: say how to train it on
        hint = extend_hint(Path(out_dir), plan.settings, upgrade)
        if not hint:
            raise
        raise SettingsMismatchError(f"{e}{hint}", e.differences) from None
    if is_finished(run):
        stage_line(f"train: {run} is already finished ({config.steps} steps); nothing to do")
        drop_checkpoints(run)  # a run killed between its result and this cleanup
        return run
    settings = plan.settings
    extending = origin is not None and start_from(run, extend, *origin)
    folder = FolderIdentity.of(run)  # checked before each write: a run moved meanwhile is not made again

    model = init_model(config, ucfg)
    model.to(device).train()
    ema = Ema(model, config.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, fused=device.type == "cuda")
    start, log, (window_sum, window_n) = resume(run, model, ema, opt, device, say=not extending)

    scheduler = make_scheduler()
    a_bar = alphas_cumprod_of(scheduler).to(device=device, dtype=torch.float32)
    T = scheduler.config.num_train_timesteps
    data_x = to_model_space(dataset.images[idx])  # (n_train, C, H, W) in [-1, 1]
    data_x = data_x.to(device)
    stream_rows = torch.as_tensor(np.searchsorted(idx, stream), device=device)  # stream position -> row of data_x
    labels = None if num_classes is None else torch.as_tensor(dataset.labels, dtype=torch.long)
    use_amp = device.type == "cuda" and config.bf16
    fwd = torch.compile(model) if (config.compile and device.type == "cuda") else model

    t0, seen = time.perf_counter(), 0
    t_warm, seen_warm = None, 0
    # summed loss since the last log line (no per-step host sync); float32, restored exactly from a checkpoint
    window = torch.tensor(window_sum, dtype=torch.float32, device=device)
    every = checkpoint_interval(config)
    kept = None  # ((summed loss, steps) of the log line in progress, log) at the last step, for state/
    with progress_bar("train", config.steps, unit="step", completed=start) as bar:
        for step in range(start, config.steps):
            pos = batch_positions(step, config.batch_size, len(stream), config.seed)
            ex = stream[pos]
            rows = stream_rows[torch.as_tensor(pos, device=device)]
            g = torch_generator(derive_seed(config.seed, "train-step", step))
            t = torch.randint(0, T, (len(ex),), generator=g)
            eps = torch.randn((len(ex), C, H, W), generator=g)
            flip = torch.rand(len(ex), generator=g) < 0.5
            x0 = data_x[rows]
            t, eps, flip = t.to(device), eps.to(device), flip.to(device)
            if config.flip:
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            ab = a_bar[t][:, None, None, None]
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            lab = None if labels is None else labels[torch.as_tensor(ex)].to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, config)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                pred = fwd(x_t, t, class_labels=lab).sample
            loss = torch.nn.functional.mse_loss(pred.float(), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            ema.update(model, step)
            window += loss.detach()
            window_n += 1
            seen += len(ex)
            done = step + 1
            regular_line = done % config.log_every == 0  # a longer run writes it too
            if done == config.steps and keep_state and not regular_line:  # before the run's extra last line:
                kept = (float(window.item()), window_n), list(log)  # a longer run logs on past it
            if regular_line or done == config.steps:
                lv = float(window.item()) / window_n
                window.zero_()
                window_n = 0
                check_finite_state(lv, model, done)
                log.append({"step": done, "loss": lv, "lr": lr_at(step, config)})  # mean over the window
                bar.advance(0, loss=lv)
                if done == config.steps and keep_state and regular_line:  # after it: the next window starts empty
                    kept = (0.0, 0), list(log)
            bar.advance(1)
            if step + 1 - start == _WARMUP_TIMING_STEPS:
                if device.type == "cuda":  # the warm-up's queued GPU work is not charged to the steady rate
                    torch.cuda.synchronize(device)
                t_warm, seen_warm = time.perf_counter(), seen
            fault_point("train.step")
            if done % every == 0 and done < config.steps:
                wsum = float(window.item())
                check_finite_state(wsum, model, done)  # a checkpoint never holds non-finite weights
                folder.check()
                save_checkpoint(run, done, model, ema, opt, log, (wsum, window_n))
                fault_point("train.checkpoint")
    elapsed = time.perf_counter() - t0

    folder.check()
    # Final weights: the EMA copy, in the UNet's own save_pretrained layout.
    final_model = build_unet_untouched_rng(ucfg)
    final_model.load_state_dict({k: v.detach().cpu() for k, v in ema.shadow.items()})
    save_pretrained_atomic(final_model, run / "unet")
    save_pretrained_atomic(scheduler, run / "scheduler")
    write_bytes_atomic(run / "loss_log.jsonl", "".join(json.dumps(r) + "\n" for r in log).encode())
    if kept is not None:
        write_state(run / STATE_DIR, config.steps, model, ema, opt, kept[1], kept[0])
    steady = None if t_warm is None or seen == seen_warm else (seen - seen_warm) / (t0 + elapsed - t_warm)
    write_json_atomic(run / "timing.json", {"seconds": elapsed, "images_per_second": seen / max(elapsed, 1e-9),
                                            "images_per_second_after_warmup": steady,
                                            "steps_this_session": config.steps - start, "device": str(device)})
    write_result(
        run / "result.json", "train", settings, {"seed": config.seed},
        steps=config.steps, n_parameters=count_parameters(final_model), n_train=int(len(idx)),
        n_stream=int(len(stream)), final_loss=log[-1]["loss"] if log else None,
        training_digests=training_digests(dataset, idx), extended_from=extended_from(run),
    )
    drop_checkpoints(run)
    repeated = f" ({len(stream)} with repeats)" if len(stream) != len(idx) else ""
    kept_text = ""
    if (run / STATE_DIR / "state.json").is_file():
        size = sum(p.stat().st_size for p in (run / STATE_DIR).iterdir())
        kept_text = f"; its final state ({size / 2**20:.1f} MiB) is kept in {STATE_DIR}/ for `train --extend`"
    stage_line(f"train: {config.steps} steps on {len(idx)} images{repeated} -> {run}{kept_text}")
    return run


def save_pretrained_atomic(model, folder: Path) -> None:
    """``model.save_pretrained`` (a UNet, a scheduler) into ``folder`` at once: written to a hidden
    sibling and renamed, owner-only like every output (diffusers creates its files with the umask's
    mode, so they are made 0600 before the rename)."""
    tmp = folder.parent / f".tmp-{folder.name}"
    try:  # diffusers writes these files itself: storage errors (and the fault hook) are handled here
        check_storage(folder)
        if tmp.exists():
            shutil.rmtree(tmp)
        make_private_dir(tmp)
        model.save_pretrained(tmp, safe_serialization=True)  # a scheduler ignores the flag: a config only
        for path in tmp.rglob("*"):
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except OSError as exc:
        raise storage_error(folder, exc) from exc
    except Exception as exc:  # safetensors' writer says a failed write in its own error ("(os error 28)")
        cause = os_error_of(exc)
        if cause is None:
            raise
        raise storage_error(folder, cause) from exc
