"""Membership inference end to end: losses of every model (cached), then the attack's scores.

:func:`run_mia` is the library behind ``diffaudit mia``: it computes (or reads from the cache, see
:mod:`.loss_cache`) the per-example losses of the shadow models and of the target, and scores them
with one attack from :mod:`.registry`, at the attack's timesteps and, optionally, at every timestep
of a sweep (the paper's Figure 9). Evaluation (AUC, TPR at FPR) is :mod:`diffaudit.evaluation`'s.

Who is attacked (:class:`TargetSpec`):

- ``leave-one-out`` (default): every shadow model in turn, the others being its shadows; scores of
  all targets are pooled (N·M rows).
- ``shadow``: shadow model k is the target, the other M − 1 its shadows (N rows).
- ``model``: a separate run directory, whose training set is read from its ``train_ids.json``,
  attacked with all M shadows (N rows).

Queries: each example gets ``n_draws`` noise draws ε (and their horizontal flips with ``flips``),
the same ε in every model. ``loss`` and the ``lira*`` variants take one query (``MiaConfig``
refuses more draws or flips for them); ``strong-lira`` uses all of them, summing per-query
log-likelihood ratios (``strong_aggregate="sum-llr"``, default) or averaging the losses first
(``"mean-loss"``).
Several attack timesteps act as more queries, whose losses every attack averages (``sum-llr``: sums
their ratios).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffaudit.attacks.membership.inputs import TRANSFORMS
from diffaudit.attacks.membership.lira import AGGREGATES
from diffaudit.attacks.membership.loss_cache import PRECISIONS, cached_model_losses
from diffaudit.data.digest import dataset_digest, identical_groups
from diffaudit.attacks.membership.registry import get_attack
from diffaudit.attacks.membership.sweep import sweep_scores
from diffaudit.attacks.membership.targets import (
    PooledScores, score_models, shadows_per_side_range, without_nonmember_rows,
)
from diffaudit.core.batch_fit import AUTO
from diffaudit.core.errors import DiffauditError
from diffaudit.core.progress import warning_line
from diffaudit.data.dataset import ImageDataset
from diffaudit.models.alike import check_models_alike
from diffaudit.models.digest import model_digest
from diffaudit.models.loss import MAX_NOISE_DRAWS
from diffaudit.models.run_files import is_model_from_elsewhere, read_dropped_duplicates
from diffaudit.models.run_record import check_trained_on, has_train_ids, no_train_ids_error

TARGET_MODES = ("leave-one-out", "shadow", "model")


@dataclass
class MiaConfig:
    """Settings of one membership-inference run (recorded in ``result.json``).

    Attributes:
        attack: registry name (``loss``, ``lira``, ``lira-offline``, ``lira-fixed``, ...).
        timesteps: diffusion timesteps of the attack, in [0, T) (paper default 100).
        sweep: timesteps of the Figure 9 sweep (empty: no sweep); a sweep also scores each of ``timesteps`` alone.
        n_draws: noise draws ε per example (Strong LiRA: up to 20).
        flips: also query the horizontally flipped image with each ε.
        noise_seed: seed of ε (same ε in every model).
        transform: ``log`` or ``none``: what LiRA fits Gaussians to.
        strong_aggregate: ``sum-llr`` or ``mean-loss`` (Strong LiRA only).
        precision: ``fp32`` or ``bf16`` forward passes.
        batch_size: examples per forward pass, or ``auto``: the largest that fits on CUDA (probed per model;
            :func:`~diffaudit.core.batch_fit.resolve_batch`), 256 elsewhere. It does not change the losses.
    """

    attack: str = "lira"
    timesteps: tuple[int, ...] = (100,)
    sweep: tuple[int, ...] = ()
    n_draws: int = 1
    flips: bool = False
    noise_seed: int = 0
    transform: str = "log"
    strong_aggregate: str = "sum-llr"
    precision: str = "fp32"
    batch_size: int | str = 256

    def validate(self) -> None:
        attack = get_attack(self.attack, transform=self.transform, strong_aggregate=self.strong_aggregate)
        if not attack.all_queries and (self.n_draws > 1 or self.flips):
            raise DiffauditError(
                f"attack {self.attack!r} uses one query per example (noise draw 0, unflipped); --draws and --flips "
                "are for strong-lira, which uses them all"
            )
        if not self.timesteps:
            raise DiffauditError("--timesteps: give at least one timestep")
        for flag, ts in (("--timesteps", self.timesteps), ("--sweep", self.sweep)):
            if len(set(ts)) != len(ts):
                raise DiffauditError(f"{flag} must not repeat a timestep; got {','.join(map(str, ts))}")
            if ts and min(ts) < 0:
                raise DiffauditError(f"{flag} must be >= 0; got {','.join(map(str, ts))}")
        if not 1 <= self.n_draws <= MAX_NOISE_DRAWS:
            raise DiffauditError(f"--draws must lie in [1, {MAX_NOISE_DRAWS:,}] (the paper: up to 20); got {self.n_draws}")
        if self.batch_size != AUTO and self.batch_size < 1:
            raise DiffauditError(f"--batch-size must be at least 1; got {self.batch_size}")
        if self.transform not in TRANSFORMS:
            raise DiffauditError(f"--transform must be one of {', '.join(TRANSFORMS)}")
        if self.strong_aggregate not in AGGREGATES:
            raise DiffauditError(f"--strong-aggregate must be one of {', '.join(AGGREGATES)}")
        if self.precision not in PRECISIONS:
            raise DiffauditError(f"--precision must be one of {', '.join(PRECISIONS)}")

    @property
    def all_timesteps(self) -> list[int]:
        """The attack's timesteps, then the sweep's not among them: every t whose losses are computed."""
        return list(dict.fromkeys([*self.timesteps, *self.sweep]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timesteps"], d["sweep"] = list(self.timesteps), list(self.sweep)
        return d


@dataclass
class TargetSpec:
    """Who is attacked: ``mode`` in ``leave-one-out``, ``shadow`` (with ``index``), ``model`` (with ``run``)."""

    mode: str = "leave-one-out"
    index: int | None = None
    run: Path | None = None

    def to_dict(self) -> dict:
        return {"mode": self.mode, "index": self.index, "run": None if self.run is None else str(self.run)}


@dataclass
class MiaScores:
    """Scores of one attack (larger = more likely a member).

    Attributes:
        attack: the attack's name.
        timesteps: the attack's timesteps.
        target: who was attacked.
        main: the pooled scores at ``timesteps``.
        sweep: timestep -> pooled scores at that timestep alone (empty without a sweep).
        n_models: number of shadow models.
        n_excluded: (target, example) rows left out of ``main``: near-duplicates that a deduplicated
            target dropped from training (copies of its members, not fair non-members).
        n_identical_excluded: (target, example) non-member rows left out of ``main`` because the
            dataset holds the same image (pixels and label) as a member of that target under another key
            (:func:`without_copies_of_members`).
        shadows_per_side: the fewest IN (= OUT) shadows an example was scored with
            (:func:`~.targets.shadows_per_side`); None for an attack without shadows.
        shadows_per_side_max: the most (:func:`~.targets.shadows_per_side_range`); None likewise.
    """

    attack: str
    timesteps: list[int]
    target: TargetSpec
    main: PooledScores
    sweep: dict[int, PooledScores] = field(default_factory=dict)
    n_models: int = 0
    n_excluded: int = 0
    n_identical_excluded: int = 0
    shadows_per_side: int | None = None
    shadows_per_side_max: int | None = None


def shadows_folder(path: str | Path) -> Path:
    """``path`` as a folder of shadow models; an error saying so when it is missing or a file."""
    root = Path(path)
    if not root.is_dir():
        raise DiffauditError(f"--shadows {root} {'is not a folder' if root.exists() else 'does not exist'} (expected "
                             "the folder of `diffaudit shadows`, holding model-00, model-01, ...)")
    return root


def shadow_run_dirs(shadows_dir: str | Path, n_models: int) -> list[Path]:
    """``shadows_dir/model-00 .. model-{M-1}``; raises naming the first that is missing or unfinished (a
    diffaudit run without its ``result.json``; a model diffaudit did not train, such as the diffusers folder
    ``audit --model`` links as model-00, is complete as it is)."""
    root = shadows_folder(shadows_dir)
    out = []
    for k in range(n_models):
        run = root / f"model-{k:02d}"
        if not (run / "result.json").exists() and not is_model_from_elsewhere(run):
            state = "unfinished" if run.exists() else "missing"
            there = sum(1 for d in root.glob("model-*") if (d / "result.json").exists())
            if k and not run.exists() and there == k:  # every model the folder holds, and the matrix asks for more
                raise DiffauditError(
                    f"the membership matrix has {n_models} columns, but {root} holds {k} shadow model{'s' * (k != 1)}: "
                    f"pass --models {k} to use those, or the --membership matrix they were trained on")
            raise DiffauditError(
                f"shadow model {k} ({run}) is {state}; re-run the `diffaudit shadows` command that made {root} "
                "(the same --data, --membership and training flags), which resumes where it stopped")
        out.append(run)
    return out


def target_membership(run_dir: str | Path, dataset: ImageDataset) -> np.ndarray:
    """bool (N,): which examples of ``dataset`` trained the run in ``run_dir`` (its ``train_ids.json``
    keys); refuses a ``dataset`` whose pixels under those keys are not the ones it trained on."""
    if not has_train_ids(run_dir):
        raise no_train_ids_error(run_dir, "--target", ". A shadow model of --shadows is --target-index K")
    rows = check_trained_on(run_dir, dataset, what="--target")
    members = np.zeros(len(dataset), dtype=bool)
    members[rows] = True
    return members


def check_target_spec(target: TargetSpec, n_models: int) -> None:
    """Refuse an unknown target mode, a ``--target-index`` outside [0, M) or a ``model`` target without a run."""
    if target.mode not in TARGET_MODES:
        raise DiffauditError(f"unknown target mode {target.mode!r}; choose one of {', '.join(TARGET_MODES)}")
    if target.mode == "shadow" and not (target.index is not None and 0 <= target.index < n_models):
        raise DiffauditError(f"--target-index must lie in [0, {n_models - 1}] (one of the {n_models} shadow models the "
                             f"attack reads: --models, else every column); got {target.index}")
    if target.mode == "model" and target.run is None:
        raise DiffauditError("target mode `model` needs a run directory (--target)")


def _who_and_advice(target: TargetSpec, n_models: int) -> tuple[str, str]:
    """(what labels the examples, what to change) for :func:`check_target`'s message."""
    if target.mode == "model":
        return (f"--target {target.run} (its train_ids.json)",
                "give a --data that holds both examples it trained on and examples it did not (e.g. the data it was "
                "trained from, without the --subset or other options that select only its training set)")
    if target.mode == "shadow":
        return (f"--target-index {target.index} (column {target.index} of the membership matrix)",
                "use a membership matrix whose columns each train on part of the examples (`diffaudit membership`)")
    return (f"the membership matrix (its first {n_models} columns, one per attacked model)",
            "use a membership matrix whose columns each train on part of the examples (`diffaudit membership`)")


