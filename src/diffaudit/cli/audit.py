"""``diffaudit audit``: the whole study in one folder, resumable stage by stage.

Stages (each a diffaudit command writing its own sub-folder, so each can be re-run or inspected
alone): membership matrix and target training (``models/``, the target is ``models/model-00``
unless ``--model`` names an existing one), sampling (``samples/``), extraction (``extract/``),
verification against the target's training set with the never-seen examples as false-positive
baseline (``verify/``), membership inference (``mia/``), the inpainting attack (``inpaint/``, with
``--inpaint``), then ``summary.json`` and ``report.html``. A stage whose ``result.json`` exists is
not run again; the audit's own ``settings.json`` makes a re-run with other options an error naming
the option.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from typing import Any

from diffaudit.cli.common import (
    StageInterrupted, add_data_args, audit_stage, canonical_settings, data_options, emit, emit_finished, given_options,
    refuse_files_for_folders, refuse_stores_for_models, upgrading_paths,
)
from diffaudit.cli.train import add_train_options
from diffaudit.core import interrupt
from diffaudit.core.errors import DiffauditError, StageFailedError
from diffaudit.models.recipe import RECIPE_FLAGS

NAME = "audit"
HELP = "run the whole audit (train, sample, extract, verify, membership inference, report) into one folder"
DESCRIPTION = (
    "Audit a diffusion model for memorized training data. With no arguments: the built-in digits dataset, a tiny "
    "model trained on 32 of its images (the other 1,765 never seen), 512 generations, black-box extraction, "
    "verification by the ratio rule, the loss-threshold membership attack, and audit-out/report.html, in about a "
    "minute on 2 CPU cores. With --shadows K, K models train on random halves (LiRA's design; use --subset to keep "
    "the set small) and model 0 is the target. "
    "--model audits an existing run directory instead of training one. --config FILE.toml may hold any option "
    "but --fresh, --redo, --config, --quiet and --json (flags on the command line win); the exact configuration used is "
    "saved as config.toml in --out. A finished or interrupted audit resumes with the same settings; after changing "
    "only options of its later stages (the attack, its timesteps, the inpainting attack, the verification rule, the "
    "generations), --redo runs those stages again and keeps the trained models. The training defaults here (--steps "
    "3000, --batch-size 32, --lr 1e-3, --warmup-steps 50) suit the small built-in study and differ from `diffaudit "
    "train`'s; shadows of a --model run train like it (its train_config.json)."
)

#: The attacks of ``diffaudit mia`` (its registry's ATTACK_NAMES, named here so `--help` imports no torch).
MIA_ATTACKS = ("loss", "lira", "lira-offline", "lira-fixed", "lira-offline-fixed", "strong-lira", "strong-lira-fixed")

#: Why `audit` has no flag of a family and what does it (read by the command line on an unknown flag, and by --config).
UNKNOWN_FLAG_HINTS = {
    "--dp-": "audit trains no DP-SGD model of its own: train one with `diffaudit train --dp-epsilon E` (or --dp-noise) "
             "and audit it with --model, whose shadows then train with its DP-SGD (or train shadows by hand with "
             "`diffaudit shadows --dp-noise`)",
}

# Options that never change results (left out of the audit's settings).
_NOT_SETTINGS = {"config", "fresh", "redo", "quiet", "json", "command", "_run", "_argv", "_given", "redact", "_shadow_dp"}
#: Of those, the ones --config may set too (the others are command-line only: --fresh deletes --out).
_CONFIG_MAY_SET = {"redact"}
#: Options that --config may set but that are not compared on a resume: another spelling of the same
#: --out folder is the same audit, and where it computes is no setting of its results (an audit started
#: on one machine finishes on another; each stage records the device it ran on).
_NOT_COMPARED = {"out", "device"}
#: Options recorded only when given: an audit without them records what it did before they existed.
RECORDED_WHEN_GIVEN = ("heldout", "heldout_subset")
#: Options that name an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("data", "model", "cifar_root", "heldout")
#: The setting that records the digest of the audit's data (pixels, keys, labels, captions; with --heldout, of
#: both datasets): named "the contents of --data" when it differs. Audits recorded before it take today's.
DATA_DIGEST = "data_digest"
#: What an audit writes into its --out besides result.json: the stages' folders and its own files. A user's file
#: or folder of one of these names already there is refused, never written over or taken for a stage's work.
AUDIT_WRITES = ("models", "samples", "extract", "verify", "mia", "outliers", "inpaint", "config.toml", "report.html",
                "summary.json", "members.view.json", "nonmembers.view.json", "data.view.json", "stage_stopped.json")
#: The setting that records the digest of --model's weights, configs and train_ids.json: an audit resumed (or
#: found finished) after the model was retrained in place is refused, naming "the contents of --model", since
#: its finished stages measured the model as it was. Audits recorded before it take today's.
MODEL_DIGEST = "model_digest"
#: The setting that records the digest of --model's train_ids.json (the training set it names, which decides the
#: audit's members): a file corrected in place is refused, naming it, not answered with the old members' results.
#: Audits recorded before it take today's.
MODEL_MEMBERS_DIGEST = "model_members_digest"
#: The inpainting stage's defaults (--inpaint-targets, --n-inpaint): a value other than these without --inpaint is
#: warned about, as nothing uses it.
INPAINT_TARGETS, N_INPAINT = "4,4", 16
#: The inpainting stage's options: not settings of an audit without --inpaint (a resume that gives one is
#: warned that it is not used, not refused as other settings).
INPAINT_OPTIONS = ("inpaint_targets", "n_inpaint")
#: How the keys of --heldout's images are prefixed in the audit (so that they never name a training image).
HELDOUT_PREFIX = "heldout:"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with any of these options (names as flags, `-` or `_`); options given on "
                   "the command line win, and --no-FLAG turns off a switch the file turns on (--no-inpaint, --no-flip)")
    add_data_args(p)
    p.add_argument("--out", default="audit-out", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--fresh", action="store_true", help="delete what --out holds and start over")
    p.add_argument("--redo", action="store_true",
                   help="when only options of later stages changed (--mia, --timesteps, --sweep, --draws, --inpaint, "
                        "--inpaint-targets, --n-inpaint, --rule, --min-clique, --grid, --n-samples, --sample-steps): run "
                        "those stages again with them, keeping the trained models and the other stages")
    p.add_argument("--model", default=None,
                   help="audit this run directory instead of training a target (training options then apply only to --shadows)")
    p.add_argument("--heldout", default=None, metavar="DATA",
                   help="with --model trained on all of --data: images it never saw, from another dataset (e.g. "
                        "cifar10-test for a model trained on all of cifar10), loaded with --data's --image-size, "
                        "--center-crop and --mode (not --subset: see --heldout-subset); their ids get the prefix "
                        "`heldout:` and they are the non-members (the verify baseline, the membership attack's OUT examples). A "
                        "--model folder without a train_ids.json (trained elsewhere) is then taken to have trained on "
                        "every image of --data")
    p.add_argument("--heldout-subset", type=int, default=None, metavar="N",
                   help="with --heldout: use a seeded random subset of N of its images (seed --subset-seed); default: all")
    p.add_argument("--train-size", type=int, default=32,
                   help="without shadows: the target trains on this many seeded random examples; all others are non-members")
    add_train_options(p, steps=3000)
    p.set_defaults(batch_size=32, lr=1e-3, warmup_steps=50)
    g = p.add_argument_group("sampling and extraction")
    g.add_argument("--n-samples", type=int, default=512,
                   help="generations (with --class-conditional: n-samples // classes per class, at least 1; a warning "
                        "on stderr says when that is not exactly n-samples)")
    g.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per generation")
    g.add_argument("--min-clique", type=int, default=10, help="clique size that flags memorization (extract)")
    g.add_argument("--grid", type=int, default=None,
                   help="tiles per side of the tiled l2 (default: 4, fewer for images under 16 px so tiles keep >= 4 px)")
    g.add_argument("--rule", choices=("auto", "ratio", "l2"), default="auto", help="verification rule (auto: ratio, the paper's rule for pixel-space models)")
    g = p.add_argument_group("membership inference")
    g.add_argument("--mia", choices=MIA_ATTACKS, default="loss",
                   help="attack; below 4 IN and 4 OUT shadows per example (--shadows under 10, as the target is shadow "
                        "0; under 8 with --model) the -fixed variants (one global variance) are usually the stronger "
                        "(docs/experiments.md: 3 a side)")
    g.add_argument("--shadows", type=int, default=0,
                   help="train K shadow models on seeded random halves of --data (even; LiRA needs 4 or more (2 with --model), and 6 or more (4 with "
                        "--model) to fit a variance per example from 2 IN and 2 OUT, rather than the pooled one of the "
                        "-fixed variants); the target "
                        "is model 0, or with --model that run, whose training options (train_config.json) the shadows "
                        "copy unless given here")
    g.add_argument("--timesteps", default="100", help="attack timestep(s), comma-separated")
    g.add_argument("--sweep", default="10,50,100,200,300,500,1000", help="timestep sweep (paper Fig. 9); empty for none")
    g.add_argument("--draws", type=int, default=None, help="noise draws per example (strong-lira default 20)")
    g = p.add_argument_group("inpainting attack")
    g.add_argument("--inpaint", action=argparse.BooleanOptionalAction, default=False, help="run the inpainting attack (needs shadows that did not train on "
                   "each target: --shadows 4 or more, or 2 or more with --model)")
    g.add_argument("--inpaint-targets", default=INPAINT_TARGETS,
                   help=f"members,non-members to attack, with --inpaint (default: {INPAINT_TARGETS})")
    g.add_argument("--n-inpaint", type=int, default=N_INPAINT,
                   help=f"inpaintings per target, with --inpaint (default: {N_INPAINT}; paper: 5,000)")
    g = p.add_argument_group("report")
    g.add_argument("--redact", action=argparse.BooleanOptionalAction, default=None,
                   help="show training images, and the generations that copy them, as their ids in the report; "
                   "training file names as positions, captions as prompt indices and paths outside --out as (path N), "
                   "in the report and summary.json (default: as the report in --out was; --no-redact shows the images)")


# --------------------------------------------------------------------------- configuration

def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise DiffauditError(f"--config {path} does not exist") from None
    except IsADirectoryError:
        hint = f" (an audit's own is {Path(path) / 'config.toml'})" if (Path(path) / "config.toml").is_file() else ""
        raise DiffauditError(f"--config {path} is a folder; give a TOML file{hint}") from None
    except OSError as exc:
        raise DiffauditError(f"--config {path} cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DiffauditError(f"--config {path}: not valid TOML: {exc}") from None
    except RecursionError:  # arrays or tables nested thousands deep
        from diffaudit.core.io import nested_too_deeply

        raise nested_too_deeply(f"--config {path}", "TOML") from None
    except ValueError:  # an integer past Python's digits limit
        from diffaudit.core.io import number_too_long

        raise number_too_long(f"--config {path}", "TOML") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name = k.replace("-", "_")
        if name in out:  # `n-samples` and `n_samples` are one option: which one wins would be a guess
            twin = next(t for t in raw if t != k and t.replace("-", "_") == name)
            raise DiffauditError(f"--config {path}: {twin} and {k} are the same option given twice; keep one")
        out[name] = v
    return out


def apply_config(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Options from ``--config`` for every option not given on the command line (the command line wins).
    ``args._given``: the options given on the command line or in the file."""
    given = given_options(argv)
    given |= {k[3:] for k in given if k.startswith("no_")}  # --no-redact gives --redact (as false)
    args._given = set(given)
    if not args.config:
        return args
    cfg = _load_toml(args.config)
    args._given |= set(cfg)
    actions = _audit_actions()
    cli_only = sorted(k.replace("_", "-") for k in cfg if k in _NOT_SETTINGS - _CONFIG_MAY_SET)
    if cli_only:  # --quiet and --json too, which every command has (not among audit's own options)
        raise DiffauditError(f"--config {args.config}: {', '.join(cli_only)} may only be given on the command line "
                             f"(e.g. --{cli_only[0]}); remove it from the file")
    unknown = sorted(k for k in cfg if k not in actions)
    if unknown:
        import difflib

        names = [d.replace("_", "-") for d in actions]
        typed = [k.replace("_", "-") if k[:1].isalpha() else k for k in unknown]  # as a file writes them (n-samples)
        said = [k + (f" (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, names, n=1, cutoff=0.75)) else "")
                for k in typed]
        hints = "".join(f"; {hint}" for prefix, hint in UNKNOWN_FLAG_HINTS.items()
                        if any(("--" + k).startswith(prefix) for k in typed))
        raise DiffauditError(f"--config {args.config}: unknown option(s) {', '.join(said)}{hints}; see `diffaudit audit --help`")
    for k, v in cfg.items():
        if k not in given:
            setattr(args, k, _config_value(actions[k], k, v, args.config))
    return args


def _audit_actions() -> dict[str, argparse.Action]:
    """The argparse actions of `diffaudit audit`, by destination (to check --config values like flags)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    return {a.dest: a for a in p._actions if a.dest != "help"}


#: Options whose value is a comma-separated list: --config takes a TOML list for them too.
COMMA_LISTS = frozenset({"timesteps", "sweep", "inpaint_targets"})


def _config_value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """A --config value checked and converted as the same flag on the command line would be (type, choices)."""
    where = f"--config {path}: {key.replace('_', '-')} = {value!r}"
    if action.nargs == 0:  # a switch such as --flip
        if not isinstance(value, bool):
            raise DiffauditError(f"{where}: expected true or false")
        return value
    if key in COMMA_LISTS and isinstance(value, list):  # timesteps = [50, 100], as the flag's "50,100"
        if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            raise DiffauditError(f"{where}: expected a list of integers")
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DiffauditError(f"{where}: expected a value of type {getattr(action.type, '__name__', 'str')}"
                             + (" or a list" if key in COMMA_LISTS else ""))
    try:
        value = action.type(str(value)) if action.type else str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        plain = {int: "expected an integer", float: "expected a number"}.get(action.type)  # not int()'s own words
        raise DiffauditError(f"{where}: {plain or exc}") from None
    if action.choices is not None and value not in action.choices:
        raise DiffauditError(f"{where}: expected one of {', '.join(map(str, action.choices))}")
    return value


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def config_toml(settings: dict[str, Any], *, redact: bool = False) -> str:
    """The options of ``settings`` as the TOML file ``--config`` reads (what is recorded but not an option left
    out); ``redact = true`` too for a redacted audit: no setting (a resume may change it), but an audit repeated
    from this file must not show the training images its original hid."""
    lines = ["# The exact configuration of this audit: `diffaudit audit --config config.toml --out ...` repeats it."]
    lines += [f"{k.replace('_', '-')} = {_toml_value(v)}" for k, v in sorted({**settings, "redact": redact or None}.items())
              if v is not None and k not in (DATA_DIGEST, MODEL_DIGEST, MODEL_MEMBERS_DIGEST)]
    return "\n".join(lines) + "\n"


def audit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options that shape the audit's results (recorded, compared on a resume, saved as config.toml),
    the paths of inputs canonical. A ``--model`` audit without shadows trains nothing: the training
    options are not among them; nor is ``--train-size`` with shadows, which train on seeded halves; nor,
    without ``--inpaint``, the inpainting stage's options (:data:`INPAINT_OPTIONS`)."""
    unused = training_options() if args.model and not args.shadows else {"train_size"} if args.shadows else set()
    unused |= {k for k in RECORDED_WHEN_GIVEN if getattr(args, k) is None}
    unused |= set() if args.inpaint else set(INPAINT_OPTIONS)
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS | _NOT_COMPARED | unused}
    return canonical_settings(settings, PATH_SETTINGS)


