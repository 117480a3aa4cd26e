"""``diffaudit mia``: membership inference (loss threshold, LiRA online/offline/fixed, Strong LiRA)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.attacks.membership.registry import ATTACK_NAMES, FEW_SHADOWS_PER_SIDE, PER_EXAMPLE_VARIANCE, get_attack
from diffaudit.attacks.membership.run import (MiaConfig, MiaScores, TargetSpec, check_enough_shadows, check_target,
                                              check_shadow_training, check_target_not_shadow, mia_models,
                                              run_mia, shadow_run_dirs, shadows_folder)
from diffaudit.attacks.membership.targets import mean_losses, shadows_per_side
from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_path, canonical_settings, data_options, emit, emit_finished, file_in_folder,
    refuse_files_for_folders, refuse_stores_for_models, upgrading_paths,
)
from diffaudit.cli.shadows import membership_digest
from diffaudit.core.batch_fit import batch_option
from diffaudit.core.comma_lists import comma_values
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import save_npz_atomic
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import Timer, stage_line, warning_line
from diffaudit.core.results import write_result
from diffaudit.data import load_dataset
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.digest import dataset_digest
from diffaudit.data.membership import load_membership
from diffaudit.evaluation.attack_evaluation import evaluate_attack
from diffaudit.evaluation.timestep_sweep import evaluate_sweep
from diffaudit.models.alike import check_models_alike
from diffaudit.models.digest import members_digest, model_digest
from diffaudit.models.scheduler import num_train_timesteps
from diffaudit.report.fmt import counted
from diffaudit.report.plots_roc import write_roc_png, write_sweep_png

NAME = "mia"
HELP = "membership inference with the loss threshold attack or LiRA (online, offline, fixed variance, Strong)"
DESCRIPTION = (
    "Membership inference against diffusion models (Carlini et al. 2023, Sec. 5). Computes each model's "
    "per-example loss L(x, t, ε) at --timesteps (cached under --out/losses, so a re-run reuses it; give several "
    "runs one --loss-cache to share it between attacks and output folders) and scores every example; larger scores mean 'more likely a member'. By default "
    "every shadow model is attacked in turn with the others as its shadows (leave-one-out, pooled); "
    "--target-index attacks one shadow, --target a separate run directory. Writes result.json (AUC, TPR at "
    "1% and 0.1% FPR with bootstrap intervals), scores.npz (id, score, member, example_index, model_index: one "
    "row per example, or per (target model, example) when every model is attacked in turn), roc.png "
    "(log-log) and, with --sweep, sweep.png (attack success over t, the paper's Figure 9)."
)

DEFAULT_STRONG_DRAWS = 20
#: The fewest bootstrap replicates --bootstrap takes: with 2, the "95% interval" of an AUC of 0.615 came out as
#: [0.609, 0.613], not even holding the estimate; percentiles at 2.5% and 97.5% need tens of replicates to mean much.
MIN_BOOTSTRAP = 20
#: The most bootstrap replicates: 10,000 already puts a 95% interval's ends within a fraction of its width;
#: 10^11 asked for terabytes.
MAX_BOOTSTRAP = 100_000
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`;
#: ``shadows`` is recorded resolved).
PATH_SETTINGS = ("data.spec", "data.options.cifar_root", "target.run")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(comma_values(text, int, "integers"))
    except DiffauditError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _upgrade_settings(old: dict[str, Any]) -> dict[str, Any]:
    """An earlier record read as today's: it kept ``--timesteps`` in the order given."""
    attack = old.get("attack")
    if isinstance(attack, dict) and isinstance(attack.get("timesteps"), list):
        old = {**old, "attack": {**attack, "timesteps": sorted(attack["timesteps"])}}
    return old


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each setting not named after its option (for a refusal to resume); ``attack.attack``,
    ``attack.sweep``, ... are named by the options they are named after (``--attack``, ``--sweep``); whom
    the attack targets by the flags that choose it."""
    return {"attack.n_draws": "--draws", "attack.noise_seed": "--seed", "membership.models": "--models",
            "target.mode": "whom it attacks (--target, --target-index, or each model in turn without either)",
            "target.index": "--target-index", "target.run": "--target"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_run_args(p)
    g = p.add_argument_group("models")
    g.add_argument("--shadows", default=None, help="folder of `diffaudit shadows` (model-00, model-01, ...); required, "
                   "except by the loss attack on one run (--target RUN --attack loss)")
    g.add_argument("--membership", default=None, help="membership-matrix file (default: SHADOWS/membership.npz)")
    g.add_argument("--models", type=int, default=None, help="use the first K shadow models (default: every column)")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--target", default=None, help="attack this separate run directory (its train_ids.json gives its members)")
    t.add_argument("--target-index", type=int, default=None, help="attack shadow model k with the others as shadows")
    a = p.add_argument_group("attack")
    a.add_argument("--attack", choices=ATTACK_NAMES, default="lira",
                   help="loss: -loss of the target; lira: per-example IN/OUT Gaussians; lira-offline: OUT only, "
                        "one-sided; *-fixed: one global variance (lira-fixed and lira-offline-fixed use one query: "
                        "noise draw 0, unflipped); strong-lira, strong-lira-fixed: LiRA over --draws noise draws and "
                        "their flips")
    a.add_argument("--timesteps", type=_int_list, default=(100,),
                   help="timestep(s) of the attack (several act as more queries), 0-based as diffusers counts them: "
                        "100 is the paper's t = 100 up to one step")
    a.add_argument("--sweep", type=_int_list, default=(), help="also evaluate at each of these timesteps, e.g. 10,50,100,200,300,500,1000 "
                   "(T itself, the paper's 1000, is the last step T-1; larger values are refused), and at each of --timesteps alone")
    a.add_argument("--draws", type=int, default=None,
                   help=f"strong-lira, strong-lira-fixed: noise draws ε per example (default {DEFAULT_STRONG_DRAWS}); "
                        "other attacks use one")
    a.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                   help="strong-lira, strong-lira-fixed: also query each image flipped horizontally, same ε "
                        "(default: on for both)")
    a.add_argument("--transform", choices=("log", "none"), default=None,
                   help=f"the LiRA attacks fit Gaussians to log(loss) or to the loss itself (default {MiaConfig.transform}; the "
                        "paper fits the loss, `none`: a loss is a mean of squares, right-skewed with a spread that grows "
                        "with its mean, and its log is close to Gaussian across shadows, as logit scaling is for "
                        "classifiers in LiRA)")
    a.add_argument("--strong-aggregate", choices=("sum-llr", "mean-loss"), default=None,
                   help="strong-lira, strong-lira-fixed: fit a Gaussian per query and sum the log-likelihood ratios (default: the "
                        "stronger on 8 digits models, AUC 0.961 against 0.821 with fixed variance and 0.820 against 0.747 "
                        "with per-example variance, docs/experiments.md), or average the losses over the queries first "
                        "(mean-loss, the paper's wording)")
    a.add_argument("--batch-size", type=batch_option, default=256,
                   help="examples per forward pass (the losses do not depend on it, in bf16 up to rounding); auto: on CUDA the largest that fits "
                        "within 80%% of the GPU's memory, probed for each model (a Stable Diffusion pipeline takes at most 64)")
    a.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="forward passes (auto: bf16 on CUDA, else fp32)")
    a.add_argument("--bootstrap", type=_bootstrap_count, default=200,
                   help=f"bootstrap replicates for the 95%% confidence intervals (0: none; else at least {MIN_BOOTSTRAP}: the "
                        "interval is read from the replicates' 2.5th and 97.5th percentiles, which a few cannot place)")
    a.add_argument("--loss-cache", default=None, help="folder of cached losses to share between runs, e.g. one per shadows folder: other attacks "
                        "and --fresh runs then reuse them (default: OUT/losses, which --fresh deletes)")


def _bootstrap_count(text: str) -> int:
    """--bootstrap: 0 (no intervals) or a count of at least :data:`MIN_BOOTSTRAP`, refused as the command line is read."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
    if n != 0 and not MIN_BOOTSTRAP <= n <= MAX_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"must be 0 (no intervals) or in [{MIN_BOOTSTRAP}, {MAX_BOOTSTRAP:,}] (the default is "
                                         f"200: a 95% interval is read from the replicates' percentiles); got {n}")
    return n