def check_target(dataset: ImageDataset, membership: np.ndarray, target: TargetSpec) -> np.ndarray | None:
    """Refuse, before any loss is computed (and before ``diffaudit mia`` makes its output folder), a
    target whose labels hold no members or no non-members: the attack could not be evaluated, and
    finding out only after every model's losses wastes that work.

    The labels are those the evaluation uses: ``model``, the target run's ``train_ids.json`` over
    ``dataset`` (:func:`target_membership`, which also checks the pixels); ``shadow``, column
    ``index`` of ``membership``; ``leave-one-out``, every column of ``membership`` pooled.

    Returns:
        The target run's membership, bool (N,), in mode ``model``; None otherwise.
    """
    membership = np.asarray(membership, dtype=bool)
    check_target_spec(target, membership.shape[1])
    target_in = None
    if target.mode == "model":
        target_in = labels = target_membership(target.run, dataset)
    elif target.mode == "shadow":
        labels = membership[:, target.index]
    else:  # leave-one-out: every model is a target in turn, and their rows are pooled
        labels = membership
    n_in, n_all = int(np.count_nonzero(labels)), int(labels.size)
    who, advice = _who_and_advice(target, membership.shape[1])
    examples = f"the {len(dataset)} examples of --data {dataset.source}"
    where = f"of {examples}" if labels.ndim == 1 else f"among the (model, example) pairs of {labels.shape[1]} models and {examples}"
    if not 0 < n_in < n_all:
        raise DiffauditError(
            f"{who} makes {n_in} members and {n_all - n_in} non-members {where}: membership inference needs both to be "
            f"evaluated (nothing was computed); {advice}")
    copies = _copies_of_members(dataset, labels)
    if copies == n_all - n_in:  # left out after the losses (without_copies_of_members): none would remain
        raise DiffauditError(
            f"{who} makes {n_in} members and {n_all - n_in} non-members {where}, but every non-member is, pixel for "
            "pixel, also a member under another key (e.g. a held-out part that holds the training images): the model "
            "saw them, so no non-member remains to evaluate against (nothing was computed); give --data images the "
            "model never saw")
    return target_in


