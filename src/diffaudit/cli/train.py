"""``diffaudit train``: DDPM training of a UNet on a dataset, a subset or a membership column."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_settings, data_options, emit, file_in_folder, given_options, upgrading_paths,
)
from diffaudit.core.errors import DiffauditError
from diffaudit.data.options import data_flags
from diffaudit.models.unets import PRESETS

NAME = "train"
HELP = "train a DDPM UNet (tiny CPU model up to the 35.7M-parameter DDPM CIFAR-10 architecture)"
DESCRIPTION = (
    "Train a DDPM (ε-prediction, linear β 1e-4..0.02, 1,000 steps) on --data and write a run directory "
    "(save_pretrained UNet with EMA weights, scheduler, config, training ids, loss log). Re-running the same "
    "command on the same --out resumes from the last checkpoint; the result equals an uninterrupted run. "
    "A finished run keeps its final training state (--no-keep-state drops it), so that the same command with "
    "a larger --steps, --extend RUN and a new --out trains it on: the longer run equals one trained that long "
    "from the start, and the shorter one stays as it is."
)
#: The paths of inputs in a training run's data record (the ``data`` its settings hold), recorded canonical
#: (see :func:`~diffaudit.cli.common.canonical_path`; an earlier version's record is read through
#: :func:`upgrading_run_paths`).
RECORD_PATHS = ("spec", "options.cifar_root", "membership", "dedup")


def add_train_options(p: argparse.ArgumentParser, *, steps: int = 1000) -> None:
    """Training hyper-parameters shared by train, shadows, canaries and audit."""
    g = p.add_argument_group("training")
    g.add_argument("--preset", choices=PRESETS, default="tiny", help="model size")
    g.add_argument("--steps", type=int, default=steps, help="optimisation steps")
    g.add_argument("--batch-size", type=int, default=64, help="images per step")
    g.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate")
    g.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clipping")
    g.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the saved weights")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="random horizontal flips")
    g.add_argument("--class-conditional", action=argparse.BooleanOptionalAction, default=False,
                   help="condition on the dataset's labels")
    g.add_argument("--checkpoint-every", type=int, default=500,
                   help="most steps between checkpoints; a run also checkpoints at least every half of --steps, "
                        "i.e. every min(CHECKPOINT_EVERY, max(1, STEPS // 2)) steps")
    g.add_argument("--log-every", type=int, default=None,
                   help="steps per loss-log line, at least 1 (default: gcd(50, --checkpoint-every))")
    g.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the UNet (CUDA)")


def train_config_from(args: argparse.Namespace, seed: int | None = None):
    """The :class:`~diffaudit.models.training.TrainConfig` of ``add_train_options`` flags.

    ``--log-every`` left out: gcd(50, --checkpoint-every); given, it must be at least 1 (0 is an error,
    not the default).
    """
    from diffaudit.models.training import TrainConfig

    if args.log_every is not None and args.log_every < 1:
        raise DiffauditError(f"--log-every must be at least 1 (steps per loss-log line); got {args.log_every}. "
                             "Leave it out for the default gcd(50, --checkpoint-every)")
    log_every = args.log_every if args.log_every is not None else math.gcd(50, args.checkpoint_every)
    return TrainConfig(
        preset=args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, flip=args.flip, class_conditional=args.class_conditional,
        seed=args.seed if seed is None else seed, checkpoint_every=args.checkpoint_every, bf16=not args.no_bf16,
        compile=args.compile, log_every=log_every,
    )


def say_eager_off_cuda(config, device, command: str = "train") -> None:
    """Say that ``--compile`` (``config.compile``) does nothing on ``device`` unless it is CUDA: the UNet
    trains eagerly there (sample and inpaint say the same of their own --compile)."""
    if config.compile and device.type != "cuda":
        from diffaudit.core.progress import stage_line

        stage_line(f"{command}: --compile applies on CUDA only; the UNet trains eagerly on {device.type}")


def warn_short_warmup(config, command: str = "train") -> None:
    """Say when the learning rate's warm-up (``warmup_steps``) does not end before ``steps``: --lr is never
    reached. Called once the data has loaded, so that a refusal of the inputs comes first and alone;
    ``command`` names the command in the warning."""
    if 0 < config.steps <= config.warmup_steps:
        from diffaudit.core.progress import warning_line

        peak = (f"rises to {config.lr * config.steps / config.warmup_steps:.3g} at most and never reaches --lr {config.lr:g}"
                if config.steps < config.warmup_steps else
                f"rises through the whole run and reaches --lr {config.lr:g} only at its last step")
        warning_line(command, f"--warmup-steps {config.warmup_steps} is not below --steps {config.steps}: the learning "
                     f"rate {peak}; lower --warmup-steps for a run this short")


def read_repeats(path: str, dataset, data: str | None = None) -> dict[int, int]:
    """A repeat file: a JSON object {key-or-index: times}, or lines "KEY TIMES" (``#`` starts a comment line).
    An index is a position in ``dataset`` as loaded (after ``--subset``); ``data``: how --data was given, with
    its options (:func:`~diffaudit.data.options.data_flags`), for errors.

    Returns {dataset index: times}. TIMES must be a positive integer (in JSON an integer: not a float,
    a string or true/false) of at most :data:`~diffaudit.models.training.MAX_STREAM`. Anything else, and
    an example named twice, is a :class:`DiffauditError` that names the file, the line or key, and the value.
    """
    from diffaudit.core.io import loads_json, read_text
    from diffaudit.models.training import MAX_STREAM

    text = read_text(path, "--repeat")
    entries: list[tuple[str, object, str]] = []  # (key, times, where)
    try:
        raw = loads_json(text, f"--repeat {path}")
    except json.JSONDecodeError:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                parts = line.split()
                if len(parts) != 2:
                    raise DiffauditError(f"{path}:{n}: expected `KEY TIMES` (two fields); got {line.strip()!r}")
                key, times = parts
                if not (times.isascii() and times.isdigit()):
                    raise DiffauditError(f"{path}:{n}: TIMES must be a positive integer; got {times!r} for {key!r}")
                entries.append((key, int(times), f"{path}:{n}"))
    else:
        if not isinstance(raw, dict):
            raise DiffauditError(f"{path}: a JSON repeat file must be an object {{\"key-or-index\": times}}; "
                                 f"got a JSON {type(raw).__name__}")
        entries = [(k, v, f"{path}: key {k!r}") for k, v in raw.items()]
    index = dataset.index_of()
    out: dict[int, int] = {}
    for k, v, where in entries:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DiffauditError(f"{where}: the repeat count must be a positive integer; got {v!r}")
        if v > MAX_STREAM:
            raise DiffauditError(f"{where}: the repeat count {v:,} is more than the {MAX_STREAM:,} copies a training "
                                 "stream may hold (every copy is an entry of it, in memory)")
        i = index.get(str(k))
        if i is None and str(k).isascii() and str(k).isdigit() and int(k) < len(dataset):
            i = int(k)
        if i is None:
            raise DiffauditError(f"{where}: {k!r} is neither a key nor an index of --data {data or dataset.source} "
                                 f"({len(dataset):,} examples as loaded; an index is a position among them, 0 to "
                                 f"{len(dataset) - 1:,})")
        if i in out:
            raise DiffauditError(f"{where}: example {i} ({dataset.keys[i]!r}) is named twice in the repeat file")
        out[i] = v
    return out


def canonical_data_record(record: dict) -> dict:
    """``record``, the ``data`` a training run's settings record, with the paths of its inputs canonical
    (:data:`RECORD_PATHS`): how every command records the data it trains a run on."""
    return canonical_settings(record, RECORD_PATHS)


def upgrading_run_paths() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ``upgrade`` hook of a training run folder (``train(..., upgrade=)``, :data:`RECORD_PATHS` under
    ``data``): an earlier version recorded those paths as typed; read canonical from the current directory
    (:func:`~diffaudit.cli.common.upgrading_paths`), such a run re-run from where it was started resumes,
    and its settings are recorded canonical from then on. Picklable (shadow runs train in worker processes)."""
    return upgrading_paths(f"data.{key}" for key in RECORD_PATHS)


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each run setting not named after its option (for a refusal to resume): the DP-SGD
    settings (``dp.noise_multiplier`` is ``--dp-noise``; ``dp.delta`` only when ``--dp-delta`` is given,
    else it is derived from the training set's size)."""
    from diffaudit.defenses.dp_training import DP_SETTING_NAMES

    names = {f"dp.{key}": flag for key, flag in DP_SETTING_NAMES.items()}
    names["dp"] = "DP-SGD (--dp-noise or --dp-epsilon)"  # switched on or off
    names["dp.noise_multiplier_used"] = "the noise multiplier DP-SGD trains with (--dp-noise, or solved for --dp-epsilon)"
    if getattr(args, "dp_delta", None) is not None:
        names["dp.delta"] = "--dp-delta"
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_run_args(p)
    add_train_options(p)
    g = p.add_argument_group("training set")
    g.add_argument("--membership", help="membership-matrix file (or a folder holding membership.npz): train on one of "
                   "its columns")
    g.add_argument("--model-index", type=int, help="the column of --membership to train on (needs --membership)")
    g.add_argument("--repeat", help="repeat chosen examples: JSON {key: times} or lines `KEY TIMES`; KEY is an example's "
                   "id (e.g. digits:5) or its position in --data as loaded (after --subset). Under DP-SGD each copy is "
                   "a training example of its own: epsilon is per copy, and an image repeated k times has a group's "
                   "guarantee (up to k times epsilon)")
    g.add_argument("--dedup", metavar="KEEP_JSON",
                   help="defence: train only on the examples kept by `diffaudit dedup` (its keep.json, or its output folder): "
                   "near-duplicates dropped")
    r = p.add_argument_group("training on")
    r.add_argument("--keep-state", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the finished run's training state in RUN/state (raw and EMA weights, Adam's moments: "
                        "about 3x the weights, 0.4 GB for the 35.7M-parameter CIFAR-10 model) for --extend; "
                        "--no-keep-state leaves it out. Not kept for DP-SGD runs, which cannot be extended")
    r.add_argument("--extend", metavar="RUN",
                   help="train the finished run RUN on, to --steps, into a new --out: give the command that trained "
                        "RUN with a larger --steps (RUN's other settings and data); RUN stays as it is")
    from diffaudit.defenses.dp_training import add_dp_arguments

    add_dp_arguments(p)


#: Training options DP-SGD does not use, and what stands in their place.
DP_UNUSED_FLAGS = {"--grad-clip": "per-example clipping to --dp-max-grad-norm replaces it",
                   "--no-bf16": "DP-SGD trains in float32", "--compile": "DP-SGD trains eagerly"}


def _state_as_asked(args: argparse.Namespace, run_dir: Path) -> None:
    """``--no-keep-state`` given to a run finished earlier with its state kept: drop it now, as asked (it was
    kept silently; the weights and records stay, and the run can no longer be extended). ``--keep-state``
    given to a run finished earlier without it: say that the state is gone and cannot be kept now."""
    from diffaudit.core.outdir import delete_aside
    from diffaudit.core.progress import stage_line, warning_line
    from diffaudit.models.run_files import STATE_DIR

    given = given_options(getattr(args, "_argv", []))
    kept = (run_dir / STATE_DIR).exists()
    if args.keep_state and "keep_state" in given and not kept:  # kept at the end of training, had it run now
        warning_line("train", f"--keep-state: {run_dir} finished earlier without its final state (--no-keep-state), "
                     "which cannot be kept after the fact; `train --extend` needs it, so train the run again with "
                     "--fresh to keep it")
    elif not args.keep_state and "no_keep_state" in given and kept:
        delete_aside(run_dir / STATE_DIR, "--no-keep-state")
        stage_line(f"train: --no-keep-state: deleted the final state {run_dir} kept ({STATE_DIR}/); its weights stay, "
                   "and `train --extend` can no longer train it on")


def refuse_dp_unused(args: argparse.Namespace) -> None:
    """Refuse the training flags given on the command line that DP-SGD does not use (:data:`DP_UNUSED_FLAGS`)."""
    given = given_options(getattr(args, "_argv", []))
    unused = sorted(flag for flag in DP_UNUSED_FLAGS if flag[2:].replace("-", "_") in given)
    if unused:
        one = len(unused) == 1
        raise DiffauditError(f"{', '.join(unused)} {'does' if one else 'do'} nothing under DP-SGD "
                             f"({'; '.join(DP_UNUSED_FLAGS[f] for f in unused)}): drop {'it' if one else 'them'}")


def _refuse_repeats_not_trained(args: argparse.Namespace, repeats: dict[int, int], indices: np.ndarray,
                                keys: list[str]) -> None:
    """Refuse a --repeat entry for an example this run does not train on (left out of its --membership
    column, or dropped as a copy by --dedup), naming the example by its key and saying which flag left it out."""
    trained = set(int(i) for i in indices)
    outside = [i for i in repeats if int(i) not in trained]
    if not outside:
        return
    why = []
    if args.membership:
        why.append(f"column {args.model_index} of --membership")
    if args.dedup:
        why.append("--dedup's keep list")
    named = ", ".join(repr(keys[i]) for i in outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
    plural = len(outside) != 1
    them = "them" if plural else "it"
    raise DiffauditError(f"--repeat {args.repeat} names {len(outside)} example{'s' if plural else ''} this run does not "
                         f"train on ({named}): {' and '.join(why)} leave{'s' if len(why) == 1 else ''} {them} out; "
                         f"drop {them} from the repeat file")


def _check_extend(args: argparse.Namespace, steps: int) -> None:
    """Refuse an --extend that cannot work before the data is read: RUN must be a finished run that kept
    its state, with fewer steps, and --out another folder (the settings are compared once the data is in,
    by :func:`~diffaudit.models.run_extension.check_extension`)."""
    from pathlib import Path

    from diffaudit.models.run_extension import finished_state

    if Path(args.out).resolve() == Path(args.extend).resolve():
        raise DiffauditError(f"--extend {args.extend} needs a new --out: the finished run stays as it is, and the "
                             "longer one is written beside it")
    finished_state(args.extend, steps)


def run(args: argparse.Namespace) -> int:
    from diffaudit.core.device import resolve_device
    from diffaudit.core.io import read_json
    from diffaudit.data import load_dataset
    from diffaudit.models.training import is_finished, train

    config = train_config_from(args)
    config.validate()  # a bad hyper-parameter is refused before the dataset is read or any folder written
    if args.extend:
        _check_extend(args, config.steps)
    if args.model_index is not None and not args.membership:
        raise DiffauditError("--model-index needs --membership (the matrix whose column it names); without it the "
                             "model trains on all of --data")
    args.membership, args.dedup = file_in_folder(args.membership, "membership.npz"), file_in_folder(args.dedup, "keep.json")
    opts = data_options(args)
    ds = load_dataset(args.data, need_captions=False, **opts)  # a pixel model reads no captions
    indices = None
    record = {"spec": args.data, "options": opts}
    if args.membership:
        from diffaudit.data.membership import load_membership

        if args.model_index is None:
            raise DiffauditError("--membership needs --model-index (which column to train on)")
        mem = load_membership(args.membership, ds)
        if not 0 <= args.model_index < mem.matrix.shape[1]:
            raise DiffauditError(f"--model-index must lie in [0, {mem.matrix.shape[1] - 1}]")
        indices = mem.column_indices(args.model_index)
        record.update(membership=str(args.membership), model_index=args.model_index)
    if args.dedup:
        from diffaudit.defenses.dedup import copies_of_trained, keep_list_selection

        keep, dropped = keep_list_selection(args.dedup, ds, data_spec=args.data, data_options=opts)
        if indices is not None:  # a membership column: only the dropped copies of images it trains on are its copies
            indices = np.intersect1d(indices, keep)
            dropped_copies = copies_of_trained(args.dedup, ds, dropped, indices)
        else:
            indices, dropped_copies = keep, dropped
        record.update(dedup=str(args.dedup), n_dropped_duplicates=int(len(dropped)))
    record = canonical_data_record(record)
    repeats = read_repeats(args.repeat, ds, data_flags(args.data, opts)) if args.repeat else None
    if repeats and indices is not None:
        _refuse_repeats_not_trained(args, repeats, indices, ds.keys)
    from diffaudit.defenses.dp_training import dp_config_from_args, train_dp

    dp = dp_config_from_args(args)
    if dp is not None and args.extend:
        raise DiffauditError("--extend and DP-SGD together are not supported: the noise is calibrated to --steps, "
                             "so a DP-SGD run cannot be trained on; train a new one with the --steps you want")
    if dp is not None:
        refuse_dp_unused(args)
    device = resolve_device(args.device)
    if args.fresh or not is_finished(args.out):  # said once the options are accepted, for a run that will train
        warn_short_warmup(config)
        if dp is None:
            say_eager_off_cuda(config, device)
    if dp is not None:
        run_dir = train_dp(ds, config, dp, args.out, device=device, train_indices=indices,
                           repeats=repeats, data_record=record, fresh=args.fresh, upgrade=upgrading_run_paths())
    else:
        run_dir = train(ds, config, args.out, device=device, train_indices=indices,
                        repeats=repeats, data_record=record, fresh=args.fresh, upgrade=upgrading_run_paths(),
                        keep_state=args.keep_state, extend=args.extend)
        _state_as_asked(args, run_dir)
    if args.dedup:  # what the run did not see but holds copies of: `audit` leaves these out of its non-members
        from diffaudit.core.io import write_json_atomic
        from diffaudit.models.run_files import DROPPED_DUPLICATES

        write_json_atomic(run_dir / DROPPED_DUPLICATES, {"keep_list": str(args.dedup),
                                                         "keys": [ds.keys[i] for i in dropped_copies]})
    emit(args, read_json(run_dir / "result.json"), f"run directory: {run_dir}")
    return 0