def resolved_settings(settings: dict[str, Any], image_shape: tuple[int, ...]) -> dict[str, Any]:
    """``settings`` with each value the stages resolve written as they resolve it, for the new settings and
    an earlier record alike, so that one meaning is one record (a resume with ``--grid 2``, ``--rule
    ratio``, ``--log-every 50`` or ``--timesteps 100,10`` where they are what was in effect is the same
    audit): ``--timesteps`` and ``--sweep`` sorted, each value once (:func:`canonical_ints`); ``--rule
    auto`` as the rule verify takes for the pixel-space models an audit studies (ratio); ``--grid`` as
    extract resolves it for ``image_shape`` (H, W, C) of the data; ``--log-every`` as train resolves it
    (gcd(50, --checkpoint-every)); ``--draws`` as mia does (20 for Strong LiRA, else 1). Keys a
    setting lacks (the training options of a ``--model`` audit) stay absent."""
    import math

    from diffaudit.attacks.extraction.grid import resolve_grid
    from diffaudit.cli.mia import DEFAULT_STRONG_DRAWS
    from diffaudit.core.comma_lists import canonical_ints

    s = dict(settings)
    for key in ("timesteps", "sweep"):
        if isinstance(s.get(key), str):
            s[key] = canonical_ints(s[key], "--" + key)
    if s.get("rule") == "auto":
        s["rule"] = "ratio"
    if "grid" in s:
        s["grid"] = resolve_grid(s["grid"], image_shape)
    if "log_every" in s and s["log_every"] is None and isinstance(s.get("checkpoint_every"), int):
        s["log_every"] = math.gcd(50, s["checkpoint_every"])
    if "draws" in s and s["draws"] is None:
        s["draws"] = DEFAULT_STRONG_DRAWS if str(s.get("mia", "")).startswith("strong") else 1
    return s


