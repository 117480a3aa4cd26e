"""``diffaudit inpaint``: the inpainting reconstruction attack (Carlini et al. 2023, Section 5.3).

Targets are members (in the target run's ``train_ids.json``) and non-members of ``--data``. Each
is masked, inpainted ``--n-inpaint`` times by the target model, scored by target/shadow loss at
``--timestep`` with a shadow that did not train on it, and the best ``--top-k`` are compared with
the original (ℓ2). Output folder:

    settings.json            the settings (resume checks them)
    targets/<index>.json     one finished target (TargetResult + grid path); finished ones are skipped on re-run
    targets/<index>.npz      the kept inpaintings (uint8 (k, H, W, C)) and their target/shadow loss ratios
                             (``loss_ratios``, lowest first: lower = better reconstruction)
    grids/<index>.png        original, masked input, kept reconstructions
    result.json              envelope + targets + summary (members vs non-members) + auc, and ``top_k``:
                             how many inpaintings ``mean_topk_l2`` averages per target (the paper's 10;
                             fewer when --n-inpaint is smaller). Results written before it was recorded
                             name that field ``mean_top10_l2`` whatever k was (readers accept both).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_path, canonical_settings, data_options, emit, file_in_folder,
    refuse_stores_for_models, speaking_as,
)
from diffaudit.core.batch_fit import AUTO, batch_option, resolve_batch
from diffaudit.core.errors import DiffauditError

if TYPE_CHECKING:  # annotations only: numpy is imported where it is used
    import numpy as np

# Heavy imports (torch, the attack, the data loaders) happen inside the functions: building the
# parser for `diffaudit --help` imports every command module.
MASK_CHOICES = "left, right, top, bottom, random, center"  # diffaudit.sampling.masks.MASK_KINDS

NAME = "inpaint"
HELP = "inpainting attack: reconstruct masked training images with the target model, ranked with a shadow model"
DESCRIPTION = (
    "Mask part of each target image (default: the left half), inpaint it --n-inpaint times with the target "
    "model (RePaint resampling), score every inpainting by target loss / shadow loss at t=100 (the shadow did "
    "not train on the image), keep the best --top-k and report their ℓ2 to the original, for members and "
    "non-members of the target's training set (paper Section 5.3). Resumes per target. Pixel-space diffusion "
    "models only (a diffaudit run or a diffusers UNet2DModel folder, as the paper attacks on CIFAR-10): a Stable "
    "Diffusion pipeline is refused."
)
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`;
#: so are a mask image's and the shadow runs' in ``digests``: :func:`_settings`).
#: --targets unless given: members and non-members drawn at random.
DEFAULT_TARGETS = "8,8"
PATH_SETTINGS = ("model", "shadow", "shadows", "membership", "data.spec", "data.options.cifar_root")


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each setting not named after its option (for a refusal to resume)."""
    return {"n_inpaintings": "--n-inpaint"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="target model: a diffaudit run directory (with train_ids.json)")
    g = p.add_argument_group("shadow model (did not train on the targets)")
    g.add_argument("--shadow", help="one shadow run directory, trained on none of the targets")
    g.add_argument("--shadows", help="folder of shadow runs model-00, model-01, ... (from `diffaudit shadows`)")
    g.add_argument("--membership", help="membership file of --shadows: per target, a shadow whose column says OUT "
                   "(default: SHADOWS/membership.npz)")
    add_data_args(p)
    t = p.add_argument_group("targets")
    t.add_argument("--targets", default=None, help=f"N_IN,N_OUT: seeded random members and non-members of --data (default "
                   f"{DEFAULT_TARGETS})")
    t.add_argument("--target-keys", help="comma-separated example ids to attack instead of --targets (membership from "
                   "train_ids.json)")
    a = p.add_argument_group("attack")
    a.add_argument("--mask", default="left", help=f"{MASK_CHOICES} (the hidden region; random: the paper's "
                   "\"random halves\", one of left, right, top and bottom per target, seeded) or a mask image (nonzero = known)")
    a.add_argument("--n-inpaint", type=int, default=64, help="inpaintings per target (the paper: 5,000)")
    a.add_argument("--top-k", type=int, default=None, help="best-scored inpaintings kept per target (default: 10, the "
                   "paper's, or --n-inpaint when fewer)")
    a.add_argument("--steps", type=int, default=50, help="respaced sampling levels")
    a.add_argument("--jump-length", type=int, default=5, help="RePaint jump length j")
    a.add_argument("--jump-n-sample", type=int, default=2, help="RePaint resamplings r (1 = none)")
    a.add_argument("--eta", type=float, default=1.0, help="noise scale of each step (1 = DDPM ancestral)")
    a.add_argument("--timestep", type=int, default=100, help="timestep of the scoring loss")
    a.add_argument("--n-draws", type=int, default=4, help="noise draws ε of the scoring loss (same for both models)")
    f = p.add_argument_group("speed")
    f.add_argument("--batch-size", type=batch_option, default=1024,
                   help="inpaintings per model call (many targets share a batch; results do not depend on it, with "
                        "--bf16 up to rounding); auto: on CUDA the largest that fits within 80%% of the GPU's memory, "
                        "probed on the target model")
    f.add_argument("--bf16", action="store_true", help="run the models in bfloat16 (CUDA)")
    f.add_argument("--compile", action="store_true", help="torch.compile the UNets (CUDA)")
    add_run_args(p)