def _copies_of_members(dataset: ImageDataset, labels: np.ndarray) -> int:
    """How many non-member entries of ``labels`` (bool (N,), or (N, M): a column per model) are, pixel for
    pixel, an image that is a member of the same model (:func:`without_copies_of_members` leaves them out)."""
    groups = identical_groups(dataset)
    cols = labels[:, None] if labels.ndim == 1 else labels
    return sum(int(np.count_nonzero(~cols[g, m])) for g in groups for m in range(cols.shape[1]) if cols[g, m].any())


def check_shadow_training(dataset: ImageDataset, membership: np.ndarray, shadow_runs: Sequence[str | Path]) -> None:
    """Refuse a membership matrix or dataset the shadows were not trained on.

    Shadow k must have trained on exactly the examples IN column k (its ``train_ids.json``), and on
    their pixels in ``dataset`` (its recorded training-set digest). Without this, another matrix or
    another file with the same keys (``npz:<row>``) labels members wrongly and the AUC is wrong with
    no error. Runs that record no training set (diffusers folders) are taken on trust.
    """
    keys = np.asarray(dataset.keys, dtype=object)
    for k, run in enumerate(shadow_runs):
        if not has_train_ids(run):
            continue
        trained = set(keys[check_trained_on(run, dataset, what=f"shadow model {k}")])
        column = set(keys[np.asarray(membership[:, k], dtype=bool)])
        if trained != column:
            raise DiffauditError(
                f"shadow model {k} ({run}) trained on {len(trained)} examples, but column {k} of the membership "
                f"matrix has {len(column)} IN and they differ in {len(trained ^ column)}: give the --membership "
                "and --data the shadows were trained on"
            )