def upgrade_settings(old: dict[str, Any]) -> dict[str, Any]:
    """Settings of an earlier version read as today's: they recorded ``device`` (:data:`_NOT_COMPARED`),
    and a ``--model`` audit without shadows the training options it never used, one with shadows the
    ``--train-size`` it never used; one without ``--inpaint`` the inpainting options it never used."""
    old = {k: v for k, v in old.items() if k != "device" and (old.get("inpaint") or k not in INPAINT_OPTIONS)}
    if old.get("model") and not old.get("shadows"):
        return {k: v for k, v in old.items() if k not in training_options()}
    if old.get("shadows"):
        return {k: v for k, v in old.items() if k != "train_size"}
    return old


def training_options() -> set[str]:
    """Destinations of the options that only shape training (``add_train_options`` and ``--train-size``;
    not ``--class-conditional``, which also decides how the audit samples)."""
    p = argparse.ArgumentParser()
    add_train_options(p)
    return {a.dest for a in p._actions if a.dest not in ("help", "class_conditional")} | {"train_size"}


def model_is_conditional(model: str | Path) -> bool | None:
    """Whether the run or diffusers folder ``model`` is class-conditional (its train_config.json, else its
    UNet config's ``num_class_embeds``); None when neither says."""
    from diffaudit.core.io import read_json

    for path, read in ((Path(model) / "train_config.json", lambda c: c.get("class_conditional")),
                       (Path(model) / "unet" / "config.json", lambda c: bool(c.get("num_class_embeds")))):
        if path.is_file():
            value = read(read_json(path))
            if isinstance(value, bool):
                return value
    return None


def check_model_options(args: argparse.Namespace) -> None:
    """``--train-size`` with shadows trains nothing, and is refused. With ``--model``: training options given
    (flag or --config) train nothing unless there are shadows, and are refused; with shadows, those not
    given are the audited run's own (its train_config.json), so the shadows are trained like the target, as
    LiRA assumes. ``--class-conditional`` is the model's own (it decides whether the audit samples per
    class); given against it, it is refused."""
    given = getattr(args, "_given", set()) & training_options()
    if args.shadows and "train_size" in given:
        raise DiffauditError(f"--train-size: with --shadows {args.shadows} every model, the target (model 0) too, "
                             "trains on a seeded half of --data (the membership matrix), so it does not apply; drop it "
                             "(or --subset N to audit on N images of --data)")
    if not args.model:
        return
    if not Path(args.model).exists():
        raise DiffauditError(f"--model {args.model} does not exist")
    refuse_files_for_folders(args, {"model": "a model folder (a `diffaudit train` run, or a diffusers UNet folder)"})
    refuse_stores_for_models(args, ["model"])
    from diffaudit.sampling.sources import is_stable_diffusion_dir

    if is_stable_diffusion_dir(args.model):
        raise DiffauditError(
            f"--model {args.model} is a Stable Diffusion pipeline, and `audit` studies pixel-space models (it samples "
            "without prompts, and trains shadows like its target). Audit it command by command, as README's text-to-image "
            "workflow does: `diffaudit sample --model M --prompts CAPTIONS --per-prompt 500 --out gens`, `extract --samples "
            "gens`, `verify --samples gens --data DATA`, `mia --target M --attack loss --data DATA` and `report`")
    conditional = model_is_conditional(args.model)
    if conditional is not None:
        if "class_conditional" in getattr(args, "_given", set()) and args.class_conditional != conditional:
            raise DiffauditError(f"--class-conditional {'given' if args.class_conditional else 'off'}, but --model "
                                 f"{args.model} is {'' if conditional else 'not '}class-conditional; leave the flag out")
        args.class_conditional = conditional
    if not args.shadows:
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
            # shadows train on seeded halves: with them, --train-size would not apply either
            hint = " (or add --shadows K to train shadow models with them)" if given - {"train_size"} else ""
            raise DiffauditError(f"{names}: --model audits an existing run and trains nothing, so training options do "
                                 f"not apply; drop them{hint}")
        return
    adopt_target_recipe(args, given)


#: The training options a shadow copies from the audited run's train_config.json: those of
#: :data:`~diffaudit.models.recipe.RECIPE_FLAGS` (what mia compares a target and its shadows on) but
#: --class-conditional, which is the model's own (:func:`model_is_conditional`).
RECIPE = tuple(k for k in RECIPE_FLAGS if k != "class_conditional")


def adopt_target_recipe(args: argparse.Namespace, given: set[str]) -> None:
    """Set every :data:`RECIPE` option not ``given`` to the value ``--model`` was trained with, and say so."""
    from diffaudit.core.io import read_json
    from diffaudit.core.progress import stage_line, warning_line

    args._shadow_dp = None
    path = Path(args.model) / "train_config.json"
    if not path.is_file():
        warning_line("audit", f"{args.model} records no train_config.json: the shadows train with this command's training "
                     "options, which may differ from how the target was trained")
        return
    recipe = read_json(path)
    _adopt_target_dp(args, recipe, given)
    _warn_unmatched_training(args, recipe)
    adopted = {k: recipe[k] for k in RECIPE if k not in given and k in recipe and recipe[k] != getattr(args, k)}
    if args._shadow_dp:  # DP-SGD clips each example's gradient instead: --grad-clip is not passed
        adopted.pop("grad_clip", None)
    for k, v in adopted.items():
        setattr(args, k, v)
    said = [_flag_with(k, v) for k, v in adopted.items()] + (["DP-SGD: " + " ".join(args._shadow_dp)]
                                                                          if args._shadow_dp else [])
    if said:
        stage_line("audit: the shadows train like --model (its train_config.json): " + ", ".join(said)
                   + "; options given here win")


def _flag_with(key: str, value) -> str:
    """Option ``key`` set to ``value`` as it is written on a command line: ``--lr 0.001``, a switch as
    ``--flip`` or ``--no-flip``."""
    flag = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{flag}"
    return f"--{flag} {value}"


#: Training options that DP-SGD does not use, refused when given for the shadows of a DP-SGD --model.
_DP_UNUSED = ("grad_clip", "no_bf16", "compile")


def _adopt_target_dp(args: argparse.Namespace, recipe: dict, given: set[str]) -> None:
    """``args._shadow_dp``: the ``--dp-*`` flags the shadows train with, those of a DP-SGD --model
    (:func:`~diffaudit.defenses.dp_training.dp_flags_like`: its noise multiplier as used, clipping, batching), or
    None for a plainly trained one. LiRA reads the target's losses against the shadows', so shadows trained
    without DP-SGD would give it another model's loss distributions. Training options DP-SGD does not use
    (:data:`_DP_UNUSED`) given here are refused."""
    from diffaudit.defenses.dp_training import dp_flags_like

    args._shadow_dp = dp_flags_like(recipe.get("dp"))
    unused = sorted("--" + k.replace("_", "-") for k in _DP_UNUSED if k in given)
    if args._shadow_dp and unused:
        raise DiffauditError(f"{', '.join(unused)}: --model {args.model} trained with DP-SGD, and so do its shadows, "
                             "which clip each example's gradient and train eagerly in float32; drop "
                             f"{'it' if len(unused) == 1 else 'them'}")


