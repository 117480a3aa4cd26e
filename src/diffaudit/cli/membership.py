"""``diffaudit membership``: write the seeded membership matrix of a dataset (LiRA shadow splits).

Each of the ``--models`` shadow models trains on the examples IN its column; every example is IN
for exactly half of the models (see :mod:`diffaudit.data.membership`). The file records the
dataset's keys, so ``train --membership FILE --model-index k`` and the attacks can check they read
the same dataset. Re-running with the same settings leaves an existing file untouched; a file made
with other settings is an error unless ``--fresh``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diffaudit.cli.common import add_data_args, data_options, emit, out_file
from diffaudit.core.errors import DiffauditError
from diffaudit.core.outdir import recorded_command
from diffaudit.core.results import envelope
from diffaudit.data import load_dataset
from diffaudit.data.membership import Membership, load_membership, make_membership, save_membership

NAME = "membership"
HELP = "write a seeded membership matrix (each example IN for exactly half of the shadow models)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--models", type=int, default=16, help="number of shadow models M (even; the paper: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the matrix")
    p.add_argument("--out", required=True, help="the membership file to write (.npz), or a folder (an existing one, a "
                   "path ending in /, or a new path without a suffix) to write membership.npz into")
    p.add_argument("--fresh", action="store_true", help="overwrite an existing membership file made with other settings "
                   "(never a file that is not one)")


def _existing(path: Path) -> Membership:
    """The membership file at ``path``, refused when it is not one (:func:`load_membership` cannot read it): a
    mistyped ``--out`` naming a file of the user's must not be overwritten, also not with ``--fresh``."""
    try:
        return load_membership(path)
    except DiffauditError as exc:
        raise DiffauditError(f"--out {path} exists and is not a membership file ({exc}); diffaudit never replaces a "
                             "file of yours: give --out another file name, or a folder") from None


def _differs(old: Membership, matrix: np.ndarray, keys: list[str], seed: int) -> str | None:
    """What differs between the membership file ``old`` (:func:`_existing`) and the new matrix, or None when they
    are equal."""
    if old.n_models != matrix.shape[1]:
        return f"models (was {old.n_models}, now {matrix.shape[1]})"
    if old.seed != seed:
        return f"seed (was {old.seed}, now {seed})"
    if old.keys != keys:
        return f"dataset keys ({old.n_examples} examples before, {len(keys)} now)"
    if not np.array_equal(old.matrix, matrix):
        return "matrix"
    return None


def _refuse_trained_on(out: Path) -> None:
    """Refuse to overwrite the matrix that the shadow models beside it were trained on (the folder of `diffaudit
    shadows`, where `mia` and `inpaint` read it): they would be left with another matrix's columns, and every
    attack on them refused."""
    folder = out.parent
    trained = sorted(p.name for p in folder.glob("model-*") if (p / "train_ids.json").is_file())
    if recorded_command(folder) == "shadows" and trained:
        raise DiffauditError(f"{out} is the matrix that the {len(trained)} shadow model{'s' * (len(trained) != 1)} in {folder} "
                             f"({', '.join(trained[:3])}{', ...' if len(trained) > 3 else ''}) were trained on; "
                             "overwriting it would leave them without it: write the new matrix into another folder "
                             "(and train its shadows there)")


def run(args: argparse.Namespace) -> int:
    options = data_options(args)
    dataset = load_dataset(args.data, need_captions=False, **options)  # its keys only
    matrix = make_membership(len(dataset), args.models, args.seed)
    empty = np.flatnonzero(matrix.sum(axis=0) == 0)
    if empty.size:  # such a model has nothing to train on: `shadows` would stop at it
        raise DiffauditError(f"with {len(dataset)} example{'s' * (len(dataset) != 1)} and {args.models} models, model "
                             f"{int(empty[0])}{f' (and {empty.size - 1} more)' if empty.size > 1 else ''} would train on no example at seed "
                             f"{args.seed}: "
                             "give --data more examples (the paper: 50,000 for 16 models)")
    out = out_file(args.out, "membership.npz")
    status = "wrote"
    old = _existing(out) if out.exists() or out.is_symlink() else None  # a file of yours: refused, --fresh or not
    diff = _differs(old, matrix, dataset.keys, args.seed) if old is not None else None
    if diff and args.fresh:
        _refuse_trained_on(out)
    if old is not None and not args.fresh:
        if diff:
            raise DiffauditError(
                f"{out} already holds a membership matrix that differs in {diff}; "
                "choose another --out, or pass --fresh to overwrite it"
            )
        status = "unchanged"
    else:
        save_membership(out, matrix, dataset.keys, args.seed)
    per_model = matrix.sum(axis=0)
    settings = {"data": args.data, **options, "models": args.models, "seed": args.seed}
    result = envelope(
        NAME, settings, {"membership": args.seed},
        out=str(out), status=status, n_examples=len(dataset), n_models=args.models,
        examples_per_model_min=int(per_model.min()), examples_per_model_max=int(per_model.max()),
        skipped=[list(s) for s in dataset.skipped],
    )
    skipped = f"; {len(dataset.skipped)} bad inputs skipped" if dataset.skipped else ""
    emit(args, result,
         f"{status} {out}: {len(dataset)} examples x {args.models} models (seed {args.seed}), each example IN for "
         f"{args.models // 2}; {per_model.min()}..{per_model.max()} examples per model{skipped}")
    return 0
