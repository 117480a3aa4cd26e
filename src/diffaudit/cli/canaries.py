"""``diffaudit canaries``: insert canaries 1..64 times, train, measure exposure and extraction."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from diffaudit.cli.common import (
    add_data_args, add_run_args, canonical_settings, data_options, emit, emit_finished, upgrading_paths,
)
from diffaudit.cli.train import (
    add_train_options, canonical_data_record, refuse_dp_unused, say_eager_off_cuda, train_config_from, upgrading_run_paths,
    warn_short_warmup,
)
from diffaudit.cli.train import setting_flags as train_setting_flags
from diffaudit.core.comma_lists import comma_values
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.progress import stage_line
from diffaudit.core.results import write_result
from diffaudit.data import load_dataset
from diffaudit.data.digest import dataset_digest
from diffaudit.defenses.canaries import CANARY_KINDS, DEFAULT_REPEATS, count_words, make_canaries, max_exposure
from diffaudit.defenses.canary_run import CanaryEval, run_canary_experiment
from diffaudit.report.fmt import fmt_p

NAME = "canaries"
HELP = "insert canaries (noise or held-out images) 1..64 times, train, and measure exposure and extraction"
DESCRIPTION = (
    "Ground-truth calibration (Carlini et al. 2023, Sec. 7): insert canaries into --data, each repeated a chosen "
    "number of times (--repeats 1,2,4,...,64), train a DDPM on the result (out/model, resumable), then measure each "
    "canary's exposure = log2|R| - log2 rank of its loss at t=100 in R, the canary and the --n-reference never-inserted "
    "candidates of the same kind (Secret Sharer: 0 to log2(n_reference + 1) bits), and whether generations extract it. "
    "Every option is checked before training; drawn --canary-pool images that are training images, exact copies or "
    "near-duplicates (those that the verification --rule, --delta calls copies of a training image), or copies of "
    "another drawn pool image, are left out and replaced by other pool images, and a pool that is mostly training "
    "images is refused; held-out canaries and references keep the pool's labels. Writes canaries.json (the "
    "membership record) and result.json with one entry per canary and per reference (the references' extraction "
    "is the baseline of images never trained on) and the curve of memorization vs number of duplicates (repeats 0: "
    "the references). With --dp-noise or --dp-epsilon the model trains with DP-SGD: a canary inserted k times is k "
    "training examples, so the guarantee for it is that of a group of k (up to k times epsilon); `diffaudit compare` "
    "of a run without and one with DP-SGD puts the exposures and the epsilon side by side."
)
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("data", "canary_pool", "data_options.cifar_root")


def setting_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag of each setting not named after its option (for a refusal to resume): the measurement's
    (``evaluation``, a :class:`CanaryEval`), whose seeds are ``--seed``."""
    names = {f"evaluation.{name}": f"--{name.replace('_', '-')}"
             for name in ("timestep", "n_draws", "n_samples", "sample_steps", "rule", "delta")}
    return {**names, "evaluation.noise_seed": "--seed", "evaluation.sample_seed": "--seed", **train_setting_flags(args)}