def _warn_unmatched_training(args: argparse.Namespace, recipe: dict) -> None:
    """Warn when --model trained in a way the shadows do not copy: on a deduplicated training set (`shadows`
    trains on halves of --data as they are), with DP-SGD this version cannot read from its record, or with
    DP-SGD where shadows an earlier version trained plainly are kept. LiRA reads a target's loss against the
    shadows' IN and OUT losses, so shadows trained otherwise give it other distributions to compare with (a
    DP model's losses sit apart from a plain model's); the loss attack needs no shadows."""
    from diffaudit.core.outdir import recorded_settings
    from diffaudit.core.progress import warning_line
    from diffaudit.models.run_files import read_dropped_duplicates

    how = []
    if isinstance(recipe.get("dp"), dict) and not args._shadow_dp:
        how.append("with DP-SGD (its train_config.json records no noise multiplier the shadows could use)")
    if read_dropped_duplicates(args.model) != []:  # a keep list that dropped some (None: its record unreadable)
        how.append("on a deduplicated training set (--dedup)")
    if how:
        warning_line("audit", f"--model {args.model} trained {' and '.join(how)}, which the shadows do not copy: they train "
                     f"on halves of --data as they are, and {args.mia} reads the target's losses against theirs, so its "
                     "scores may be miscalibrated for this model; --mia loss needs no shadows")
    kept = recorded_settings(Path(args.out) / "models", "shadows")  # an earlier run's shadows, kept on resume
    if args._shadow_dp and not args.fresh and kept is not None and "dp" not in kept:
        warning_line("audit", f"the shadows in {Path(args.out) / 'models'} trained without DP-SGD, before this version "
                     f"trained them like a DP-SGD --model; {args.mia} reads them as they are: re-run with --fresh to train "
                     "them again")


# --------------------------------------------------------------------------- stages

def _data_flags(args: argparse.Namespace, out: Path) -> list[str]:
    """How the stages are given the audit's data: --data and its options, or with --heldout the view of
    both (:data:`DATA_VIEW`, which carries their options)."""
    if args.heldout is not None:
        return ["--data", str(out / DATA_VIEW)]
    flags = ["--data", args.data]
    for name, value in data_options(args).items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (None, False) and not (name == "subset_seed" and args.subset is None):
            flags += [flag, str(value)]
    return flags


def _train_flags(args: argparse.Namespace) -> list[str]:
    """The training flags of the train stage; the shadows of a DP-SGD --model get its ``--dp-*`` flags
    (:func:`_adopt_target_dp`) in place of those DP-SGD does not use."""
    dp = getattr(args, "_shadow_dp", None)
    flags = ["--preset", args.preset, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps),
             *([] if dp else ["--grad-clip", str(args.grad_clip)]),
             "--ema-decay", str(args.ema_decay), "--checkpoint-every", str(args.checkpoint_every)]
    for name in ("flip", "class_conditional", "no_bf16", "compile"):
        if getattr(args, name) and not (dp and name in _DP_UNUSED):
            flags.append("--" + name.replace("_", "-"))
    if args.log_every:
        flags += ["--log-every", str(args.log_every)]
    return flags + (dp or [])


class _Stages:
    def __init__(self, out: Path, common: list[str]):
        self.out, self.common, self.done = out, common, []

    def run(self, name: str, argv: list[str], folder: str | None = None) -> dict[str, Any] | None:
        """Run one stage command unless its result exists; returns its result.json."""
        from diffaudit.cli.main import main
        from diffaudit.core.io import read_json
        from diffaudit.core.progress import stage_line
        from diffaudit.report.results import STAGE_STOPPED

        result = self.out / (folder or name) / "result.json"
        if result.exists():
            stage_line(f"audit: {name}: finished earlier, kept")
        else:
            t0 = time.perf_counter()
            (self.out / STAGE_STOPPED).unlink(missing_ok=True)  # an earlier run's stop: this run tries again
            try:
                with audit_stage(name) as stage:
                    code = main(argv + self.common)
            except SystemExit as exc:  # the stage's own argument parser refused a value
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException as exc:  # a crash, or Ctrl-C between the stage's own handlers: recorded, then raised
                self._stopped(name, None if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}",
                              interrupt.stopped_with() if isinstance(exc, KeyboardInterrupt) else 1)
                raise
            if interrupt.stopped_status(code):  # the stage was interrupted or stopped (it said so): the audit is, too
                self._stopped(name, None, code)
                raise StageInterrupted(code)
            if code != 0:
                self._stopped(name, stage.error, code)
                raise StageFailedError(f"stage `{name}` failed (exit {code}); fix the cause and re-run: finished stages are kept",
                                       name, stage.error)
            stage_line(f"audit: {name}: done in {time.perf_counter() - t0:.1f}s")
        self.done.append(name)
        return read_json(result) if result.exists() else None

    def _stopped(self, name: str, error: str | None, code: int) -> None:
        """Record in :data:`STAGE_STOPPED` that stage ``name`` stopped the audit (exit ``code``; 130, 143 or 129:
        interrupted; ``error``: what its command said), for ``diffaudit report`` to name; a record that cannot
        be written (a full disk) leaves the stage's own error to be seen."""
        from diffaudit.core.io import write_json_atomic
        from diffaudit.report.results import STAGE_STOPPED

        try:
            write_json_atomic(self.out / STAGE_STOPPED, {"stage": name, "exit": code, "error": error})
        except (OSError, DiffauditError):  # a failed write is a DiffauditError naming this file: not the news
            pass

    def run_outliers(self, data, seed: int) -> None:
        """The outliers stage (after mia), kept and listed like the others when finished earlier; it
        writes no result when there is nothing to correlate (then it is not listed)."""
        from diffaudit.core.progress import stage_line

        result = self.out / "outliers" / "result.json"
        if result.exists():
            stage_line("audit: outliers: finished earlier, kept")
        else:
            outliers_stage(self.out, data, seed)
        if result.exists():
            self.done.append("outliers")


def _drop_damaged_result(out: Path) -> None:
    """Delete the audit's own ``result.json`` when it cannot be read (cut short, edited), with a warning:
    it is written from the stages' results, so the resumed audit writes it again (without this, every
    resume, ``--redo`` too, stopped at "not valid JSON"). A stage's own result is left to its command."""
    from diffaudit.core.io import read_json
    from diffaudit.core.progress import warning_line

    path = out / "result.json"
    try:
        if path.exists():
            read_json(path)
    except DiffauditError as exc:
        warning_line("audit", f"{exc}; it is written again from the stages' results")
        path.unlink(missing_ok=True)


def outliers_stage(out: Path, data, seed: int) -> None:
    """Outlier score of every member against its membership score (the paper: outliers are more exposed)."""
    from diffaudit.core.io import make_private_dir
    from diffaudit.core.progress import stage_line
    from diffaudit.core.results import write_result
    from diffaudit.core.io import read_json
    from diffaudit.defenses.outliers import outlier_exposure
    from diffaudit.report.summary import at_chance, separates

    z = np.load(out / "mia" / "scores.npz", allow_pickle=False)
    members = z["member"].astype(bool)
    ex, score = z["example_index"][members], z["score"][members]
    per_example = {}
    for i, v in zip(ex.tolist(), score.tolist()):
        per_example.setdefault(i, []).append(v)
    idx = sorted(per_example)
    if len(idx) < 3:
        return
    mean_score = np.array([np.mean(per_example[i]) for i in idx])
    try:
        res = outlier_exposure(data.images, mean_score, k=1000, rows=np.array(idx))
    except DiffauditError as exc:  # e.g. every member scored alike: nothing to correlate
        stage_line(f"audit: outliers: skipped ({exc})")
        return
    make_private_dir(out / "outliers")
    write_result(out / "outliers" / "result.json", "outliers", {"embedder": res["embedder"], "k": res["k"]},
                 {"seed": seed}, population="member", **res)
    corr = res["spearman"]
    mia = read_json(out / "mia" / "result.json")
    if at_chance(mia):  # as the report: the scores of a guessing attack correlate with nothing meaningful
        stage_line(f"audit: outliers: no correlation reported: the membership attack is at chance (AUC {mia['auc']:.3f})")
        return
    if separates(mia):  # as the report: every member is identified, so exposure does not vary among them
        stage_line("audit: outliers: no correlation reported: the membership attack identifies every member (AUC 1.000), "
                   "so outliers are neither more nor less exposed to it")
        return
    stage_line(f"audit: outliers: Spearman rho {corr['rho']:.3f} (p = {corr['pvalue']:.2g}) between outlier and "
               f"membership scores of {len(idx)} members")