def check_target_not_shadow(target_run: str | Path, shadow_runs: Sequence[str | Path],
                            digests: dict[str, str] | None = None, target_digest: str | None = None) -> None:
    """Refuse a ``--target`` that is one of the shadows, by path or as a copy (same weights): its own
    losses would enter its IN/OUT statistics. ``digests`` (run name -> :func:`model_digest`) and
    ``target_digest`` are used when the caller has them."""
    target = Path(target_run)
    hint = "use --target-index for a shadow as the target"
    for run in shadow_runs:
        if target.resolve() == Path(run).resolve():
            raise DiffauditError(f"--target {target} is one of the shadows: its own losses would enter its IN/OUT statistics; {hint}")
    t = target_digest or model_digest(target)
    for run in shadow_runs:
        d = (digests or {}).get(Path(run).name) or model_digest(run)
        if d == t:
            raise DiffauditError(f"--target {target} has the same weights as the shadow {run} (a copy): its own losses would "
                                 f"enter its IN/OUT statistics; {hint}")


def check_enough_shadows(attack_name: str, n_models: int, target: TargetSpec) -> None:
    """Refuse an attack that reads shadows when fewer than 2 models are left besides the target
    (``n_models`` shadow folders' models; a separate ``--target`` is not among them)."""
    if not get_attack(attack_name).needs_shadows:
        return
    n_shadows = n_models if target.mode == "model" else n_models - 1
    if n_shadows < 2:
        among = "" if target.mode == "model" else f" ({n_models} model{'s' * (n_models != 1)}, the target among them)"
        raise DiffauditError(
            f"attack {attack_name!r} needs at least 2 shadow models besides the target; got {n_shadows}{among}: use more "
            "of the shadows (--models) or train 4 or more on random halves (`diffaudit membership --models 4`)")