# --------------------------------------------------------------------------- targets and shadows

def parse_counts(text: str, flag: str = "--targets") -> tuple[int, int]:
    """N_IN,N_OUT from ``text`` (``flag`` names the option in errors)."""
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise DiffauditError(f"{flag} must be N_IN,N_OUT (two integers); got {text!r}") from None
    if a < 0 or b < 0 or a + b == 0:
        raise DiffauditError(f"{flag} must be non-negative and not both zero; got {text!r}")
    return a, b


def targets_flag() -> str:
    """The flag that gives the target counts: ``--targets``, or ``--inpaint-targets`` inside an audit."""
    return "--targets" if speaking_as("inpaint") == "inpaint" else "--inpaint-targets"


def parse_target_keys(ds, target_keys: str) -> list[int]:
    """Dataset indices of the comma-separated example ids of ``--target-keys``, in the order given.

    Refuses an unknown id, an id given twice (each target is attacked and counted once) and a list
    that names no id at all (``" , "``: a run with zero targets would finish and report nothing)."""
    index = ds.index_of()
    keys = [k.strip() for k in target_keys.split(",") if k.strip()]
    if not keys:
        raise DiffauditError(f"--target-keys names no example (got {target_keys!r}): give comma-separated example ids "
                             f"of {ds.source}, or leave it out and use --targets N_IN,N_OUT")
    out = []
    for k in keys:
        if k not in index:
            raise DiffauditError(f"--target-keys: {k!r} is not an example of {ds.source}")
        if index[k] in out:
            raise DiffauditError(f"--target-keys: {k!r} is given twice (each target is attacked and counted once)")
        out.append(index[k])
    return out