def _repeats(text: str) -> list[int]:
    return comma_values(text, int, "integers (e.g. 1,2,4,8)", "--repeats")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_run_args(p)
    add_train_options(p)
    g = p.add_argument_group("canaries")
    g.add_argument("--kind", choices=CANARY_KINDS, default="noise", help="uniform noise, or held-out real images from --canary-pool")
    g.add_argument("--canary-pool", default=None, help="dataset of images never trained on, for --kind heldout (e.g. cifar10-test)")
    g.add_argument("--repeats", default=",".join(map(str, DEFAULT_REPEATS)), help="insertion counts, comma-separated")
    g.add_argument("--per-repeat", type=int, default=1,
                   help="canaries per insertion count (with 1, the test against chance needs --n-reference 20 or more)")
    g.add_argument("--n-reference", type=int, default=64,
                   help="never-inserted candidates, at least 2 (exposure is at most log2(N_REFERENCE + 1); with one "
                        "canary per repeat count, p < 0.05 against chance needs at least 20)")
    g = p.add_argument_group("measurement")
    g.add_argument("--timestep", type=int, default=100, help="t of the loss")
    g.add_argument("--n-draws", type=int, default=4, help="noise draws averaged per loss")
    g.add_argument("--n-samples", type=int, default=256, help="generations checked for extraction (0: skip)")
    g.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the generations")
    g.add_argument("--rule", choices=("ratio", "l2"), default="ratio",
                   help="verification rule (paper Sec. 5.1: ratio); it also decides which --canary-pool images are "
                        "near-duplicates of training images")
    g.add_argument("--delta", type=float, default=0.15, help="delta of the l2 rule, in (0, 1]")
    from diffaudit.defenses.dp_training import add_dp_arguments

    add_dp_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Check every setting and draw the canaries, then (only then) open ``--out``, train and measure."""
    device = resolve_device(args.device)
    opts = data_options(args)
    config = train_config_from(args)
    config.validate()
    ev = CanaryEval(timestep=args.timestep, n_draws=args.n_draws, noise_seed=args.seed, n_samples=args.n_samples,
                    sample_steps=args.sample_steps, sample_seed=args.seed, rule=args.rule, delta=args.delta)
    repeats = _repeats(args.repeats)
    from diffaudit.defenses.dp_training import dp_config_from_args

    dp = dp_config_from_args(args)
    if dp is not None:
        refuse_dp_unused(args)
    if args.kind == "heldout" and not args.canary_pool:
        raise DiffauditError("--kind heldout needs --canary-pool (images the model never trains on, e.g. cifar10-test)")
    if args.kind != "heldout" and args.canary_pool:
        raise DiffauditError(f"--canary-pool is read by --kind heldout only; --kind {args.kind} draws its canaries itself: "
                             "drop --canary-pool, or pass --kind heldout to plant images from it")
    ds = load_dataset(args.data, need_captions=False, **opts)  # a pixel model reads no captions
    pool = load_dataset(args.canary_pool, need_captions=False, **dict(opts, subset=None)) if args.kind == "heldout" else None
    # before the output folder exists: a value that cannot work is refused while fixing it costs nothing
    plan = make_canaries(args.kind, image_shape=ds.image_shape, repeats=repeats, per_repeat=args.per_repeat,
                         n_reference=args.n_reference, seed=args.seed, pool=pool, training=ds,
                         copy_rule=ev.copy_rule(), device=device, class_conditional=args.class_conditional)
    ev.validate(n_train=len(ds) + len(plan.keys))
    warn_short_warmup(config, "canaries")
    _warn_untestable(args.per_repeat, args.n_reference)
    if dp is None:
        say_eager_off_cuda(config, device, "canaries")
    _say_skipped(plan.skipped)
    settings = {"data": str(args.data), "data_options": opts, "kind": args.kind, "canary_pool": args.canary_pool,
                "repeats": repeats, "per_repeat": args.per_repeat, "n_reference": args.n_reference,
                "train": asdict(config), "evaluation": asdict(ev),
                # the pixels behind the paths (rewritten in place, they are other data)
                "data_digest": dataset_digest(ds), "canary_pool_digest": None if pool is None else dataset_digest(pool)}
    if dp is not None:  # only then: a run without DP-SGD records what it did before canaries could use it
        settings["dp"] = asdict(dp)
    settings = canonical_settings(settings, PATH_SETTINGS)
    out, resumed = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh, upgrade=upgrading_paths(PATH_SETTINGS))
    if emit_finished(args, out, resumed, lambda r: f"{r['n_canaries']} canaries, {_extracted(r)}", stale=_stale_exposures):
        return 0
    fields = run_canary_experiment(ds, plan, config, out, evaluation=ev, device=device,
                                   data_record=canonical_data_record({"spec": str(args.data), "options": opts}),
                                   upgrade=upgrading_run_paths(), dp=dp)
    r = write_result(out / "result.json", NAME, settings, {"seed": args.seed}, **fields)
    emit(args, r, _curve_line(r))
    return 0


def _curve_line(r: dict) -> str:
    """The result line: mean exposure per repeat count, ``≥`` where some canaries are at the ceiling (a
    loss below every reference's: their exposure is at least it, so the mean is a lower bound), beside
    what a never-learnt canary gets by chance and which repeat counts beat it
    (:mod:`~diffaudit.evaluation.exposure_chance`); a repeat count whose canaries could not beat it even
    below every reference is said to be untestable (:func:`_untestable_words`), not counted among those at
    chance."""
    from diffaudit.evaluation.exposure_chance import LEVEL, chance_exposure
    from diffaudit.report.summary import at_ceiling, exposure_vs_chance, untestable_vs_chance

    rows = [c for c in r["curve"] if c["repeats"] > 0]
    bound = [at_ceiling(c["max_exposure"], r["max_exposure"]) for c in rows]
    curve = ", ".join(f"{c['repeats']}x: {'≥ ' if b else ''}{c['mean_exposure']:.2f}" for c, b in zip(rows, bound))
    note = (f" (≥: canaries at the ceiling, a loss below all {r['n_reference']} references'; more --n-reference "
            "measures higher)" if any(bound) else "")
    untestable = untestable_vs_chance(r)
    tested = {k: p for k, p in exposure_vs_chance(r).items() if k not in untestable}
    beat = [k for k, p in tested.items() if p is not None and p < LEVEL]
    above = (f"above chance (one-sided p < 0.05): {', '.join(f'{k}x' for k in beat)}" if beat
             else f"no {'testable ' if untestable else ''}repeat count above chance (one-sided p < 0.05)"
             if tested or not untestable else "")
    return (f"exposure by repeats ({r['max_exposure']:.2f} bits max, {chance_exposure(r['n_reference']):.2f} by chance): "
            f"{curve}{note}; {above + '; ' if above else ''}{_untestable_words(untestable, r['n_reference'])}"
            f"{_extracted(r)}{_dp_words(r)}")


def _untestable_words(untestable: dict[int, dict], n_reference: int) -> str:
    """"1x, 4x: not testable against chance (...); " for the repeat counts whose canaries could not give p <
    0.05 even below every reference (:func:`~diffaudit.report.summary.untestable_vs_chance`): their p says
    nothing, so they are not called "at chance"; with the --n-reference or --per-repeat that would test
    them. "" where every repeat count can be tested."""
    if not untestable:
        return ""
    counts = {u["n_canaries"] for u in untestable.values()}
    each = (count_words(next(iter(counts)), "canary", "canaries") + " each" if len(counts) == 1
            else "these canaries")
    floor = min(u["min_pvalue"] for u in untestable.values())
    fixes = [f"{flag} {max(needs)}" for flag, key in (("--n-reference", "n_reference"), ("--per-repeat", "n_canaries"))
             if (needs := [u["needs"][key] for u in untestable.values() if isinstance(u["needs"].get(key), int)])]
    fix = f"; {' or '.join(fixes)} can test them" if fixes else ""
    return (f"{', '.join(f'{k}x' for k in untestable)}: not testable against chance (with {each} and {n_reference} "
            f"references p is at least {fmt_p(floor)}, never below 0.05, whatever the model learnt{fix}); ")


def _warn_untestable(per_repeat: int, n_reference: int) -> None:
    """Warn, before training, when ``--per-repeat`` canaries among ``--n-reference`` references cannot reach
    p < 0.05 against chance even below every reference
    (:func:`~diffaudit.evaluation.exposure_chance.smallest_pvalue`): no repeat count could then be shown to
    beat chance, and the result would read as if none did. Says what would let the test find memorization."""
    from diffaudit.core.progress import warning_line
    from diffaudit.evaluation.exposure_chance import LEVEL, needed_to_test, smallest_pvalue

    floor = smallest_pvalue(per_repeat, n_reference)
    if floor is None or floor < LEVEL:
        return
    needs = needed_to_test(per_repeat, n_reference)
    fixes = [f"{flag} {needs[key]}" for flag, key in (("--n-reference", "n_reference"), ("--per-repeat", "n_canaries"))
             if needs[key] is not None]
    fix = f"; pass {' or '.join(fixes)} (or more) to test them" if fixes else ""
    warning_line("canaries", f"with --per-repeat {per_repeat} and --n-reference {n_reference} the test of exposure "
                 f"against chance cannot reach p < 0.05 for any repeat count: even canaries whose loss is below every "
                 f"reference's give p = {fmt_p(floor)}, so the result can show none above chance, whatever the model "
                 f"learns{fix}")


def _dp_words(r: dict) -> str:
    """"; DP-SGD epsilon E at delta D (per example: a canary inserted k times is a group of k)", or ""
    for a model trained without DP-SGD."""
    dp = r.get("dp")
    if not isinstance(dp, dict):
        return ""
    eps = "infinite (no noise)" if dp.get("epsilon") is None else f"{dp['epsilon']:.4g}"  # 7.995, not 8: as the report
    return (f"; DP-SGD epsilon {eps} at delta {dp.get('delta', float('nan')):.2g} per training example (a canary "
            "inserted k times is k examples: a group of k, guaranteed up to k times epsilon)")


def _say_skipped(skipped: list[dict]) -> None:
    """One line per reason drawn --canary-pool images were replaced (training images; copies of another
    drawn pool image), when any were: "12 drawn --canary-pool images are training images (11
    near-duplicates, 1 exact copy) and were replaced by others", "1 drawn --canary-pool image is ..."."""
    training = [s for s in skipped if "duplicate_of" not in s]
    if training:
        near, one = sum(s["copy"] == "near" for s in training), len(training) == 1
        stage_line(f"canaries: {_drawn(len(training))} {'is a training image' if one else 'are training images'} "
                   f"({count_words(near, 'near-duplicate', 'near-duplicates')}, "
                   f"{count_words(len(training) - near, 'exact copy', 'exact copies')}) and {_replaced(one)}")
    n_dup = len(skipped) - len(training)
    if n_dup:
        one = n_dup == 1
        held = "it twice, or a near-duplicate of it" if one else "them twice, or near-duplicates of them"
        stage_line(f"canaries: {_drawn(n_dup)} {'copies' if one else 'copy'} another drawn pool image (the pool holds "
                   f"{held}) and {_replaced(one)}")