def mia_models(shadow_runs: Sequence[str | Path], target: TargetSpec) -> list[tuple[str, Path]]:
    """(flag, folder) of every model whose losses the attack compares, a separate target first: what
    :func:`~diffaudit.models.alike.check_models_alike` checks."""
    shadows = [("--shadows", Path(r)) for r in shadow_runs]
    return ([("--target", Path(target.run))] if target.mode == "model" else []) + shadows


def run_mia(
    dataset: ImageDataset,
    membership: np.ndarray,
    shadow_runs: Sequence[str | Path],
    config: MiaConfig,
    *,
    target: TargetSpec | None = None,
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    data_digest: str | None = None,
) -> MiaScores:
    """Compute (or read) the losses and score ``config.attack``.

    Args:
        dataset: the N examples (the shadows' training pool).
        membership: bool (N, M), column k = training set of ``shadow_runs[k]``.
        shadow_runs: M run directories.
        config: the attack settings.
        target: who is attacked (default leave-one-out).
        cache_dir: loss cache root (see :mod:`.loss_cache`).
        device: where the forward passes run.
        data_digest: :func:`~diffaudit.data.digest.dataset_digest` of ``dataset`` when the caller
            already has it (the loss cache's folder names use it).

    Returns:
        :class:`MiaScores` with scores float (R,), larger = more likely a member.
    """
    config.validate()
    target = target or TargetSpec()
    membership = np.asarray(membership, dtype=bool)
    n, m = len(dataset), len(shadow_runs)
    if membership.shape != (n, m):
        raise DiffauditError(f"membership matrix has shape {membership.shape}; expected ({n}, {m}) "
                             f"for {n} examples and {m} shadow models")
    attack = get_attack(config.attack, transform=config.transform, strong_aggregate=config.strong_aggregate)
    check_target_spec(target, m)
    check_enough_shadows(config.attack, m, target)

    per_side = (shadows_per_side_range(membership, mode=target.mode, index=target.index) if attack.needs_shadows
                else (None, None))
    check_shadow_training(dataset, membership, shadow_runs)
    target_in = check_target(dataset, membership, target)  # members and non-members both, before any loss
    all_ts = config.all_timesteps
    check_models_alike(mia_models(shadow_runs, target), dataset.image_shape, dataset.labels, timesteps=all_ts)
    data_fp = data_digest or dataset_digest(dataset)

    def losses_of(run: str | Path, name: str) -> np.ndarray:
        return cached_model_losses(
            run, dataset, timesteps=all_ts, n_draws=config.n_draws, flips=config.flips,
            noise_seed=config.noise_seed, precision=config.precision, batch_size=config.batch_size,
            device=device, cache_dir=cache_dir, name=name, data_digest=data_fp,
            flag="--target" if name == "target" else "--shadows",
        )

    # Which shadow models' losses are needed: all of them unless the attack ignores shadows.
    if target.mode == "leave-one-out" or attack.needs_shadows:
        needed = list(range(m))
    elif target.mode == "shadow":
        needed = [int(target.index)]
    else:
        needed = []
    shadow_losses = {k: losses_of(shadow_runs[k], f"model-{k:02d}") for k in needed}
    target_losses = losses_of(target.run, "target") if target.mode == "model" else None
    q = config.n_draws * (2 if config.flips else 1)
    # (N, M, T, Q); models an attack does not read stay zero (score_models never reads them).
    all_losses = np.zeros((n, m, len(all_ts), q))
    for k, arr in shadow_losses.items():
        all_losses[:, k] = arr
    who = dict(mode=target.mode, index=target.index, target_in=target_in)

    def flat(a: np.ndarray) -> np.ndarray:  # (..., T', Q) -> (..., T'·Q): timesteps act as queries
        return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])

    n_main = len(config.timesteps)
    main = score_models(attack, flat(all_losses[:, :, :n_main]), membership, **who,
                        target_losses=None if target_losses is None else flat(target_losses[:, :n_main]))
    sweep: dict[int, PooledScores] = {}
    if config.sweep:  # with the attack's own timesteps, each alone: their losses are computed anyway, and the
        # sweep's best t is then one among every t measured, not only those --sweep lists
        sweep_ts = sorted({*config.sweep, *config.timesteps})
        pos = [all_ts.index(t) for t in sweep_ts]
        sweep = sweep_scores(attack, all_losses[:, :, pos], membership, sweep_ts, **who,
                             target_losses=None if target_losses is None else target_losses[:, pos])
    scores = MiaScores(attack=config.attack, timesteps=list(config.timesteps), target=target, main=main,
                       sweep=sweep, n_models=m, shadows_per_side=per_side[0], shadows_per_side_max=per_side[1])
    # the near-duplicates a deduplicated model dropped first (the more specific reason), then exact copies
    scores = without_dropped_duplicates(scores, dataset, shadow_runs)
    return without_copies_of_members(scores, dataset, membership, target_in)