def select_targets(ds, train_keys: set[str], *, targets: str, target_keys: str | None, seed: int,
                   not_nonmembers: set[str] = frozenset(), usable: np.ndarray | None = None) -> list[int]:
    """Dataset indices of the targets: explicit keys (:func:`parse_target_keys`), or N_IN members and
    N_OUT non-members drawn with a generator seeded by ``seed`` (sorted).

    Non-members are drawn from outside ``not_nonmembers`` too (near-duplicates a deduplicated target
    dropped: copies of its members). ``usable`` (bool (len(ds),), None = all) limits both draws to the
    examples a shadow did not train on (:func:`shadow_candidates`): a target needs a shadow that is
    OUT for it, so drawing from the rest would fail later for no fault of the user's. With every
    example usable the draws are the same as without ``usable``."""
    import numpy as np

    from diffaudit.core.seeds import derive_seed, numpy_rng

    if target_keys is not None:
        return parse_target_keys(ds, target_keys)
    n_in, n_out = parse_counts(targets)
    member = np.array([k in train_keys for k in ds.keys], dtype=bool)
    nonmember = ~member & ~np.array([k in not_nonmembers for k in ds.keys], dtype=bool)
    ok = np.ones(len(member), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    ins, outs = np.flatnonzero(member & ok), np.flatnonzero(nonmember & ok)
    if n_in > len(ins) or n_out > len(outs):
        raise DiffauditError(f"{targets_flag()} {targets}: {_pool_text(ds, member, nonmember, ok)}")
    rng = numpy_rng(derive_seed(seed, "inpaint-targets"))
    return sorted([int(i) for i in rng.choice(ins, n_in, replace=False)] + [int(i) for i in rng.choice(outs, n_out, replace=False)])


def _pool_text(ds, member, nonmember, usable) -> str:
    """How many members and non-members the draws had, and, where shadows ruled some out, of how many."""
    text = (f"{ds.source} holds {int((member & usable).sum())} members and {int((nonmember & usable).sum())} "
            "non-members of the target's training set")
    if usable.all():
        return text
    return (f"{text} that a shadow did not train on (a target must be scored by a shadow that never saw it); "
            f"{int(member.sum())} members and {int(nonmember.sum())} non-members in all")


def _shadow_runs(folder: Path) -> dict[int, Path]:
    runs = {}
    for p in sorted(folder.glob("model-*")):
        tail = p.name.removeprefix("model-")
        if p.is_dir() and tail.isdigit():
            runs[int(tail)] = p
    if not runs:
        raise DiffauditError(f"--shadows {folder}: no model-NN run directories (make them with `diffaudit shadows`)")
    return runs


def check_shadow_args(args) -> None:
    """Exactly one of ``--shadow`` or ``--shadows``, whose ``--membership`` defaults to the folder's own
    ``membership.npz`` (as `diffaudit shadows` writes it and `diffaudit mia` reads it)."""
    if bool(args.shadow) == bool(args.shadows):
        raise DiffauditError("give exactly one of --shadow RUN or --shadows DIR [--membership FILE]")
    for flag, value in (("--shadow", args.shadow), ("--shadows", args.shadows)):
        if value and not Path(value).exists():  # before the targets are drawn, whose refusal would come first
            raise DiffauditError(f"{flag} {value} does not exist")
    if args.shadows and not args.membership:
        default = Path(args.shadows) / "membership.npz"
        if not default.is_file():
            raise DiffauditError(f"--shadows needs --membership (which shadow trained on which example): {default} does not exist")
        args.membership = str(default)
    args.membership = file_in_folder(args.membership, "membership.npz")


def shadow_candidates(args, ds) -> tuple[list[Path], np.ndarray]:
    """The shadow runs that may score a target, and which of them are OUT for which example.

    Returns ``(runs, out)``: ``out`` is bool (len(ds), len(runs)), ``out[i, k]`` = ``runs[k]`` did
    not train on example i. ``--shadow``: that one run, OUT for every example outside its
    ``train_ids.json`` (a folder without one, e.g. a diffusers model, for all). ``--shadows``: the
    folder's ``model-NN`` runs in column order, less the target run itself, OUT as ``--membership``
    says. ``out.any(1)`` is the pool random targets are drawn from; a target is scored by its first
    OUT run (:func:`assign_shadows`).
    """
    import numpy as np

    from diffaudit.data import load_membership
    from diffaudit.models.run_files import is_model_from_elsewhere
    from diffaudit.models.run_record import has_train_ids, read_train_keys

    target_run = Path(args.model).resolve()
    check_shadow_args(args)
    if args.shadow:
        run = Path(args.shadow)
        if run.resolve() == target_run:
            raise DiffauditError(f"the shadow {run} is the target model itself")
        trained = set(read_train_keys(run, "--shadow")) if has_train_ids(run) else set()
        return [run], np.array([k not in trained for k in ds.keys], dtype=bool).reshape(len(ds), 1)
    mem = load_membership(args.membership, ds)
    runs = _shadow_runs(Path(args.shadows))
    cols = [k for k in sorted(runs) if k < mem.matrix.shape[1] and runs[k].resolve() != target_run]
    unfinished = next((k for k in cols if not (runs[k] / "result.json").exists() and not is_model_from_elsewhere(runs[k])), None)
    if unfinished is not None:  # said before targets are drawn among them, as mia says it
        raise DiffauditError(f"shadow model {unfinished} ({runs[unfinished]}) is unfinished; re-run the `diffaudit shadows` "
                             f"command that made {args.shadows} (the same --data, --membership and training flags), which "
                             "resumes where it stopped")
    return [runs[k] for k in cols], ~np.asarray(mem.matrix, dtype=bool)[:, cols]


def assign_shadows(args, ds, targets: list[int], candidates=None) -> dict[int, Path]:
    """Target index -> the shadow run that scores it: the first candidate OUT for it (never the target
    itself), checked against that run's own ``train_ids.json``. ``candidates``: the result of
    :func:`shadow_candidates` when the caller has it already."""
    import numpy as np

    from diffaudit.models.run_record import has_train_ids, read_train_keys

    runs, out = shadow_candidates(args, ds) if candidates is None else candidates
    chosen = {}
    for i in targets:
        ks = np.flatnonzero(out[i])
        if not len(ks):
            if args.shadow:
                raise DiffauditError(f"shadow {args.shadow} trained on target {ds.keys[i]!r}: it must be a model that "
                                     "did not see the image")
            raise DiffauditError(f"no shadow in {args.shadows} is OUT for target {ds.keys[i]!r} (and not the target model)")
        chosen[i] = runs[int(ks[0])]
    cache: dict[Path, set[str]] = {}
    for i, run in chosen.items():  # a membership file may disagree with what a run recorded
        if run not in cache:
            cache[run] = set(read_train_keys(run, "shadow")) if has_train_ids(run) else set()
        if ds.keys[i] in cache[run]:
            raise DiffauditError(f"shadow {run} trained on target {ds.keys[i]!r}: it must be a model that did not see the image")
    ours = set(ds.keys)
    for run, keys in cache.items():
        if keys - ours:  # ids that are not --data's say nothing of the targets: their pixels do
            _refuse_targets_seen_by_pixels(run, keys, ds, [i for i, r in chosen.items() if r == run])
    return chosen


def _refuse_targets_seen_by_pixels(run: Path, keys: set[str], ds, targets: list[int]) -> None:
    """Refuse a shadow that trained on a target's image under another id (a ``dedup --write-deduped`` file
    names its images ``npz:<i>``): its training images, read from the data its settings record, are compared
    with the targets' pixel for pixel. Said aloud, not refused, when that data cannot be read."""
    from diffaudit.core.progress import warning_line
    from diffaudit.data import load_dataset
    from diffaudit.data.digest import shared_images
    from diffaudit.data.options import data_flags
    from diffaudit.models.run_files import trained_data

    recorded = trained_data(run)
    try:
        if recorded is None:
            raise DiffauditError("its settings do not record it")
        theirs = load_dataset(recorded[0], need_captions=False, **recorded[1])
    except DiffauditError as exc:
        warning_line("inpaint", f"shadow {run} trained on examples that are not in --data, and the data it trained on "
                     f"cannot be read ({exc}): whether it saw a target's image under another id is not checked")
        return
    index = theirs.index_of()
    trained = theirs.subset(sorted(index[k] for k in keys if k in index))
    seen = shared_images(ds.subset(targets), trained)
    if seen:
        i, j = seen[0]
        raise DiffauditError(f"shadow {run} trained on the image of target {ds.keys[targets[i]]!r}, pixel for pixel, as "
                             f"{trained.keys[j]!r} of --data {data_flags(*recorded)} ({len(seen)} of its {len(targets)} "
                             "targets): it must be a model that did not see the image")


# --------------------------------------------------------------------------- models

def _load(path: Path, device, args):
    import torch

    from diffaudit.models.denoiser import load_denoiser

    flag = "--model" if Path(path).resolve() == Path(args.model).resolve() else ("--shadow" if args.shadow else "--shadows")
    den = load_denoiser(path, device=device, flag=flag)
    if device.type == "cuda" and (args.bf16 or args.compile):
        den.optimise_for_gpu(dtype=torch.bfloat16 if args.bf16 else torch.float32, compile=args.compile)
    return den


class _Models:
    """Loaded denoisers by path (the target stays; shadows are swapped as the targets need them)."""

    def __init__(self, device, args):
        self.device, self.args, self._cache = device, args, {}

    def get(self, path: Path):
        key = Path(path).resolve()
        if key not in self._cache:
            if len(self._cache) >= 3:
                self._cache.pop(next(k for k in self._cache if k != Path(self.args.model).resolve()))
            self._cache[key] = _load(Path(path), self.device, self.args)
        return self._cache[key]


# --------------------------------------------------------------------------- run

def check_models_fit(target: Path, shadows: list[Path], ds, *, timestep: int, shadow_flag: str = "--shadow") -> None:
    """Before any inpainting: the target and every shadow take ``ds``'s images and are built alike
    (conditioning, noise schedule, prediction type: :func:`~diffaudit.models.alike.check_models_alike`),
    with the scoring ``timestep`` in their schedule, and the target's scheduler is one the sampler follows. Errors name a shadow by ``shadow_flag``
    (``--shadow`` or ``--shadows``), the flag its path came from."""
    from diffaudit.models.alike import check_models_alike
    from diffaudit.models.denoiser import read_sampling_schedule

    check_models_alike([("--model", target)] + [(shadow_flag, s) for s in shadows], ds.image_shape, ds.labels,
                       timesteps=[timestep], timestep_flag="--timestep")
    # the target is sampled (inpainted): a schedule the sampler follows; the shadows are only scored
    read_sampling_schedule(target).check(f"--model {target}: the scheduler")


def _settings(args, config, device, ds, shadows: dict[int, Path], masks: dict) -> dict:
    import hashlib

    import numpy as np

    from diffaudit.data.digest import dataset_digest
    from diffaudit.models.digest import model_digest
    from diffaudit.sampling.masks import MASK_KINDS

    used = sorted({canonical_path(p) for p in shadows.values()})
    return canonical_settings({
        "model": str(args.model), "shadow": args.shadow, "shadows": args.shadows, "membership": args.membership,
        "data": {"spec": args.data, "options": data_options(args)},
        # what the paths alone do not tell: weights retrained and data rewritten in place, and which
        # shadow scores which target (a rewritten --membership may assign others)
        "digests": {
            "data": dataset_digest(ds), "model": model_digest(args.model),
            "shadows": {p: model_digest(p) for p in used},
            "assignment": _assignment(shadows),
        },
        "targets": _canonical_targets(args.targets) if args.target_keys is None else None,
        "target_keys": _canonical_keys(args.target_keys),
        "mask": args.mask if args.mask in MASK_KINDS else canonical_path(args.mask),
        # a mask image's contents, not only its path: a rewritten mask file must not resume into a mix
        # (the built-in kinds are fixed by their name and the seed)
        **({} if args.mask in MASK_KINDS else {"mask_digest": hashlib.sha256(
            np.stack([np.asarray(masks[i], dtype=np.uint8) for i in sorted(masks)]).tobytes()).hexdigest()[:16]}),
        "n_inpaintings": config.n_inpaint, "top_k": config.top_k, "steps": config.steps,
        "jump_length": config.jump_length, "jump_n_sample": config.jump_n_sample, "eta": config.eta,
        "timestep": config.timestep, "n_draws": config.n_draws, "seed": config.seed,
        "bf16": bool(args.bf16 and device.type == "cuda"),  # the numbers depend on it; --compile and --batch-size do not
    }, PATH_SETTINGS)


def _assignment(shadows: dict[int, Path], spell=canonical_path) -> int:
    """A digest of which shadow run scores which target, each run's path as ``spell`` writes it."""
    import json

    from diffaudit.core.seeds import derive_seed

    return derive_seed(json.dumps(sorted((i, spell(p)) for i, p in shadows.items())))


def _canonical_targets(text: str | None) -> str | None:
    """``--targets`` as recorded: "N_IN,N_OUT" without spaces (``"8, 8"`` and ``"8,8"`` are one setting)."""
    return text if text is None else ",".join(str(v) for v in parse_counts(text, targets_flag()))


def _canonical_keys(text: str | None) -> str | None:
    """``--target-keys`` as recorded: the ids sorted, without spaces. Each target's inpaintings are seeded
    by its index in --data, so the order they are given in changes no result."""
    return text if text is None else ",".join(sorted(k.strip() for k in text.split(",") if k.strip()))


def _upgrade_settings(old: dict, shadows: dict[int, Path]) -> dict:
    """Settings of an earlier version read as today's: it recorded the paths as typed (see :data:`PATH_SETTINGS`,
    a mask image's, the shadow runs' in ``digests``), read from the current directory; its digest of the
    shadow assignment is today's when it is that of ``shadows`` (this run's) as typed."""
    from diffaudit.sampling.masks import MASK_KINDS

    new = canonical_settings(old, PATH_SETTINGS)
    if isinstance(new.get("targets"), str):  # recorded as typed
        new["targets"] = _canonical_targets(new["targets"])
    if isinstance(new.get("target_keys"), str):
        new["target_keys"] = _canonical_keys(new["target_keys"])
    if isinstance(new.get("mask"), str) and new["mask"] not in MASK_KINDS:
        new["mask"] = canonical_path(new["mask"])
    digests = new.get("digests")
    if isinstance(digests, dict):
        if isinstance(digests.get("shadows"), dict):
            digests["shadows"] = {canonical_path(p): d for p, d in digests["shadows"].items()}
        if digests.get("assignment") == _assignment(shadows, str):
            digests["assignment"] = _assignment(shadows)
    return new


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from diffaudit.attacks import inpainting as attack
    from diffaudit.core.device import resolve_device
    from diffaudit.core.faults import fault_point
    from diffaudit.core.io import read_json
    from diffaudit.core.outdir import prepare_out_dir
    from diffaudit.core.progress import progress_bar, stage_line
    from diffaudit.core.results import write_result
    from diffaudit.data import load_dataset
    from diffaudit.models.run_files import read_dropped_duplicates
    from diffaudit.models.run_record import check_trained_on, read_train_keys
    from diffaudit.models.scheduler import num_train_timesteps
    from diffaudit.sampling.masks import describe_mask, make_mask

    refuse_stores_for_models(args, ["model", "shadow"])
    if args.target_keys is not None and args.targets is not None:
        raise DiffauditError("give --targets N_IN,N_OUT (seeded random targets) or --target-keys IDS (these), not both")
    args.targets = DEFAULT_TARGETS if args.targets is None else args.targets
    config = attack.InpaintAttackConfig(
        n_inpaint=args.n_inpaint, top_k=args.top_k if args.top_k is not None else min(10, max(1, args.n_inpaint)), steps=args.steps, jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample, eta=args.eta, timestep=args.timestep, n_draws=args.n_draws, seed=args.seed,
    )
    config.validate()
    check_shadow_args(args)
    if args.batch_size != AUTO and args.batch_size < 1:
        raise DiffauditError(f"--batch-size must be at least 1; got {args.batch_size}")
    ds = load_dataset(args.data, need_captions=False, **data_options(args))  # a pixel model reads no captions
    H, W, _ = ds.image_shape
    # member labels come from keys: the pixels under them must be the ones the target trained on
    trained = read_train_keys(args.model, "--model")
    n_trained = len(trained)
    train_keys = {ds.keys[i] for i in check_trained_on(args.model, ds, what="--model", allow_missing=True, keys=trained)}
    if not train_keys:
        raise DiffauditError(f"none of the {n_trained} examples --model {args.model} trained on is in --data {ds.source}: "
                             "give the --data it was trained on")
    if len(train_keys) < n_trained:  # e.g. a canary run: its canaries are in no loadable dataset
        stage_line(f"inpaint: {n_trained - len(train_keys)} of the target's {n_trained} training examples are not in "
                   f"--data; members are the {len(train_keys)} that are (their pixels are not checked against the run's digest)")
    dropped = set(read_dropped_duplicates(args.model) or ())
    if dropped and args.target_keys is None:
        stage_line(f"inpaint: the {len(dropped)} near-duplicates --model dropped from training (copies of its members) "
                   "are not drawn as non-members")
    candidates = shadow_candidates(args, ds)
    usable = candidates[1].any(axis=1)
    if args.target_keys is None and not usable.all():
        stage_line(f"inpaint: drawing targets from the {int(usable.sum())} examples of --data that a shadow did not train on")
    targets = select_targets(ds, train_keys, targets=args.targets, target_keys=args.target_keys, seed=args.seed,
                             not_nonmembers=dropped, usable=usable)
    masks = {i: make_mask(args.mask, H, W, seed=args.seed, target_index=i) for i in targets}
    shadows = assign_shadows(args, ds, targets, candidates=candidates)
    check_models_fit(Path(args.model), sorted(set(shadows.values())), ds, timestep=config.timestep,
                     shadow_flag="--shadow" if args.shadow else "--shadows")
    config.validate(num_train_timesteps=num_train_timesteps(args.model))  # --steps ≤ T, before the folder is made
    device = resolve_device(args.device)
    if device.type != "cuda" and (args.bf16 or args.compile):
        stage_line("inpaint: --bf16 and --compile apply on CUDA only; running float32 eager on the CPU")
    settings = _settings(args, config, device, ds, shadows, masks)
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh,
                                   upgrade=lambda old: _upgrade_settings(old, shadows))
    done_file = lambda i: out / "targets" / f"{i:06d}.json"  # noqa: E731
    pending = [i for i in targets if not done_file(i).exists()]
    if resumed:
        stage_line(f"inpaint: resuming {out}: {len(targets) - len(pending)} of {len(targets)} targets already finished")

    models = _Models(device, args)
    batch = resolve_batch(args.batch_size, device, default=1024, probe=lambda b: models.get(Path(args.model)).forward_probe(b),
                          start=32, cap=16384, what="inpaint: --batch-size")
    group = max(1, batch // config.n_inpaint)
    pending.sort(key=lambda i: (str(shadows[i]), i))  # fewer shadow swaps
    with progress_bar("inpaint", len(pending), unit="target") as bar:
        for g in range(0, len(pending), group):
            idx = pending[g:g + group]
            target = models.get(Path(args.model))
            labels = _labels(ds, idx, target)
            inps = attack.inpaint_targets(
                target, ds.images[idx], np.stack([masks[i] for i in idx]), target_indices=idx, config=config,
                alphas_cumprod=target.alphas_cumprod, labels=labels, device=device, micro_batch=batch,
            )
            for n, i in enumerate(idx):
                shadow = models.get(shadows[i])
                res, kept = attack.score_target(
                    target, shadow, ds.images[i], inps[n], target_index=i, key=ds.keys[i], member=ds.keys[i] in train_keys,
                    mask_name=describe_mask(args.mask, seed=args.seed, target_index=i), shadow_name=str(shadows[i]),
                    config=config, alphas_cumprod=target.alphas_cumprod, shadow_alphas_cumprod=shadow.alphas_cumprod,
                    label=None if labels is None else int(labels[n]), device=device, micro_batch=batch,
                    mask=masks[i],
                )
                _save_target(out, i, res, kept, ds.images[i], masks[i])
                fault_point("inpaint.target")
                bar.advance(1, best_l2=res.best_l2)

    results = [attack.TargetResult.from_dict(read_json(done_file(i))) for i in targets]
    result = write_result(out / "result.json", NAME, settings, {"seed": args.seed}, **_fields(results, config.top_k))
    s = result["summary"]["mean_topk_l2"]
    emit(args, result, (
        f"inpaint: {len(results)} targets; mean top-{config.top_k} ℓ2 members {_fmt(s['members']['mean'])}, "
        f"non-members {_fmt(s['nonmembers']['mean'])}; AUC {_fmt(result['auc'])}"
        f"{_anecdote(sum(r.member for r in results), sum(not r.member for r in results))} -> {out / 'result.json'}"
    ))
    return 0


def _anecdote(n_members: int, n_nonmembers: int) -> str:
    """"; anecdotal: ..." when so few targets could not show anything (even a perfect AUC would not
    reach p < 0.05 in the exact rank test, as the report says), else ""."""
    from diffaudit.report.rank_test import ANECDOTE_LEVEL, n_orderings

    if not n_members or not n_nonmembers or 1.0 / n_orderings(n_members, n_nonmembers) < ANECDOTE_LEVEL:
        return ""
    return (f" (anecdotal: with {n_members} member and {n_nonmembers} non-member targets even a perfect AUC could not "
            f"reach p < {ANECDOTE_LEVEL:g}; attack more targets with {targets_flag()})")


def _labels(ds, idx, model):
    import numpy as np

    if getattr(model, "num_classes", None) is None:
        return None
    if ds.labels is None:
        raise DiffauditError(f"the target model is class-conditional but {ds.source} has no labels")
    return np.asarray(ds.labels)[idx]


def _save_target(out: Path, i: int, res, kept, image, mask) -> None:
    """Grid, kept inpaintings, then the target's JSON (written last: it marks the target finished)."""
    import numpy as np

    from diffaudit.attacks.inpainting.figures import save_grid
    from diffaudit.core.io import save_npz_atomic, write_json_atomic

    grid = Path("grids") / f"{i:06d}.png"
    save_grid(out / grid, image, mask, kept, res.top_l2, title=f"{res.id} ({'member' if res.member else 'non-member'})")
    save_npz_atomic(out / "targets" / f"{i:06d}.npz", kept=kept, loss_ratios=np.asarray(res.top_loss_ratios),
                    inpaintings=np.asarray(res.top_inpaintings, dtype=np.int64))
    write_json_atomic(out / "targets" / f"{i:06d}.json", {**res.to_dict(), "grid": str(grid)})  # last: marks it finished


def _fields(results, top_k: int) -> dict:
    """result.json's own fields: the targets, their summary, the AUCs and ``top_k`` (the k of
    ``mean_topk_l2``, recorded beside it so that no reader has to assume the paper's 10)."""
    from diffaudit.attacks.inpainting import membership_scores, summarize
    from diffaudit.evaluation.roc import auc

    members = [r.member for r in results]
    both = any(members) and not all(members)
    aucs = {}
    for name in ("mean_topk_l2", "best_l2"):
        scores, y = membership_scores(results, name)
        aucs[name] = auc(scores, y) if both else None
    targets = [{**r.to_dict(), "grid": f"grids/{r.index:06d}.png"} for r in results]
    return {"targets": targets, "summary": summarize(results), "top_k": top_k, "auc": aucs["mean_topk_l2"],
            "auc_best_l2": aucs["best_l2"],
            "score": "-mean_topk_l2 (the mean ℓ2 of a target's top_k best inpaintings; larger = more likely a member)"}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