def _replaced(one: bool) -> str:
    """The end of a :func:`_say_skipped` line, for one image or several."""
    return ("was replaced by another; canaries.json lists it" if one
            else "were replaced by others; canaries.json lists them")


def _drawn(n: int) -> str:
    """"1 drawn --canary-pool image", "12 drawn --canary-pool images"."""
    return count_words(n, "drawn --canary-pool image", "drawn --canary-pool images")


def _stale_exposures(r: dict) -> str | None:
    """Why a finished result's exposures no longer hold: they left the canary out of |R| (log2 n instead
    of the Secret Sharer's log2(n + 1)). The trained model, cached losses and generations stay, so only
    the exposures are computed again."""
    if isinstance(r.get("n_reference"), int) and r.get("max_exposure") != max_exposure(r["n_reference"]):
        return "holds exposures of an earlier definition (|R| without the canary); recomputing them"
    return None


def _extracted(r: dict) -> str:
    """"K extracted" (and, where recorded, how many never-inserted references: the baseline), or why
    extraction was not tested (no generations asked for)."""
    if r.get("n_extracted") is None:
        return "extraction not tested (--n-samples 0)"
    if r.get("n_reference_extracted") is None:  # a result of a version without the baseline
        return f"{r['n_extracted']} extracted"
    return f"{r['n_extracted']} extracted ({r['n_reference_extracted']} of {r.get('n_reference')} never-inserted references)"
