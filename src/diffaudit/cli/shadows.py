"""``diffaudit shadows``: train the LiRA shadow models, one per column of a membership matrix."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np

from diffaudit.attacks.membership.shadows import shadow_dir, shadow_seed, train_shadows
from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_settings, data_options, emit, file_in_folder, speaking_as, upgrading_paths,
)
from diffaudit.cli.train import (
    add_train_options, canonical_data_record, refuse_dp_unused, train_config_from, upgrading_run_paths, warn_short_warmup,
)
from diffaudit.cli.train import setting_flags as train_setting_flags
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.core.identity import text_bytes
from diffaudit.core.io import read_json
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import Timer, stage_line
from diffaudit.core.results import write_result
from diffaudit.data import load_dataset
from diffaudit.data.digest import dataset_digest
from diffaudit.data.membership import Membership, load_membership, smallest_column

NAME = "shadows"
HELP = "train LiRA shadow models, one per column of a membership matrix (resumable)"
DESCRIPTION = (
    "Train K DDPM shadow models (the paper: 16), model k on the examples IN column k of --membership, "
    "into --out/model-00, model-01, ... A finished model is never retrained and an interrupted one resumes "
    "from its last checkpoint, so re-running the same command continues the work. Then run "
    "`diffaudit mia --shadows OUT` to attack them. With --dp-noise or --dp-epsilon every shadow trains with "
    "DP-SGD, as a DP-SGD target did (`audit --model` passes the target's own)."
)
#: How a refusal to resume names the --dp-* settings: as `train` names them.
setting_flags = train_setting_flags
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("data.spec", "data.options.cifar_root")


def membership_digest(mem: Membership) -> str:
    """SHA-256 (16 hex) of a membership matrix and its keys (recorded in settings)."""
    h = hashlib.sha256(np.ascontiguousarray(mem.matrix).tobytes())
    h.update(str(mem.matrix.shape).encode())
    h.update(text_bytes("\x00".join(mem.keys)))
    return h.hexdigest()[:16]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_run_args(p)
    p.add_argument("--membership", required=True, help="membership-matrix file (.npz from `diffaudit membership`, or a folder holding membership.npz)")
    p.add_argument("--models", type=int, default=None,
                   help="train the first K columns (default: every column); raise it later to add models")
    p.add_argument("--workers", type=int, default=1,
                   help="models trained at once, each in its own process (several small models share one GPU well)")
    add_train_options(p)
    from diffaudit.defenses.dp_training import add_dp_arguments

    add_dp_arguments(p)


def run(args: argparse.Namespace) -> int:
    opts = data_options(args)
    ds = load_dataset(args.data, need_captions=False, **opts)  # a pixel model reads no captions
    mem = load_membership(file_in_folder(args.membership, "membership.npz"), ds)
    k = mem.n_models if args.models is None else args.models
    if not 1 <= k <= mem.n_models:
        raise DiffauditError(f"--models must lie in [1, {mem.n_models}] (the membership matrix has {mem.n_models} columns); got {k}")
    empty = next((j for j in range(k) if not mem.matrix[:, j].any()), None)
    if empty is not None:  # refused before any model trains, naming the one that cannot
        raise DiffauditError(f"column {empty} of the membership matrix {args.membership} is IN for none of its "
                             f"{mem.n_examples} examples, so shadow model {empty} would train on nothing: make the matrix "
                             "(`diffaudit membership`) over more examples")
    config = train_config_from(args)
    dp, trainer = _dp_of(args, mem, k, config.batch_size)
    warn_short_warmup(config, "shadows")
    train_settings = {key: v for key, v in dataclasses.asdict(config).items() if key != "seed"}
    # --models is left out on purpose: a later run with a larger K adds models to the same folder.
    settings = {
        "data": {"spec": args.data, "options": opts, "digest": dataset_digest(ds)},
        "membership": {"digest": membership_digest(mem), "n_models": mem.n_models, "seed": mem.seed},
        "train": train_settings,
        "seed": args.seed,
    }
    if dp is not None:  # only then, so that the settings of plain shadows read as they always did
        clip = None if math.isinf(dp.max_grad_norm) else dp.max_grad_norm  # JSON holds no inf: None is no clipping
        settings["dp"] = {**dataclasses.asdict(dp), "max_grad_norm": clip}
    settings = canonical_settings(settings, PATH_SETTINGS)
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh, upgrade=upgrading_paths(PATH_SETTINGS))
    if resumed:
        stage_line(f"{speaking_as(NAME)}: resuming {out}")
    device = resolve_device(args.device)
    with Timer() as timer:
        runs = train_shadows(ds, mem, config, out, models=range(k), seed=args.seed, device=device,
                             data_record=canonical_data_record({"spec": args.data, "options": opts}), workers=args.workers,
                             upgrade=upgrading_run_paths(), trainer=trainer)
    finished = sorted(p for p in out.glob("model-*") if (p / "result.json").exists())
    models = []
    for j in range(mem.n_models):
        run_dir = shadow_dir(out, j)
        if run_dir in finished:
            r = read_json(run_dir / "result.json")
            models.append({"index": j, "run": run_dir.name, "n_train": r.get("n_train"), "final_loss": r.get("final_loss"),
                           "seed": shadow_seed(args.seed, j),
                           **({"epsilon": r["dp"].get("epsilon"), "noise_multiplier": r["dp"].get("noise_multiplier")}
                              if isinstance(r.get("dp"), dict) else {})})
    result = write_result(
        out / "result.json", NAME, settings, {"seed": args.seed},
        n_models=len(models), n_columns=mem.n_models, n_examples=len(ds), membership="membership.npz",
        models=models, seconds_this_session=timer.seconds,
    )
    emit(args, result, trained_line(out, len(runs), [m["index"] for m in models], mem))
    return 0


def _dp_of(args: argparse.Namespace, mem: Membership, k: int, batch_size: int):
    """(DPConfig, its trainer) when --dp-noise or --dp-epsilon is given, else (None, None): refused before any
    model trains are the training flags DP-SGD does not use, and a --batch-size above the smallest column
    among the first ``k`` (a DP-SGD batch holds each example at most once)."""
    from diffaudit.defenses.dp_training import dp_config_from_args, dp_trainer

    dp = dp_config_from_args(args)
    if dp is None:
        return None, None
    refuse_dp_unused(args)
    smallest, size = smallest_column(mem.matrix[:, :k])
    if batch_size > size:
        raise DiffauditError(f"--batch-size {batch_size} exceeds the {size} examples shadow model {smallest} trains on: a "
                             "DP-SGD batch holds each example at most once (sampling rate at most 1); lower --batch-size")
    return dp, dp_trainer(dp)


def is_target_split(mem: Membership) -> bool:
    """Whether ``mem`` is one target's membership record (``target_split``: two columns, every example IN
    exactly one), rather than a matrix of shadow models."""
    m = mem.matrix
    return m.shape[1] == 2 and bool(np.all(m[:, 0] != m[:, 1]))


def trained_line(out: Path, n_trained: int, finished: list[int], mem: Membership) -> str:
    """The command's last line: ``n_trained`` models trained (or kept) by this call, ``finished`` the
    columns whose model exists in ``out``. When only column 0 of a target split exists (a plain
    `diffaudit audit`, no shadows asked for), that model is the target and column 1 records its
    never-seen non-members: that is said instead of "1 shadow models ... of 2 columns"."""
    if finished == [0] and is_target_split(mem):
        n_in = int(mem.matrix[:, 0].sum())
        return (f"the target model {shadow_dir(out, 0)}, trained on its {n_in} members; the other "
                f"{len(mem.keys) - n_in} examples are its non-members")
    noun = "shadow model" if n_trained == 1 else "shadow models"
    return f"{n_trained} {noun} in {out} (of the membership matrix's {mem.n_models} columns)"