def check_stage_values(args: argparse.Namespace) -> None:
    """Refuse, before anything is trained or recorded, the values that the stages would refuse late,
    by the stages' own checks where they have one: the training options (TrainConfig), --n-samples
    and --sample-steps, --min-clique and --grid (the filter's FilterSettings), --timesteps, --sweep
    and --draws (the mia stage's MiaConfig), --inpaint-targets and --n-inpaint."""
    from diffaudit.attacks.extraction.calibration import parse_int_list
    from diffaudit.attacks.extraction.filter import FilterSettings
    from diffaudit.attacks.membership.run import MiaConfig
    from diffaudit.cli.inpaint import parse_counts
    from diffaudit.cli.mia import clip_sweep
    from diffaudit.cli.train import train_config_from
    from diffaudit.models.scheduler import make_scheduler, num_train_timesteps

    if not args.model or args.shadows:
        train_config_from(args).validate()
    for flag, value in (("--n-samples", args.n_samples), ("--sample-steps", args.sample_steps), ("--n-inpaint", args.n_inpaint)):
        if value < 1:
            raise DiffauditError(f"{flag} must be at least 1, got {value}")
    FilterSettings(min_clique=args.min_clique, grid=args.grid).validate()
    timesteps = parse_int_list(args.timesteps, "--timesteps")
    sweep = parse_int_list(args.sweep, "--sweep") if str(args.sweep).strip() else []
    MiaConfig(attack=args.mia, timesteps=tuple(timesteps), sweep=tuple(sweep), n_draws=args.draws or 1).validate()
    # the models' schedules: --model's own, and that of the models the audit trains (the sweep is clipped to it)
    schedules = [num_train_timesteps(args.model)] if args.model else []
    if not args.model or args.shadows:
        schedules.append(int(make_scheduler().config.num_train_timesteps))
    T = min(schedules)
    if max(timesteps) >= T:
        raise DiffauditError(f"--timesteps must lie in [0, {T - 1}] (the schedule has T = {T} steps; the paper's "
                             f"t = 1000 is --timesteps {T - 1}); got {args.timesteps}")
    clip_sweep(tuple(sweep), T)  # the mia stage's own refusal of a sweep beyond T, before anything is trained
    if args.n_samples < 2 and not args.class_conditional:
        raise DiffauditError(f"--n-samples must be at least 2: extraction looks for near-identical generations among "
                             f"them; got {args.n_samples}")
    if args.inpaint:
        parse_counts(args.inpaint_targets, "--inpaint-targets")
    else:
        given = (("--inpaint-targets", args.inpaint_targets, INPAINT_TARGETS), ("--n-inpaint", args.n_inpaint, N_INPAINT))
        unused = [f"{flag} {value}" for flag, value, default in given if value != default]
        if unused:
            from diffaudit.core.progress import warning_line

            warning_line("audit", f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} for the inpainting stage, "
                         "which runs only with --inpaint: not used")