def clip_sweep(sweep: tuple[int, ...], n_timesteps: int) -> tuple[int, ...]:
    """Sweep timesteps in [0, T): the paper's t = 1000 means the last step, T − 1; a value beyond T (a typo,
    or a sweep written for a longer schedule) is refused rather than taken as T − 1 too (``audit`` checks its
    --sweep with this before anything is trained)."""
    beyond = sorted({int(t) for t in sweep if int(t) > n_timesteps})
    if beyond:
        raise DiffauditError(f"--sweep {','.join(map(str, beyond))}: beyond the model's {n_timesteps} timesteps "
                             f"(T = {n_timesteps} itself means the last one, {n_timesteps - 1})")
    return tuple(sorted({min(int(t), n_timesteps - 1) for t in sweep}))


#: Members or non-members below this many: the bootstrap interval, which resamples each class within
#: itself, barely covers that class's sampling (with 1 member, none at all), so the exact rank test says
#: how sure the AUC is (``rank_test`` in the result).
FEW_PER_CLASS = 10


def few_examples_test(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
    """The one-sided rank test of members' scores above non-members' (:func:`~diffaudit.report.rank_test.rank_test`:
    exact up to its enumeration limit), with ``n_orderings``, when either class has fewer than
    :data:`FEW_PER_CLASS` rows; None otherwise, or without both classes."""
    from diffaudit.report.rank_test import n_orderings, rank_test

    labels = np.asarray(labels, dtype=bool)
    m, n = int(labels.sum()), int((~labels).sum())
    if not m or not n or min(m, n) >= FEW_PER_CLASS:
        return None
    return {**rank_test(scores[labels], scores[~labels]), "n_orderings": n_orderings(m, n)}


def write_mia_outputs(out: Path, scores: MiaScores, dataset: ImageDataset, *, config: MiaConfig,
                      settings: dict[str, Any], seed: int, n_bootstrap: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Evaluate ``scores`` and write scores.npz, roc.png, sweep.png and result.json into ``out``."""
    main = scores.main
    ev = evaluate_attack(main.scores, main.labels, attack=scores.attack, timesteps=scores.timesteps,
                         n_bootstrap=n_bootstrap, seed=seed, groups=main.example_index)
    few = few_examples_test(main.scores, main.labels)
    keys = np.array(dataset.keys, dtype=str)[main.example_index]
    arrays = dict(id=keys, score=main.scores, member=main.labels, example_index=main.example_index,
                  model_index=main.model_index)
    sweep = None
    if scores.sweep:
        ts = sorted(scores.sweep)
        arrays["sweep_timesteps"] = np.array(ts, dtype=np.int64)
        arrays["sweep_scores"] = np.stack([scores.sweep[t].scores for t in ts])
        sweep = evaluate_sweep({t: s.scores for t, s in scores.sweep.items()}, main.labels, attack=scores.attack)
        write_sweep_png(out / "sweep.png", [sweep])
    save_npz_atomic(out / "scores.npz", **arrays)
    write_roc_png(out / "roc.png", [ev])
    fields = ev.to_dict()
    fields.update(
        target=scores.target.to_dict(), n_models=scores.n_models, shadows_per_side=scores.shadows_per_side,
        shadows_per_side_max=scores.shadows_per_side_max,
        n_examples=int(len(np.unique(main.example_index))),
        rows=("one per (target model, example) pair: every model in turn is the target, its rows pooled"
              if scores.target.mode == "leave-one-out" else "one per example"),
        queries_per_timestep=config.n_draws * (2 if config.flips else 1),
        n_draws=config.n_draws, flips=config.flips, transform=config.transform,
        strong_aggregate=config.strong_aggregate if scores.attack.startswith("strong") else None,
        sweep=None if sweep is None else sweep.to_dict(), scores_file="scores.npz", roc_png="roc.png",
        sweep_png=None if sweep is None else "sweep.png", score_direction="larger = more likely a member",
        mean_loss=mean_losses(main),
        **({"rank_test": few} if few is not None else {}),
        **extra,
    )
    return write_result(out / "result.json", NAME, settings, {"seed": seed, "noise_seed": config.noise_seed,
                                                              "bootstrap_seed": seed}, **fields)


def _summary(r: dict[str, Any]) -> str:
    tpr = r["tpr_at_fpr"]
    from diffaudit.report.fmt import fmt_pct  # as the report prints the same rate

    fmt = lambda v: "n/a (too few non-members)" if v is None else fmt_pct(v)  # noqa: E731
    ci = ((r.get("ci") or {}).get("auc") or {})
    chance = ""
    few = r.get("rank_test") if isinstance(r.get("rank_test"), dict) else None
    if few is not None and isinstance(few.get("pvalue"), (int, float)):
        from diffaudit.report.view_mia import smaller_class

        least = smaller_class(r["n_members"], r["n_nonmembers"])
        chance = (f"; with {least['few_count']} {least['few_class']} the interval understates their sampling's spread: "
                  f"one-sided rank test p = {few['pvalue']:.2g}"
                  + (" (indistinguishable from guessing)" if few["pvalue"] >= 0.05 else ""))
    elif isinstance(ci.get("low"), (int, float)) and isinstance(ci.get("high"), (int, float)) and ci["low"] <= 0.5 <= ci["high"]:
        chance = f"; indistinguishable from guessing: the AUC's interval [{ci['low']:.3f}, {ci['high']:.3f}] holds 0.5"
    loss = r.get("mean_loss") or {}
    losses = (f"; mean loss {loss['members']:.4g} on members, {loss['nonmembers']:.4g} held out"
              if isinstance(loss.get("members"), float) and isinstance(loss.get("nonmembers"), float) else "")
    return (f"{r['attack']}: AUC {r['auc']:.4f}, TPR {fmt(tpr.get('0.01'))} at 1% FPR, {fmt(tpr.get('0.001'))} at 0.1% FPR "
            f"({r['n_members']} member{'' if r['n_members'] == 1 else 's'}, {r['n_nonmembers']} "
            f"non-member{'' if r['n_nonmembers'] == 1 else 's'}){losses}{chance}")


def _warn_if_few_shadows(attack: str, membership, target: TargetSpec) -> None:
    """Say when an attack fits a variance per example from fewer than FEW_SHADOWS_PER_SIDE shadows a side."""
    if attack not in PER_EXAMPLE_VARIANCE:
        return
    per_side = shadows_per_side(membership, mode=target.mode, index=target.index)
    if per_side == 0:  # lira.py: a side without losses takes the other side's μ shifted by the mean gap, and the pooled σ
        warning_line("mia", f"{attack} fits a variance per example only from 2 or more IN and OUT shadows; some examples "
                     "have no shadow at all on one side (here as few as 0 a side): they take that side's mean from the "
                     "other side's, shifted by the mean IN - OUT gap of the examples that have both, and the pooled "
                     f"variance of {attack}-fixed, so little of their own shadows' losses scores them; train more "
                     f"shadows (every example IN and OUT for at least 2; with --models, use more of them)")
    elif per_side < 2:  # lira.py: a side of fewer than 2 losses takes that side's pooled σ
        warning_line("mia", f"{attack} fits a variance per example only from 2 or more IN and OUT shadows; "
                     f"examples scored with fewer (here as few as {per_side} a side) take the pooled variance of "
                     f"{attack}-fixed, so where all do the two attacks give the same scores; train more shadows for a "
                     f"per-example fit (below {FEW_SHADOWS_PER_SIDE} a side, {attack}-fixed is usually the stronger attack)")
    elif per_side < FEW_SHADOWS_PER_SIDE:
        warning_line("mia", f"{attack} fits a variance per example from as few as {per_side} IN and "
                     f"{per_side} OUT shadows; below {FEW_SHADOWS_PER_SIDE} a side, {attack}-fixed (one variance for all "
                     "examples) is usually the stronger attack")


def _shadow_models(args: argparse.Namespace, ds: ImageDataset) -> tuple[np.ndarray, list[Path], dict[str, Any] | None]:
    """(membership bool (N, M), the M shadow run folders, the settings' record of the matrix) of
    --shadows; with none given, the loss attack on one --target: M = 0 (its members from the run's
    train_ids.json). Anything else without --shadows is refused, saying what is missing."""
    if not args.shadows:
        if args.target and args.attack == "loss":
            for flag, value in (("--membership", args.membership), ("--models", args.models)):
                if value is not None:
                    raise DiffauditError(f"{flag} names the shadow models of --shadows, which the loss attack on one "
                                         "--target does without; leave it out, or pass --shadows")
            return np.zeros((len(ds), 0), dtype=bool), [], None
        raise DiffauditError(f"--shadows is required for --attack {args.attack}: the folder of `diffaudit shadows` whose "
                             "models and membership matrix say which example each model trained on. The loss attack "
                             "on one run needs none: `diffaudit mia --target RUN --attack loss` (its members from "
                             "RUN's train_ids.json, every other example of --data a non-member).")
    shadows = shadows_folder(args.shadows)
    mem_path = Path(file_in_folder(args.membership, "membership.npz")) if args.membership else shadows / "membership.npz"
    if not mem_path.exists():
        raise DiffauditError(f"membership file {mem_path} does not exist; pass --membership (the matrix the shadows were trained on)")
    mem = load_membership(mem_path, ds)
    m = mem.n_models if args.models is None else args.models
    if not 1 <= m <= mem.n_models:
        raise DiffauditError(f"--models must lie in [1, {mem.n_models}]; got {m}")
    return mem.matrix[:, :m], shadow_run_dirs(shadows, m), {"digest": membership_digest(mem), "models": m}


def _shaping_options(args: argparse.Namespace) -> tuple[str, str]:
    """``(--transform, --strong-aggregate)``, their defaults where not given; refused where given to an attack
    that has no use for them, which would otherwise run as if they were not given."""
    attack = get_attack(args.attack)
    if args.transform is not None and not attack.needs_shadows:
        raise DiffauditError(f"--transform is for the LiRA attacks, which fit Gaussians to shadow models' losses; "
                             f"--attack {args.attack} scores the target's loss as it is: drop --transform")
    if args.strong_aggregate is not None and not attack.all_queries:
        raise DiffauditError(f"--strong-aggregate says how strong-lira and strong-lira-fixed combine their queries; "
                             f"--attack {args.attack} uses one query per example: drop --strong-aggregate")
    return args.transform or MiaConfig.transform, args.strong_aggregate or MiaConfig.strong_aggregate


def _warn_flips_never_trained(config: MiaConfig, recipe: dict[str, Any] | None, run: Path | None) -> None:
    """Warn when the attack queries flipped images (``--flips``, Strong LiRA's default) of models that record
    they trained without flips (``--flip`` off in ``recipe``, :func:`~diffaudit.models.recipe.training_recipe` of
    ``run``, the first model read for all: one command trains them alike): a flipped image is one they never
    saw, so its queries add noise rather than signal (the paper's Strong LiRA queries the augmentations the
    models trained with)."""
    if config.flips and recipe is not None and recipe.get("flip") is False:
        warning_line("mia", f"--flips queries each image flipped too, but the models trained without flips (--flip off, "
                     f"{run}): a flipped image is one they never saw, so those queries add noise; --no-flips queries "
                     "them as they trained")


def _unlike_shadows(attack: str, target: TargetSpec, theirs: dict[str, Any] | None) -> list[str]:
    """How the --target model trained otherwise than its shadows, whose recipe is ``theirs`` (the first shadow's
    :func:`~diffaudit.models.recipe.training_recipe` for all: one `shadows` command trains them alike; compared
    by :func:`~diffaudit.models.recipe.recipe_differences`), said as a warning; empty for an attack without
    shadows, a target among them, or a model that records no recipe."""
    from diffaudit.models.recipe import recipe_differences, training_recipe

    if target.mode != "model" or theirs is None or not get_attack(attack).needs_shadows:
        return []
    mine = training_recipe(target.run)
    if mine is None:
        return []
    unlike = recipe_differences(mine, theirs)
    if unlike:
        warning_line("mia", f"--target {target.run} trained otherwise than the shadows ({'; '.join(unlike)}, the "
                     f"target's first): {attack} reads its losses against theirs as if they trained alike, so its scores "
                     "may be miscalibrated; train the shadows as the target trained (`audit --model` does)")
    return unlike


def run(args: argparse.Namespace) -> int:
    refuse_files_for_folders(args, {"target": "a model folder (a run, or a diffusers folder)",
                                    "shadows": "the folder of `diffaudit shadows`", "loss_cache": "a folder"})
    refuse_stores_for_models(args, ["target"])
    refuse_stores_for_models(args, ["shadows"], "the folder of `diffaudit shadows`")
    refuse_stores_for_models(args, ["loss_cache"], "a folder of cached losses (its own, or another mia's)")
    transform, aggregate = _shaping_options(args)  # before the data is read
    opts = data_options(args)
    from diffaudit.sampling.sources import is_stable_diffusion_dir

    # only a Stable Diffusion target's loss reads a caption per image; a pixel model's none
    ds = load_dataset(args.data, need_captions=bool(args.target) and is_stable_diffusion_dir(args.target), **opts)
    matrix, runs, mem_record = _shadow_models(args, ds)
    device = resolve_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    strong = args.attack.startswith("strong")
    n_draws = args.draws if args.draws is not None else (DEFAULT_STRONG_DRAWS if strong else 1)
    flips = strong if args.flips is None else args.flips
    t_max = num_train_timesteps(runs[0] if runs else args.target)  # the sweep's last step; every model's range is checked below
    # the attack's timesteps are pooled queries: their order means nothing, so it is recorded sorted
    config = MiaConfig(attack=args.attack, timesteps=tuple(sorted(args.timesteps)), sweep=clip_sweep(args.sweep, t_max),
                       n_draws=n_draws, flips=flips, noise_seed=args.seed, transform=transform,
                       strong_aggregate=aggregate, precision=precision, batch_size=args.batch_size)
    config.validate()
    if args.target_index is not None:
        target = TargetSpec(mode="shadow", index=args.target_index)
    elif args.target is not None:
        # as settings record it (result.json's copy is read by a redacted report, which hides absolute paths)
        target = TargetSpec(mode="model", run=Path(canonical_path(args.target)))
    else:
        target = TargetSpec()
    try:
        check_enough_shadows(args.attack, len(runs), target)  # before the warning on few shadows, and any folder
    except DiffauditError:  # too few columns may be another matrix than the shadows': that is what to say then
        check_shadow_training(ds, matrix, runs)
        raise
    check_target(ds, matrix, target)  # members and non-members both: before any loss or folder
    check_models_alike(mia_models(runs, target), ds.image_shape, ds.labels, timesteps=config.all_timesteps)
    # the weights and pixels behind the paths: shadows retrained or data rewritten in place are other inputs
    digests = {r.name: model_digest(r) for r in runs}
    target_digest = model_digest(target.run) if target.mode == "model" else None
    if target.mode == "model" and get_attack(args.attack).needs_shadows:
        check_target_not_shadow(target.run, runs, digests, target_digest)
    data_digest = dataset_digest(ds)
    settings = {
        "data": {"spec": args.data, "options": opts, "digest": data_digest},
        "membership": mem_record,  # None: the loss attack on one --target, without shadows
        "shadows": str(Path(args.shadows).resolve()) if args.shadows else None,
        "shadow_digests": digests,
        "target": target.to_dict(),
        "target_digest": target_digest,
        # and the training set its train_ids.json names (its members): corrected in place, it is another attack
        "target_members_digest": members_digest(target.run) if target.mode == "model" else None,
        "attack": {k: v for k, v in config.to_dict().items() if k != "batch_size"},
        "bootstrap": args.bootstrap,
        "seed": args.seed,
    }
    settings = canonical_settings(settings, PATH_SETTINGS)
    # a folder recorded before the members' digest takes today's
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh, upgrade=upgrading_paths(
        PATH_SETTINGS, then=lambda old: {"target_members_digest": settings["target_members_digest"],
                                         **_upgrade_settings(old)}))
    if emit_finished(args, out, resumed, _summary):
        return 0
    _warn_if_few_shadows(args.attack, matrix, target)
    from diffaudit.models.recipe import training_recipe

    first = runs[0] if runs else target.run  # the models' recipe, read once: the shadows', else the one target's
    recipe = training_recipe(first) if first is not None else None
    unlike = _unlike_shadows(args.attack, target, recipe if runs else None)
    _warn_flips_never_trained(config, recipe, first)
    cache = Path(args.loss_cache) if args.loss_cache else out / "losses"
    with Timer() as timer:
        scores = run_mia(ds, matrix, runs, config, target=target, cache_dir=cache, device=device,
                         data_digest=data_digest)
    rows = "(target, example) pairs" if target.mode == "leave-one-out" else "examples"  # one target: one row an example
    stage_line(f"mia: {config.attack} scored {len(scores.main.scores)} {rows} in {timer.seconds:.1f}s")
    extra = {"models": digests, "seconds": timer.seconds, "device": str(device), "precision": precision,
             **({"unlike_shadows": unlike} if unlike else {})}
    if target_digest is not None:
        extra["target_digest"] = target_digest
    if scores.n_identical_excluded:
        extra["n_identical_excluded"] = scores.n_identical_excluded
        stage_line(f"mia: {counted(scores.n_identical_excluded, 'non-member row')} left out: images that are, pixel for pixel, "
                   "also a member of the same model under another key (the model trained on them)")
    if scores.n_excluded:
        extra["n_excluded"] = scores.n_excluded
        stage_line(f"mia: {counted(scores.n_excluded, 'non-member row')} left out: near-duplicates the deduplicated target dropped "
                   "from training (copies of its members)")
    result = write_mia_outputs(out, scores, ds, config=config, settings=settings, seed=args.seed,
                               n_bootstrap=args.bootstrap, extra=extra)
    emit(args, result, _summary(result) + f"; results in {out}")
    return 0