def attacked_models(target: TargetSpec, n_models: int) -> list[int]:
    """The models whose rows the scores hold, as :class:`~.targets.PooledScores` numbers them: -1 for a
    separate target, its column for a shadow, every column when each is attacked in turn (leave-one-out)."""
    if target.mode == "model":
        return [-1]
    if target.mode == "shadow":
        return [int(target.index)]
    return list(range(n_models))


def without_copies_of_members(scores: MiaScores, dataset: ImageDataset, membership: np.ndarray,
                              target_in: np.ndarray | None) -> MiaScores:
    """``scores`` without each attacked model's non-member rows for images that one of its members is,
    pixel for pixel and with the same label (a dataset holding an image twice, under two keys, one of
    them trained on): the model saw those very pixels, so the row is no non-member, and counted as one it
    is a false positive no attack can avoid. verify leaves them out of its false-positive baseline alike."""
    groups = identical_groups(dataset)
    if not groups:
        return scores
    rows_by_model = {}
    for m in attacked_models(scores.target, membership.shape[1]):
        inside = np.asarray(target_in, dtype=bool) if m == -1 else membership[:, m]
        rows = [int(i) for g in groups if inside[g].any() for i in g if not inside[i]]
        if rows:
            rows_by_model[m] = np.array(sorted(rows), dtype=np.int64)
    if not rows_by_model:
        return scores
    main = without_nonmember_rows(scores.main, rows_by_model)
    return replace(scores, main=main, sweep={t: without_nonmember_rows(s, rows_by_model) for t, s in scores.sweep.items()},
                   n_identical_excluded=len(scores.main.scores) - len(main.scores))


def without_dropped_duplicates(scores: MiaScores, dataset: ImageDataset, shadow_runs: Sequence[str | Path]) -> MiaScores:
    """``scores`` without each target model's non-member rows for the near-duplicates it dropped from
    training (``diffaudit train --dedup``): a dropped image is a copy of one the model trained on, so it
    scores like a member and would count as a false positive. Models trained without ``--dedup`` drop
    nothing; a deduplicated run whose record is gone keeps them, and a warning says so."""
    runs = {m: scores.target.run if m == -1 else shadow_runs[m] for m in attacked_models(scores.target, len(shadow_runs))}
    index = dataset.index_of()
    rows_by_model = {}
    for m, run in runs.items():
        dropped = read_dropped_duplicates(run)
        if dropped is None:
            warning_line("mia", f"{run} was deduplicated, but its record of the dropped near-duplicates is gone: they stay "
                         "among its non-members, where they score like members")
        elif dropped:
            rows_by_model[m] = np.array(sorted(index[k] for k in dropped if k in index), dtype=np.int64)
    if not any(len(r) for r in rows_by_model.values()):
        return scores
    main = without_nonmember_rows(scores.main, rows_by_model)
    return replace(scores, main=main, sweep={t: without_nonmember_rows(s, rows_by_model) for t, s in scores.sweep.items()},
                   n_excluded=len(scores.main.scores) - len(main.scores))