def _sample_count(args: argparse.Namespace, data) -> list[str]:
    """The sample stage's count flags: ``--n N``, or with --class-conditional one prompt per class and
    ``n_samples // classes`` (at least 1) per class, warning on stderr when that is not ``n_samples``."""
    if not args.class_conditional:
        return ["--n", str(args.n_samples)]
    n_classes = len(data.class_names) if data.class_names else int(np.max(data.labels)) + 1
    per_class = max(1, args.n_samples // n_classes)
    if per_class * n_classes != args.n_samples:
        from diffaudit.core.progress import warning_line

        warning_line("audit", f"--n-samples {args.n_samples} is not a multiple of the {n_classes} classes: "
                     f"generating {per_class} per class, {per_class * n_classes} in all (pass a multiple of {n_classes} "
                     "to get exactly --n-samples)")
    return ["--classes", "--per-prompt", str(per_class)]


def _n_generated(args: argparse.Namespace, sample: dict[str, Any] | None, verify: dict[str, Any] | None) -> int:
    """Generations the verify stage searched (else that the sample stage made, else --n-samples)."""
    for r in (verify, sample):
        if r is not None and isinstance(r.get("n_samples"), int):
            return r["n_samples"]
    return args.n_samples


#: With --heldout: the view of --data followed by the held-out images that the stages read as --data.
DATA_VIEW = "data.view.json"


def _load_data(args: argparse.Namespace):
    """The audit's data and the datasets it is made of: ``(dataset, [(ViewPart, its keys in dataset), ...])``.

    --data as loaded (a view: each of its datasets); with --heldout, followed by those images (with --data's
    per-image options, not its --subset: --heldout-subset, with --subset-seed), their keys prefixed with
    :data:`HELDOUT_PREFIX`."""
    import dataclasses

    from diffaudit.data import load_dataset
    from diffaudit.data.dataset import concat_datasets
    from diffaudit.data.loader import load_dataset_parts
    from diffaudit.data.view import ViewPart

    # a view's own datasets (no view names a view); the pixel models an audit studies read no captions
    data, parts = load_dataset_parts(args.data, need_captions=False, **data_options(args))
    if args.heldout is None:
        return data, parts
    opts = {k: v for k, v in data_options(args).items() if v not in (None, False)}
    held_opts = {k: v for k, v in opts.items() if k not in ("subset", "subset_seed")}
    if args.heldout_subset is not None:
        held_opts.update(subset=args.heldout_subset, subset_seed=args.subset_seed)
    try:
        held = load_dataset(args.heldout, need_captions=False, **held_opts)
    except DiffauditError:
        _check_heldout_subset(args)  # the loader's refusal names --subset: say which subset asked too much
        raise
    held = dataclasses.replace(held, keys=[HELDOUT_PREFIX + k for k in held.keys])
    both = concat_datasets([data, held], f"--data {args.data} and --heldout {args.heldout}")
    return both, parts + [(ViewPart(args.heldout, held_opts, prefix=HELDOUT_PREFIX), list(held.keys))]


def _check_heldout_subset(args: argparse.Namespace) -> None:
    """Refuse a --heldout-subset that is not a count of --heldout's images (the loader's own refusal
    names --subset, which here chose among --data's)."""
    from diffaudit.data.loader import list_source

    k = args.heldout_subset
    if k is None:
        return
    if k < 1:
        raise DiffauditError(f"--heldout-subset must be a positive number of images; got {k}")
    n = len(list_source(args.heldout, skip_bad=args.skip_bad, cifar_root=args.cifar_root).entries)
    if k > n:
        raise DiffauditError(f"--heldout-subset {k} asks for more images than --heldout {args.heldout} has ({n}); "
                             "leave --heldout-subset out to use all of them")


def _save_view(path: Path, parts, keys: list[str]) -> None:
    """A view of the audit's data restricted to ``keys`` (in that order within each of its datasets)."""
    import dataclasses

    from diffaudit.data.view import save_parts_view

    wanted = set(keys)
    chosen = []
    for part, part_keys in parts:
        own = set(part_keys) & wanted
        if own:
            chosen.append(dataclasses.replace(part, keys=[k for k in keys if k in own]))
    save_parts_view(path, chosen)


def _refuse_unseen_copies(args: argparse.Namespace, data, trained: set[str], unseen: set[str]) -> None:
    """Refuse, before any stage, images --model never saw (its non-members: the verify baseline, the
    membership attack's OUT examples) that are every one, pixel for pixel, an image it trained on (a
    --heldout that is the training set again): the verify and mia stages would refuse them after sampling."""
    from diffaudit.data.digest import shared_images

    out_rows = [i for i, k in enumerate(data.keys) if k in unseen]
    in_rows = [i for i, k in enumerate(data.keys) if k in trained]
    if len(shared_images(data.subset(out_rows), data.subset(in_rows))) < len(out_rows):
        return
    source = f"--heldout {args.heldout}" if args.heldout is not None else f"--data {args.data}"
    raise DiffauditError(f"every one of the {len(out_rows):,} images of {source} that --model {args.model} never saw is, "
                         "pixel for pixel, also an image it trained on, so nothing is left to serve as never seen (the "
                         "false-positive baseline and the membership attack's non-members): give images it never saw "
                         "(e.g. `--heldout cifar10-test` for a model trained on all of cifar10)")


def _check_trainable_shape(args: argparse.Namespace, data) -> None:
    """Refuse, before any stage, --data whose images are not square, or of a size --preset's UNet cannot
    down-sample, when the audit trains models on it (the train stage would refuse it after the audit
    folder records its settings)."""
    from diffaudit.models.unets import unet_config

    h, w, c = data.image_shape
    if h != w:
        raise DiffauditError(f"--data {args.data} holds {h}x{w} images, and the models the audit trains need square "
                             f"ones: pass --image-size N to resize them to N x N (or --center-crop N to crop them)")
    try:
        unet_config(args.preset, image_size=h, in_channels=c)
    except DiffauditError as e:
        raise DiffauditError(f"--data {args.data} holds {h}x{w} images: {e}") from None


def _check_dp_batch(args: argparse.Namespace, data) -> None:
    """Refuse, before anything is recorded, a --batch-size above the images the smallest shadow of a DP-SGD
    --model trains on (a DP-SGD batch holds each image at most once): the train stage would refuse it only
    after the audit folder recorded its settings. The batch size is mostly the target's, adopted, so the
    remedy named is more images, not another batch size."""
    from diffaudit.data import make_membership
    from diffaudit.data.membership import smallest_column

    k, size = smallest_column(make_membership(len(data), args.shadows, seed=args.seed))
    if args.batch_size > size:
        whose = ("given here" if "batch_size" in getattr(args, "_given", set())
                 else f"the one --model {args.model} trained with")
        raise DiffauditError(f"--batch-size {args.batch_size} ({whose}) exceeds the {size} images shadow model {k} "
                             f"would train on (each trains on about half of --data's {len(data):,}), and a DP-SGD batch holds "
                             "each image at most once: give --data more images, about twice the target's training set")


def _planned_nonmembers(args: argparse.Namespace, data) -> int:
    """How many images of --data the audit's own target (model 0, trained here) will never see: what the
    train stage's membership matrix (:func:`make_membership` / :func:`target_split`, seeded) leaves out."""
    from diffaudit.data import make_membership

    if args.shadows:
        return int((~make_membership(len(data), args.shadows, seed=args.seed)[:, 0]).sum())
    return len(data) - args.train_size


def _check_baseline_size(args: argparse.Namespace, n_unseen: int, where: str, fix: str) -> None:
    """Refuse, before any stage, a false-positive baseline of one image under the ratio rule (the rule
    `auto` picks for a pixel-space model): verify divides by the mean distance to the baseline's n ≥ 2
    nearest images, so its verify stage would refuse it only after training. ``where`` completes "only 1
    image ..."; ``fix`` is the first remedy named."""
    if n_unseen == 1 and args.rule != "l2":
        raise DiffauditError(f"only 1 image {where}: the false-positive baseline verifies the generations against "
                             "the images the target never saw by the ratio rule, which needs at least 2 of them: "
                             f"{fix}, or pass --rule l2")


#: With --heldout, a --model folder that records no training set (no ``train_ids.json``: a model trained
#: elsewhere) trained on all of --data, as --heldout says: the audit links its files into this folder of
#: ``models/`` beside a ``train_ids.json`` of --data's keys, and its stages read the model from there.
TRAINED_ON_ALL = "target"


def _trained_on_all(args: argparse.Namespace) -> bool:
    """Whether --model is taken to have trained on all of --data (:data:`TRAINED_ON_ALL`)."""
    from diffaudit.models.denoiser import not_a_model_reason
    from diffaudit.models.run_record import has_train_ids, run_of_unet

    return (bool(args.model) and args.heldout is not None and Path(args.model).is_dir() and not has_train_ids(args.model)
            and not_a_model_reason(Path(args.model)) is None and run_of_unet(args.model) is None)


def _target_members(args, models: Path, dataset) -> tuple[Path, list[str]]:
    """The target run and the keys of its training set (checked: every key, with the pixels it trained on, is in
    --data). A --model without a recorded training set: with --heldout all of --data's keys (not the held-out
    ones), the target being its linked folder (:data:`TRAINED_ON_ALL`); without, refused saying what to give."""
    from diffaudit.models.denoiser import not_a_model_reason
    from diffaudit.models.run_record import check_trained_on, has_train_ids, run_of_unet, train_ids_howto

    target = Path(args.model) if args.model else models / "model-00"
    reason = not_a_model_reason(target) if args.model else None
    if reason is not None:  # another command's folder, a training run's state: no model to take as trained on anything
        raise DiffauditError(f"--model {args.model}: {reason}")
    run = run_of_unet(args.model) if args.model else None
    if run is not None:
        raise DiffauditError(f"--model {args.model} is the UNet folder of the run {run}, which records its training set: "
                             f"pass --model {run}")
    if _trained_on_all(args):
        return models / TRAINED_ON_ALL, [k for k in dataset.keys if not k.startswith(HELDOUT_PREFIX)]
    if args.model and Path(args.model).is_dir() and not has_train_ids(args.model):
        raise DiffauditError(f"--model {args.model} records no training set (train_ids.json). If it trained on all of "
                             "--data, give images it never saw with --heldout (e.g. `--heldout cifar10-test` for a model "
                             "trained on all of cifar10): its members are then every image of --data. Else "
                             + train_ids_howto(args.model))
    rows = check_trained_on(target, dataset, what="--model" if args.model else "the audit's target")
    return target, [dataset.keys[i] for i in rows]


def _say_mixed_nonmembers(args: argparse.Namespace, unseen: set[str]) -> None:
    """With --heldout and a --model that records its training set, say where its non-members come from when
    both datasets give some: the images of --data it never trained on and those of --heldout are two kinds
    (the same distribution or not), and the baseline and the membership attack read them together."""
    from diffaudit.core.progress import stage_line

    n_held = sum(1 for k in unseen if k.startswith(HELDOUT_PREFIX))
    if 0 < n_held < len(unseen):
        stage_line(f"audit: the non-members of --model {args.model} are the {len(unseen) - n_held:,} images of --data "
                   f"it never trained on and the {n_held:,} of --heldout {args.heldout}, read together (the "
                   "false-positive baseline and the membership attack's OUT examples); to use only --heldout's, give "
                   "--data its training set alone")


def _link_trained_on_all(model: Path, folder: Path, keys: list[str]) -> Path:
    """Make ``folder`` (:data:`TRAINED_ON_ALL`) the model of ``model`` trained on ``keys``: a link to each of its
    files and folders but its own ``train_ids.json``, beside a ``train_ids.json`` of ``keys``. The weights are
    read through the links, so their digests (what a sample store or a loss cache records) are the model's own;
    a resumed audit finds the folder as it left it (links to files gone since are removed). Returns ``folder``."""
    from diffaudit.core.io import make_private_dir, read_json, write_json_atomic
    from diffaudit.models.digest import TRAIN_IDS

    make_private_dir(folder)
    entries = {e.name: e.resolve() for e in model.resolve().iterdir() if e.name != TRAIN_IDS}
    for link in folder.iterdir():
        if link.name == TRAIN_IDS:
            continue
        if not link.is_symlink():
            raise DiffauditError(f"{folder} holds {link.name}, which the audit did not link there; re-run with --fresh")
        if link.name not in entries or link.resolve() != entries[link.name]:
            link.unlink()
    for name, entry in sorted(entries.items()):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(entry, target_is_directory=entry.is_dir())
    ids = folder / TRAIN_IDS
    if not ids.is_file() or read_json(ids).get("keys") != keys:
        write_json_atomic(ids, {"keys": keys})
    return folder


def _dropped_duplicates(target: Path, data, dropped: list[str] | None) -> set[str]:
    """The keys of --data that a deduplicated target dropped as near-duplicates of images it trained on.

    They are neither members nor fair non-members (a generation that copies a kept image also matches
    its dropped duplicate, and a membership score sees the kept copy): left out of the verify baseline
    here, and out of the non-members by `mia` and `inpaint` themselves.

    ``dropped``: what ``read_dropped_duplicates(target)`` returned (None: unreadable). The caller reads
    it once, so that with --model the check for unseen images and this exclusion use the same record.
    """
    from diffaudit.core.progress import stage_line, warning_line

    if dropped is None:
        warning_line("audit", f"{target} was deduplicated, but its record of the dropped near-duplicates is unreadable and "
                     "its keep list is gone: they stay among the non-members, where they look like members")
        return set()
    in_data = set(data.keys)
    excluded = sorted(k for k in set(dropped) if k in in_data)
    if excluded:
        stage_line(f"audit: {len(excluded)} near-duplicates that {target.name} dropped from training are left out of the "
                   "non-members (the verify baseline and the membership evaluation)")
    return set(excluded)


def run(args: argparse.Namespace) -> int:
    from diffaudit.core.io import make_private_dir, read_json, write_bytes_atomic
    from diffaudit.cli.audit_redo import prepare_redo
    from diffaudit.core import folder_lock
    from diffaudit.core.device import resolve_device
    from diffaudit.core.outdir import prepare_out_dir
    from diffaudit.core.progress import stage_line, warning_line
    from diffaudit.core.results import write_result
    from diffaudit.data import make_membership, save_membership, target_split
    from diffaudit.data.digest import dataset_digest
    from diffaudit.models.run_files import read_dropped_duplicates
    from diffaudit.report import render_report, write_summary
    from diffaudit.report.redaction import resolve_redact, was_redacted
    from diffaudit.report.results import STAGE_STOPPED
    from diffaudit.attacks.extraction.grid import resolve_grid

    args = apply_config(args, args._argv)
    if args.shadows < 0 or args.shadows % 2:
        raise DiffauditError(f"--shadows must be 0 or a positive even number (every example is IN for half of the "
                             f"models); got {args.shadows}")
    if args.inpaint and args.shadows < (2 if args.model else 4):
        raise DiffauditError(
            "--inpaint needs shadow models that did not train on each target: pass --shadows 2 or more" if args.model else
            "--inpaint needs shadow models that did not train on each target: pass --shadows 4 or more" + (
                " (the target is shadow 0, and with 2 every image it did not train on, the only other shadow did)"
                if args.shadows == 2 else ""))
    if args.mia != "loss" and args.shadows < (2 if args.model else 4):
        raise DiffauditError(
            f"--mia {args.mia} needs at least 2 shadow models besides --model (every example needs losses from shadows "
            "both with and without it): pass --shadows K (K even, the paper uses 16)" if args.model else
            f"--mia {args.mia} needs at least 4 shadow models (the target is one of them, and every example needs "
            "losses from the others both with and without it): pass --shadows K (K even, the paper uses 16)")
    check_stage_values(args)
    check_model_options(args)
    resolve_device(args.device)  # a typo in --device is refused before --out records anything
    if args.heldout is not None and not args.model:
        raise DiffauditError("--heldout is for --model, a run trained on all of --data: without --model the audit trains "
                             "its target on --train-size images of --data, and the others are its non-members already")
    if args.heldout_subset is not None and args.heldout is None:
        raise DiffauditError("--heldout-subset chooses among the images of --heldout: pass --heldout DATA too (or "
                             "--subset, which chooses among those of --data)")
    data, parts = _load_data(args)  # before --out records anything: a typo costs nothing
    if args.class_conditional and data.labels is None:
        from diffaudit.data.dataset import LABEL_SOURCES

        raise DiffauditError(f"--class-conditional needs labels, and {args.data} has none" + (
            f" (or --heldout {args.heldout} has none, or other class names: both need the same)" if args.heldout else "")
            + f"; they come from {LABEL_SOURCES}")
    if not args.model and not args.shadows and not 1 <= args.train_size < len(data):
        raise DiffauditError(f"--train-size must lie in [1, {len(data) - 1}] for the {len(data):,} images of --data "
                             f"{args.data} (some must stay unseen: the baseline and the non-members); got {args.train_size}")
    if not args.model or args.shadows:
        _check_trainable_shape(args, data)
    model_dropped = None  # --model's record of its dropped near-duplicates, read once (used again below)
    if not args.model:
        _check_baseline_size(args, _planned_nonmembers(args, data), "of --data is left out of the target's training",
                             "give --data more images" if args.shadows else f"lower --train-size to {len(data) - 2} or less")
    if args.model:
        _, trained = _target_members(args, Path(args.out) / "models", data)
        if _trained_on_all(args):
            stage_line(f"audit: --model {args.model} records no training set (train_ids.json); with --heldout it is taken "
                       f"to have trained on all {len(trained):,} images of --data, its members, and the images of --heldout "
                       "are its non-members")
        if args.shadows and not 0.5 <= (len(data) / 2) / len(trained) <= 2:
            warning_line("audit", f"each shadow trains on half of --data ({len(data) // 2:,} images) but --model trained on "
                         f"{len(trained):,}: LiRA assumes shadows trained like the target, so give --data a pool about twice "
                         "the target's training set that holds it: its training images and about as many it never saw (a "
                         "`.view.json` naming them by id, README; a seeded --subset of a larger --data holds others)")
        if args.shadows and args._shadow_dp:
            _check_dp_batch(args, data)
        model_dropped = read_dropped_duplicates(args.model)
        unseen = set(data.keys) - set(trained) - set(model_dropped or ())
        if not unseen:  # the verify baseline and the membership attack need unseen images
            raise DiffauditError(
                f"--model {args.model} trained on all {len(data)} images of --data {args.data} (or on near-duplicates of "
                "them), so no image is left that "
                "it never saw (the false-positive baseline and the membership attack's non-members): give images it "
                "never saw with --heldout (e.g. `--heldout cifar10-test` for a model trained on all of cifar10), or "
                "audit it on --data that also holds held-out images")
        _refuse_unseen_copies(args, data, set(trained), unseen)
        if args.heldout is not None and not _trained_on_all(args):
            _say_mixed_nonmembers(args, unseen)
        _check_baseline_size(args, len(unseen), f"is one --model {args.model} never trained on",
                             "give more images it never saw with --heldout")
    # the lists the stages are given, written one way (their order and repeats mean nothing)
    from diffaudit.core.comma_lists import canonical_ints

    args.timesteps, args.sweep = canonical_ints(args.timesteps), canonical_ints(args.sweep)
    settings = resolved_settings(audit_settings(args), data.image_shape)
    # what --data holds now: an audit resumed (or found finished) after its images changed in place is refused
    settings[DATA_DIGEST] = dataset_digest(data)
    digests = {DATA_DIGEST: settings[DATA_DIGEST]}
    if args.model:  # and what --model holds: one retrained in place is another model
        from diffaudit.models.digest import members_digest, model_digest

        settings[MODEL_DIGEST] = digests[MODEL_DIGEST] = model_digest(args.model)
        settings[MODEL_MEMBERS_DIGEST] = digests[MODEL_MEMBERS_DIGEST] = members_digest(args.model)
    upgrade = upgrading_paths(PATH_SETTINGS, then=lambda old: {**digests, **resolved_settings(upgrade_settings(old),
                                                                                           data.image_shape)})
    if not args.fresh:  # held before --redo deletes a stage (prepare_out_dir holds it again: a no-op)
        folder_lock.hold(args.out)
        upgrade = prepare_redo(Path(args.out), settings, upgrade, args.redo)
    asked = args.redact  # --redact True, --no-redact False, neither None: as the report it replaces
    was = was_redacted(Path(args.out) / "report.html")  # read before --fresh deletes it
    args.redact, kept = resolve_redact(asked, was)
    if kept:
        stage_line("audit: the report stays redacted, as the one it replaces was; --no-redact shows the training images")
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh, upgrade=upgrade, writes=AUDIT_WRITES)
    if resumed:
        _drop_damaged_result(out)
    if resumed and (out / "result.json").exists() and not _stale(read_json(out / "result.json"), out):
        missing = [name for name in ("summary.json", "report.html") if not (out / name).exists()]
        if missing:  # the finished run stopped (Ctrl-C, a full disk) after its result.json, while writing these
            _record_verdicts(out, read_json(out / "result.json"), read_json(write_summary(out, redact=args.redact)))
            stage_line(f"audit: {' and '.join(missing)} written now (the run that finished stopped before writing "
                       f"{'it' if len(missing) == 1 else 'them'}): {render_report(out, redact=args.redact)}")
        elif asked or (asked is False and was):
            # finished: nothing else is rewritten (it may lie on read-only storage), but a report that is to be
            # shared must not keep the training images (nor summary.json the paths) an earlier run showed, and
            # --no-redact asks for them
            write_summary(out, redact=asked)
            stage_line(f"audit: report written again, {'redacted' if asked else 'showing the training images'}: "
                       f"{render_report(out, redact=asked)}")
    if emit_finished(args, out, resumed, lambda r: _head(r, _read_summary(out)), stale=lambda r: _stale(r, out),
                     stale_files=("summary.json", "report.html")):
        return 0  # nothing rewritten: a finished audit may lie on read-only storage
    write_bytes_atomic(out / "config.toml", config_toml(settings, redact=args.redact).encode("utf-8"))
    if args.heldout is not None:
        from diffaudit.data.view import save_parts_view

        save_parts_view(out / DATA_VIEW, [part for part, _ in parts])
    t0 = time.perf_counter()
    # with --json the stages print nothing on stdout either: it holds the audit's JSON alone
    common = ["--quiet"] if getattr(args, "quiet", False) or getattr(args, "json", False) else []
    stages = _Stages(out, common)
    dev = ["--device", args.device]
    seed = ["--seed", str(args.seed)]

    models = make_private_dir(out / "models")
    if not (models / "membership.npz").exists():
        if args.shadows:
            matrix = make_membership(len(data), args.shadows, seed=args.seed)
        elif args.model:  # the audited run's own training set is column 0, everything else column 1
            _, keys = _target_members(args, models, data)
            inside = np.isin(np.asarray(data.keys), keys)
            matrix = np.stack([inside, ~inside], axis=1)
        else:
            matrix = target_split(len(data), args.train_size, seed=args.seed)
        save_membership(models / "membership.npz", matrix, data.keys, args.seed)
    model_dir = Path(args.model) if args.model else None  # the folder the stages read --model from
    if _trained_on_all(args):
        model_dir = _link_trained_on_all(model_dir, models / TRAINED_ON_ALL, _target_members(args, models, data)[1])
    if args.model and not args.shadows and not (models / "model-00").exists():
        (models / "model-00").symlink_to(model_dir.resolve(), target_is_directory=True)
    if args.model is None or args.shadows:  # the target (model 0) unless --model, and any shadows: one `shadows` call
        n_train = args.shadows if args.shadows else 1
        stages.run("train", ["shadows", *_data_flags(args, out), "--membership", str(models / "membership.npz"),
                             "--out", str(models), "--models", str(n_train), *_train_flags(args), *dev, *seed],
                   folder=f"models/model-{n_train - 1:02d}")
    target, member_keys = _target_members(args, models, data)
    members = set(member_keys)
    # with --model the target is that run (read above); else the model-00 the train stage just made
    excluded = _dropped_duplicates(target, data, model_dropped if args.model else read_dropped_duplicates(target))
    mia_done = out / "mia" / "result.json"
    if excluded and mia_done.exists() and "n_excluded" not in read_json(mia_done):
        raise DiffauditError(f"{out}: its verify and mia stages ran before the near-duplicates {target.name} dropped "
                             "were left out of the non-members, so their baseline and non-members still hold them; "
                             "re-run with --fresh")
    nonmember_keys = [k for k in data.keys if k not in members and k not in excluded]
    _save_view(out / "members.view.json", parts, member_keys)
    if nonmember_keys:
        _save_view(out / "nonmembers.view.json", parts, nonmember_keys)

    sample = stages.run("sample", ["sample", "--model", str(target), "--out", str(out / "samples"), *_sample_count(args, data),
                                   "--steps", str(args.sample_steps), *dev, *seed], folder="samples")
    grid = resolve_grid(args.grid, data.image_shape)  # the rule standalone `extract` uses
    stages.run("extract", ["extract", "--samples", str(out / "samples"), "--out", str(out / "extract"),
                           "--min-clique", str(args.min_clique), "--grid", str(grid), *dev, *seed])
    baseline = ["--baseline", str(out / "nonmembers.view.json")] if nonmember_keys else []
    verify = stages.run("verify", ["verify", "--samples", str(out / "samples"), "--data", str(out / "members.view.json"),
                                   *baseline, "--rule", args.rule, "--out", str(out / "verify"), *dev, *seed])

    mia_models = str(args.shadows) if args.shadows else "1"
    target_flags = ["--target", str(target)] if args.model and args.shadows else ["--target-index", "0"]
    draws = ["--draws", str(args.draws)] if args.draws else []
    sweep = ["--sweep", args.sweep] if args.sweep else []
    mia = stages.run("mia", ["mia", *_data_flags(args, out), "--shadows", str(models), "--models", mia_models, *target_flags,
                             "--attack", args.mia, "--timesteps", args.timesteps, *sweep, *draws,
                             "--out", str(out / "mia"), *dev, *seed])
    if mia is not None:
        stages.run_outliers(data, args.seed)
    inpaint = None
    if args.inpaint:
        inpaint = stages.run("inpaint", ["inpaint", "--model", str(target), "--shadows", str(models), "--membership",
                               str(models / "membership.npz"), *_data_flags(args, out), "--targets", args.inpaint_targets,
                               "--n-inpaint", str(args.n_inpaint), "--top-k", str(min(10, args.n_inpaint)),
                               "--out", str(out / "inpaint"), *dev, *seed])

    fields = {
        "stages": stages.done,
        "target": str(target),
        "n_train": len(member_keys),
        "n_nonmembers": len(nonmember_keys),
        "n_excluded_duplicates": len(excluded),
        "n_samples": _n_generated(args, sample, verify),
        "unique_extracted": None if verify is None else verify.get("unique_extracted"),
        "baseline_unique_extracted": None if verify is None else verify.get("baseline_unique_extracted"),
        "mia": None if mia is None else {"attack": mia.get("attack"), "auc": mia.get("auc"), "tpr_at_fpr": mia.get("tpr_at_fpr"),
                                         "ci": mia.get("ci")},  # bootstrap intervals of the AUC and each TPR
        "n_shadows": args.shadows,
        "inpainting": None if inpaint is None else _inpainting_fields(inpaint),
        "report": str(out / "report.html"),
        "seconds": time.perf_counter() - t0,  # of this run: stages finished earlier are read, not timed again
    }
    (out / STAGE_STOPPED).unlink(missing_ok=True)  # finished: no stage stopped it
    result = write_result(out / "result.json", NAME, settings, {"seed": args.seed}, **fields)
    summary = read_json(write_summary(out, redact=args.redact))
    result = _record_verdicts(out, result, summary)
    report = render_report(out, redact=args.redact)
    stage_line(f"audit: report written to {report}")
    emit(args, result, f"{_head(result, summary)}. Report: {report}")
    return 0


def _record_verdicts(out: Path, result: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the report's two answers (summary.json's ``verdicts``, read from the stages and this
    result) and the extraction verdict's exact-test p-value against the false-positive baseline
    (``baseline_pvalue``, None without a baseline), written into the audit's result.json: what ``--json``
    prints, and a gate reads."""
    from diffaudit.core.io import write_json_atomic

    result = {**result, "baseline_pvalue": (summary.get("extraction") or {}).get("baseline_pvalue"),
              "verdicts": summary.get("verdicts")}
    write_json_atomic(out / "result.json", result)
    return result


def _inpainting_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The audit's record of its inpaint stage: the attack's AUC and how many member and non-member targets."""
    targets = [t for t in result.get("targets") or [] if isinstance(t, dict)]
    n_members = sum(1 for t in targets if t.get("member"))
    return {"auc": result.get("auc"), "n_targets": len(targets), "n_members": n_members,
            "n_nonmembers": len(targets) - n_members}


def _stale(result: dict[str, Any], out: Path) -> str | None:
    """Why a finished audit's result no longer holds, or None: its mia stage ran before the
    near-duplicates a deduplicated target dropped were left out of the non-members (checked again,
    with what to do, when the audit goes through its stages)."""
    from diffaudit.core.io import read_json

    mia = out / "mia" / "result.json"
    if result.get("n_excluded_duplicates") and mia.exists() and "n_excluded" not in read_json(mia):
        return "was finished before near-duplicates the target dropped were left out of its non-members; checking again"
    return None


def _read_summary(out: Path) -> dict[str, Any]:
    """The audit folder's summary.json, {} when it is missing or unreadable."""
    from diffaudit.core.io import read_json

    try:
        return read_json(out / "summary.json")
    except DiffauditError:
        return {}


def _head(result: dict[str, Any], summary: dict[str, Any]) -> str:
    """The audit's answer in one line, from its result.json and summary.json."""
    from diffaudit.report.fmt import fmt_int
    from diffaudit.report.view_extraction import baseline_phrase

    base = baseline_phrase(summary.get("extraction"))
    head = (f"{fmt_int(result.get('unique_extracted'))} of {fmt_int(result.get('n_train'))} training images extracted from "
            f"{fmt_int(result.get('n_samples'))} generations" + (f" ({base})" if base else ""))
    m = result.get("mia")
    if m:
        tpr = (m.get("tpr_at_fpr") or {}).get("0.01")
        head += f"; {m['attack']} MIA AUC {m['auc']:.3f}, TPR {'n/a' if tpr is None else f'{100 * tpr:.1f}%'} at 1% FPR"
    return head
