"""``summary.json``: the audit's numbers in one file (issue 7).

Fields: ``schema_version``, ``command`` (``audit`` or the single command summarised), ``dataset``
{``spec``, ``options``, ``n_train`` (None in a folder whose results were made on several models: one run's
count is not theirs)},
``model`` {``path`` (the one run the results name; membership attacks pooled over every shadow model name
none), ``stages`` (in a folder whose results were made on several models: the results made on this one),
what its training run records: ``steps``, ``n_train``, ``final_loss``, ``preset``,
``batch_size``, ``lr``, ..., ``image_size``, ``data`` {``spec``, ``options``}, ``dedup``
{``keep_list``, ``n_dropped``}, ``dp`` {``epsilon``, ``delta``, ...}, ``repeats`` {``n_repeated``, ``n_stream``}
and ``extended_from`` {``run``, ``steps``} (null when not used)},
``extraction`` {``unique_extracted``, ``n_samples``, ``rule``,
``baseline_unique_extracted``, ``baseline_n_images``, ``from_extract`` (true when verify checked only the
flagged clique medoids: ``n_samples`` and ``n_extracting_samples`` then count medoids) and
``n_clique_generations`` (the generations in the cliques of the extracting medoids, None when the extract
result is not found), ``calibration`` (``extract --calibrate``'s sweep: ``n_memorized``, ``points``, ``best``), ``baseline_pvalue`` (the one-sided exact
test of the two counts), ``n_excluded_duplicates`` (near-duplicates a deduplicated target dropped,
left out of the baseline), ``baseline_n_left_out`` (--baseline images that --data holds pixel for pixel,
left out of it), ``data_vs_model`` {``n_data``, ``n_trained``, ``n_not_trained``, ``n_trained_missing``}
(verify's --data against the training set of the model that made the generations, where it is known),
``prompt_checks_extracted`` (a ``--train-map`` check), ``pool`` {``n_members``, ``members``: [{``samples``,
``n_samples``, ``n_extracting_samples``, ``unique_extracted``, ``first_credited``}]} (generations of a pool of
stores, one per model: ``unique_extracted`` is then counted over all of them, each member's alone beside it), ``n_cliques``
(unconditional extract: the number of near-identical generation groups, which extract's result.json
calls ``n_groups``; the report reads it as ``n_cliques``) with ``n_truncated_components`` and ``n_saturated``
(where the search cut components to --max-component or saturated generations), or ``n_prompts`` and ``n_flagged``
(conditional extract) with ``n_prompts_below_min_clique`` and ``min_clique`` (prompts too few
generations to be flagged) and ``prompt_kind`` (``class`` where the prompts are a class-conditional
model's class indices, ``text`` otherwise; absent from results written before extract recorded it),
``extracted_l2_*`` and ``baseline_l2_*`` (min, median, max of each image's closest generation) and ``extracted_closer_than_baseline`` (training matches closer than any
baseline match), ...},
``mia`` {attack: {``label`` (the attack's name as the report gives it: with its folder's where two folders ran
    the same attack), ``auc``, ``tpr_at_fpr``, ``ci``, ``n_excluded``, ``n_identical_excluded``, ``mean_loss`` (the
    targets' mean denoising loss on members and non-members, and their gap), ``pooled``, ``n_models``,
    ``n_examples`` and ``shadows`` (leave-one-out: every shadow model of that folder the target in turn, and the
    counts are of (model, example) rows), ``model`` (the one run attacked: ``--target``, or the shadow model
    ``--target-index`` names), ``strong_aggregate`` (Strong LiRA: ``sum-llr`` or ``mean-loss``, None where
    not recorded), ``pooled_variance_per_side`` (a
    per-example-variance attack with fewer than 2 shadows a side for some example; ``pooled_variance_all``: for
    every example), ``rank_test`` (with fewer than 10
    members or non-members: {``pvalue``, ``method``, ``n_orderings``}, the one-sided rank test), ...}},
``inpainting`` {``auc``, ``auc_evidence`` {``pvalue`` (one-sided rank test), ``method``, ``n_orderings``,
``n_at_least``, ``min_pvalue``, ``anecdotal`` (too few targets for any result to reach p < 0.05), ``ci`` (a
bootstrap interval; None for an anecdote)}, ``n_targets``, ``n_members``, ``n_nonmembers``, ``top_k`` (best
inpaintings kept per target), ``mean_topk_l2`` and ``best_l2`` {``members``, ``nonmembers``}: means over targets;
results written before ``top_k`` was recorded call the field ``mean_top10_l2``, and are read too},
``canaries`` {``n_canaries``, ``n_extracted``, ``n_reference``, ``exposure_ceiling`` (log2(n_reference + 1): the
largest exposure measurable; a canary at it has rank 1 and an exposure of at least that), ``n_at_ceiling``,
``ceiling_extrapolated`` {``min``, ``max``} (the Gaussian-extrapolated exposure of the canaries at the ceiling),
``by_repeats`` (with ``n_at_ceiling`` per repeat count, ``chance_pvalue`` (the one-sided test of its canaries
against chance), ``chance_min_pvalue`` (the least p that test could give them: every canary below every
reference) and ``chance_needs`` {``n_reference``, ``n_canaries``} (where that least p is not below 0.05, so the
test cannot find memorization: the fewest references, or canaries, that would let it; None elsewhere)),
``references`` {``n``, ``n_extracted``}: the never-inserted images verified like canaries, None in results from
before they were}, ``dedup`` {``threshold`` (the similarity at or above which two images were joined), ``n_images`` (images
searched), ``n_groups``, ``n_in_groups``, ``largest_group``, ``embedder`` (its settings,
as dedup recorded them), ``embedder_text`` (the same in words)},
``outliers`` {``rho``, ..., ``attack_at_chance``, ``attack_separates`` (AUC 1.0: every member is identified, so
the correlation measures how the raw score varies between members, not their exposure), ``raw_loss``},
``shadows`` (a ``diffaudit shadows`` folder: ``folder``, ``n_models``, ``n_examples``, ``n_columns``, ``models``
[{``run``, ``n_train``, ``final_loss``}]),
``stages`` (the result folders read, each {``name``, ``command``}; ``model_record`` true for a training run read
for the model's record, which is no result folder of its own), ``audit_stages`` (the stages the audit's result.json lists as
run), ``audit_finished`` (False for an audit folder whose audit has not finished: ``stages`` are the
ones it finished; None when the folder is one command's), ``audit_stopped`` (of an unfinished audit, the
stage that stopped it: {``stage``, ``exit`` (130: interrupted), ``error`` (what its command said, or None)};
None when none did), ``skipped_inputs`` (``n``, ``listed``: the inputs ``--skip-bad`` skipped, which no
result looked at; None when none; summary.json holds ``n`` alone: :func:`without_names`), ``mixed_inputs`` (a folder of separate results made on more than one dataset or model: ``data``, a list of
{``input``, ``options``, ``digest``, ``stages``} (one dataset where both digests agree, whatever the options),
and ``model``, a list of {``input``, ``stages``} for one run and {``input`` (the shadows folder), ``pooled`` (how many
shadow models), ``stages``} for membership attacks pooled over them; None when they agree), ``settings`` and ``seeds`` (per stage),
``versions``.
A section whose stage did not run is null. The HTML report renders from this dictionary, so the
numbers a person reads are the numbers in the file.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

from diffaudit.attacks.extraction.calibration import CalibrationPoint, best_point
from diffaudit.attacks.membership.registry import PER_EXAMPLE_VARIANCE
from diffaudit.core.io import write_json_atomic
from diffaudit.core.outdir import recorded_settings
from diffaudit.core.results import SCHEMA_VERSION, with_current_names
from diffaudit.evaluation.exposure_chance import LEVEL as CHANCE_LEVEL
from diffaudit.evaluation.exposure_chance import chance_exposure, exposure_pvalue, needed_to_test, smallest_pvalue
from diffaudit.models.digest import TRAIN_IDS
from diffaudit.models.run_files import DROPPED_DUPLICATES
from diffaudit.report.calibration_sweep import calibration_points
from diffaudit.report.clique_counts import clique_counts, from_extract
from diffaudit.report.images import data_digest, data_spec
from diffaudit.report.results import (ResultSet, Stage, closest, load_results, model_used, parse_json, read_object,
                                      records, resolve_path)

ENVELOPE = ("schema_version", "command", "settings", "seeds", "versions")
# A membership attack whose AUC interval holds 0.5 is taken as guessing (what its scores correlate with
# means nothing); without a recorded interval, one whose AUC is below this.
CHANCE_AUC = 0.6
# A membership attack with this AUC ranks every member above every non-member (ties count half, so
# only strict separation reaches it): every member is identified, and exposure no longer varies.
PERFECT_AUC = 1.0
# An exposure within this of the run's ceiling log2(n_reference + 1) is at it (rank 1; rounding aside).
CEILING_TOLERANCE = 1e-9


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x: Any) -> int | None:
    """``x`` as an integer; None where it is none (missing, text, NaN, or an infinity, which Python's
    JSON parser reads from a result file holding ``Infinity``)."""
    try:
        return int(x)
    except (TypeError, ValueError, OverflowError):
        return None


def interval(value: Any) -> dict[str, float] | None:
    """A confidence interval as ``{"low", "high"[, "level"]}`` from a dict or a [low, high] pair."""
    if isinstance(value, dict):
        lo = value.get("low", value.get("lo", value.get("lower")))
        hi = value.get("high", value.get("hi", value.get("upper")))
        out = {"low": _finite(lo), "high": _finite(hi)}
        if "level" in value:
            out["level"] = _finite(value["level"])
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        out = {"low": _finite(value[0]), "high": _finite(value[1])}
    else:
        return None
    return out if out["low"] is not None and out["high"] is not None else None


def _tpr_value(v: Any) -> tuple[float | None, Any]:
    """(value, ci) of a TPR entry that is a number or a dict {value|tpr, ci}."""
    if isinstance(v, dict):
        return _finite(v.get("value", v.get("tpr"))), v.get("ci")
    return _finite(v), None


def _mean_loss(v: Any) -> dict[str, float] | None:
    """A mia result's ``mean_loss`` {members, nonmembers, gap} with finite values; None otherwise (older results)."""
    if not isinstance(v, dict):
        return None
    out = {k: _finite(v.get(k)) for k in ("members", "nonmembers", "gap")}
    return out if None not in out.values() else None


def _mia_entry(stage: Stage) -> dict[str, Any]:
    r = stage.result
    ci = r.get("ci") if isinstance(r.get("ci"), dict) else (r.get("bootstrap") if isinstance(r.get("bootstrap"), dict) else {})
    tpr: dict[str, float | None] = {}
    tpr_ci: dict[str, Any] = {}
    raw_ci = ci.get("tpr_at_fpr") if isinstance(ci.get("tpr_at_fpr"), dict) else (r.get("tpr_at_fpr_ci") or {})
    for key, value in (r.get("tpr_at_fpr") or {}).items():
        tpr[str(key)], inline_ci = _tpr_value(value)
        tpr_ci[str(key)] = interval(inline_ci if inline_ci is not None else (raw_ci or {}).get(key))
    out = {
        "attack": str(r.get("attack") or stage.name),
        "auc": _finite(r.get("auc")),
        "tpr_at_fpr": tpr,
        "ci": {"auc": interval(ci.get("auc", r.get("auc_ci"))), "tpr_at_fpr": tpr_ci},
        "n_members": _int(r.get("n_members")),
        "n_nonmembers": _int(r.get("n_nonmembers")),
        "n_excluded": _int(r.get("n_excluded")),  # dropped near-duplicates of a deduplicated target's members
        "n_identical_excluded": _int(r.get("n_identical_excluded")),  # non-members that are a member, pixel for pixel
        "timesteps": r.get("timesteps"),
        "mean_loss": _mean_loss(r.get("mean_loss")),
    }
    if "balanced_accuracy" in r:
        out["balanced_accuracy"] = _finite(r.get("balanced_accuracy"))
    if "tpr_at_zero_fpr" in r:  # members above every non-member (results of earlier versions lack it)
        out["tpr_at_zero_fpr"] = _finite(r.get("tpr_at_zero_fpr"))
    if isinstance(r.get("n_draws"), int):  # the queries per timestep: noise draws, each also flipped or not
        out.update(n_draws=r["n_draws"], flips=bool(r.get("flips")))
    if str(out["attack"]).startswith("strong"):  # how its queries' losses were combined into one score
        attack = stage.settings.get("attack") if isinstance(stage.settings.get("attack"), dict) else {}
        aggregate = r.get("strong_aggregate") or attack.get("strong_aggregate")
        out["strong_aggregate"] = aggregate if isinstance(aggregate, str) else None
    target = r.get("target") if isinstance(r.get("target"), dict) else {}
    recorded = stage.settings.get("target") if isinstance(stage.settings.get("target"), dict) else {}
    # the run as settings record it, canonical: results of earlier versions kept --target as typed ("runs/x")
    used = model_used({**stage.settings, "target": {**target, **recorded}}) or {}
    if target.get("mode") == "leave-one-out":  # rows of every model in turn: say so beside the counts
        out.update(pooled=True, n_models=_int(r.get("n_models")) or used.get("pooled"),
                   n_examples=_int(r.get("n_examples")), shadows=used.get("shadows"))
    elif used.get("run"):  # the one run attacked: --target, or the shadow --target-index names
        out["model"] = used["run"]
    per_side = _int(r.get("shadows_per_side"))
    if out["attack"] in PER_EXAMPLE_VARIANCE and per_side is not None and per_side < 2:
        out["pooled_variance_per_side"] = per_side  # lira.py: a side of fewer than 2 takes the pooled variance
        most = _int(r.get("shadows_per_side_max"))
        out["pooled_variance_all"] = most is not None and most < 2  # every example: the -fixed variant's scores
    unlike = r.get("unlike_shadows")
    if isinstance(unlike, list) and unlike:  # the attacked model trained otherwise than its shadows
        out["unlike_shadows"] = [str(x) for x in unlike]
    few = r.get("rank_test") if isinstance(r.get("rank_test"), dict) else None
    if few is not None and _finite(few.get("pvalue")) is not None:  # few members or non-members (mia.FEW_PER_CLASS)
        out["rank_test"] = {"pvalue": _finite(few.get("pvalue")), "method": str(few.get("method")),
                            "n_orderings": _int(few.get("n_orderings"))}
    return out


def mia_key(stage: Stage, taken: set[str]) -> str:
    """The attack's name, made unique by the folder name when two folders ran the same attack."""
    name = str(stage.result.get("attack") or stage.name)
    return name if name not in taken else stage.name


def mia_labels(stages: list[Stage]) -> dict[str, str]:
    """Stage name -> how the report names its membership attack: the attack's name (``loss``), and where
    two folders ran the same attack, with the folder that tells them apart (``loss in mia-tidx1``). The
    summary's keys stay unique names (:func:`mia_key`), but a reader is told the attack, not a folder."""
    names = {st.name: str(st.result.get("attack") or st.name) for st in stages}
    counts = Counter(names.values())
    return {st: (f"{name} in {st}" if counts[name] > 1 and name != st else name) for st, name in names.items()}


def prompt_check_counts(r: dict[str, Any]) -> dict[str, Any]:
    """The ``--train-map`` check of a verify result: ``prompt_checks_extracted`` (generations within δ
    of their own prompt's training image), ``prompt_checks_n`` (mapped generations checked) and
    ``prompt_checks_unique_extracted`` (distinct training images reproduced); {} when it did not run."""
    checks = [c for c in (r.get("prompt_checks") or []) if isinstance(c, dict)]
    if r.get("prompt_checks_extracted") is None and not checks:
        return {}
    hits = [c for c in checks if c.get("extracted")]
    keys = {c.get("train_key", c.get("train_id")) for c in hits} - {None}
    n_hits = _int(r.get("prompt_checks_extracted"))
    return {
        "prompt_checks_extracted": len(hits) if n_hits is None else n_hits,
        "prompt_checks_n": len(checks) if checks else None,
        "prompt_checks_unique_extracted": len(keys) if keys or not hits else None,
    }


def baseline_pvalue(ex: dict[str, Any]) -> float:
    """One-sided exact p-value of the extracted count n against the baseline count b.

    Null: a training image and a never-seen image are matched by some generation with the same
    chance. With both set sizes recorded this is Fisher's exact test of the 2x2 table (matched or not,
    training or baseline): given n + b matched images in all, n is hypergeometric (N_train of the
    N_train + N_baseline images are training images), which stays exact when most images match.
    Without them, n ~ Binomial(n + b, 1/2) (equal sets). Returns P(X ≥ n) in [0, 1] (1 when n is 0);
    small means n is well above what the baseline's rate explains.
    """
    from scipy.stats import binom, hypergeom

    n, b = int(ex["unique_extracted"]), int(ex["baseline_unique_extracted"])
    if n <= 0:
        return 1.0
    n_train, n_base = _int(ex.get("n_train")), _int(ex.get("baseline_n_images"))
    if n_train and n_base and n <= n_train and b <= n_base:
        return float(hypergeom.sf(n - 1, n_train + n_base, n_train, n + b))
    return float(binom.sf(n - 1, n + b, 0.5))


def _pool(record: Any) -> dict[str, Any] | None:
    """verify's ``pool`` record as the summary gives it: ``n_members`` and per member ``samples`` (its store),
    ``n_samples``, ``n_extracting_samples``, ``unique_extracted`` (alone) and ``first_credited``; None without one."""
    members = record.get("members") if isinstance(record, dict) else None
    if not isinstance(members, list) or not members:
        return None
    keys = ("n_samples", "n_extracting_samples", "unique_extracted", "first_credited")
    rows = [{"samples": m.get("samples"), **{k: _int(m.get(k)) for k in keys}} for m in members if isinstance(m, dict)]
    return {"n_members": len(rows), "members": rows}


def _extraction(rs: ResultSet) -> dict[str, Any] | None:
    verify, extract = rs.first("verify"), rs.first("extract")
    if verify is None and extract is None:
        return None
    out: dict[str, Any] = {"unique_extracted": None, "n_samples": None, "rule": None, "baseline_unique_extracted": None}
    if verify is not None:
        r, s = verify.result, verify.settings
        # `extracted` null: the nearest-neighbour verification did not run (a --train-map-only run), so
        # the counts stay unknown (null), never 0
        measured = isinstance(r.get("extracted"), list)
        extracted = r["extracted"] if measured else []
        unique = r.get("unique_extracted")
        if unique is None and measured:
            unique = len({e.get("train_key", e.get("train_id")) for e in extracted if isinstance(e, dict)})
        out.update(
            unique_extracted=_int(unique),
            n_samples=_int(r.get("n_samples")),
            rule=r.get("rule", s.get("rule")),
            baseline_unique_extracted=_int(r.get("baseline_unique_extracted")),
            n_extracting_samples=_int(r.get("n_extracting_samples", len(extracted) if measured else None)),
        )
        out.update(prompt_check_counts(r))
        if r.get("prompt_kind") == "class":  # as extract records it (its result may be elsewhere)
            out["prompt_kind"] = "class"
        total = _int(r.get("n_samples_total"))
        if total is not None and total != out["n_samples"]:  # --from-extract: medoids of more generations
            out["n_samples_total"] = total
        if from_extract(verify):  # the counts above are of clique medoids; their cliques hold more generations
            counts = clique_counts(rs, verify)
            out.update(from_extract=True, n_clique_generations=None if counts is None else counts["n_generations"])
        pooled = _pool(r.get("pool"))
        if pooled is not None:  # generations of several models' stores (`diffaudit pool`), counted over all of them
            out["pool"] = pooled
        dvm = r.get("data_vs_model")
        if isinstance(dvm, dict):  # --data against the training set of the model that made --samples
            out["data_vs_model"] = {k: _int(dvm.get(k)) for k in ("n_data", "n_trained", "n_not_trained", "n_trained_missing")}
        base_rec = r.get("baseline") if isinstance(r.get("baseline"), dict) else {}
        if base_rec.get("n_images") is not None:
            out["baseline_n_images"] = _int(base_rec.get("n_images"))
        if _int(base_rec.get("n_extracting_samples")) is not None:  # the same generations matching never-seen images
            out["baseline_n_extracting_samples"] = _int(base_rec.get("n_extracting_samples"))
        if _int(base_rec.get("n_left_out")):  # --baseline images --data holds too: not never-seen, not counted
            out["baseline_n_left_out"] = _int(base_rec.get("n_left_out"))
        excluded = _int(rs.audit.get("n_excluded_duplicates"))
        if excluded and out["baseline_unique_extracted"] is not None:  # a deduplicated --model: left out of the baseline
            out["n_excluded_duplicates"] = excluded
        for k in ("delta", "alpha", "n_neighbors", "n_train", "eidetic_delta"):
            if k in r or k in s:
                out[k] = r.get(k, s.get(k))
        if out["baseline_unique_extracted"] is not None and out["unique_extracted"] is not None:
            out["baseline_pvalue"] = baseline_pvalue(out)
        # How far the matches lie: training matches should be much closer than any baseline "match".
        base = r.get("baseline") if isinstance(r.get("baseline"), dict) else {}
        l2s = {name: sorted(float(e["l2"]) for e in map(closest, rows)  # each image's closest generation, both sides
                            if isinstance(e.get("l2"), (int, float)))
               for name, rows in (("extracted", [e for e in extracted if isinstance(e, dict)]),
                                  ("baseline", [e for e in base.get("extracted") or [] if isinstance(e, dict)]))}
        for name, l2 in l2s.items():
            if l2:
                out[f"{name}_l2_min"], out[f"{name}_l2_median"], out[f"{name}_l2_max"] = l2[0], median(l2), l2[-1]
        if l2s["baseline"]:  # training matches no never-seen image came as close to
            out["extracted_closer_than_baseline"] = sum(1 for d in l2s["extracted"] if d < l2s["baseline"][0])
    if extract is not None:
        r = extract.result
        if r.get("mode") == "unconditional" or "groups" in r:
            groups = records(r, "members", preferred=("groups",))
            out["n_cliques"] = _int(r.get("n_groups", len(groups)))  # extract's n_groups (module docstring)
            for k in ("n_truncated_components", "n_saturated"):  # the search's limits: cliques it may have missed
                if _int(r.get(k)):
                    out[k] = _int(r.get(k))
        else:
            prompts = records(r, "members", preferred=("prompts", "cliques", "results"))
            out["n_prompts"] = _int(r.get("n_prompts", len(prompts)))
            out["n_flagged"] = _int(r.get("n_flagged", sum(1 for p in prompts if p.get("flagged"))))
            if r.get("prompt_kind") in ("class", "text"):
                out["prompt_kind"] = r["prompt_kind"]
            below = _int(r.get("n_prompts_below_min_clique"))
            if below:  # prompts with fewer generations than the minimum clique: never flagged, whatever they emit
                out["n_prompts_below_min_clique"] = below
                out["min_clique"] = _int(extract.settings.get("min_clique"))
            cal = _calibration(extract)
            if cal is not None:
                out["calibration"] = cal
        if out["n_samples"] is None:
            out["n_samples"] = _int(r.get("n_samples"))
    return out


def _calibration(extract: Stage) -> dict[str, Any] | None:
    """``extract --calibrate``'s sweep: ``n_memorized`` (ground-truth prompts among the samples'),
    ``unknown_prompts``, ``points`` [{``edge_threshold``, ``min_clique``, ``flagged``, ``precision``,
    ``recall``}] and ``best`` (the highest-F1 point as extract's line picks it; None when no point finds
    a memorized prompt); None without a calibration."""
    found = calibration_points(extract)
    if found is None:
        return None
    points, cal = found
    best = best_point(points)

    def point(p: CalibrationPoint) -> dict[str, Any]:
        return {"edge_threshold": p.edge_threshold, "min_clique": p.min_clique, "flagged": p.flagged,
                "precision": p.precision, "recall": p.recall}

    return {"n_memorized": _int(cal.get("n_memorized")), "unknown_prompts": _int(cal.get("unknown_prompts")),
            "points": [point(p) for p in points], "best": None if best is None else point(best)}


def _mean(values: list[float]) -> float | None:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def inpainting_targets(stage: Stage) -> list[dict[str, Any]]:
    """The per-target records of an inpaint result, each with its fields under their current names
    (``mean_topk_l2``), also when the file was written under the old ones (``mean_top10_l2``)."""
    targets = records(stage.result, "best_l2", preferred=("targets", "results"))
    return [with_current_names(t) for t in targets]


def inpainting_top_k(stage: Stage, targets: list[dict[str, Any]]) -> int | None:
    """How many best inpaintings per target ``mean_topk_l2`` averages: the result's ``top_k``, else the
    settings' (older results), else the length of the targets' ``top_l2`` lists; None when unknown."""
    k = _int(stage.result.get("top_k", stage.settings.get("top_k")))
    if k is not None:
        return k
    lengths = {len(t["top_l2"]) for t in targets if isinstance(t.get("top_l2"), list)}
    return lengths.pop() if len(lengths) == 1 else None


def _inpainting_evidence(st: Stage, auc: float | None, mem: list[dict[str, Any]], non: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the inpainting AUC can show on its few targets (:func:`~diffaudit.report.rank_test.auc_evidence`
    of the scores −``mean_topk_l2``, the attack's own); None without a member and a non-member, or when the
    recorded AUC is not the AUC of these scores (a target without a distance)."""
    from diffaudit.evaluation.roc import auc as auc_of
    from diffaudit.report.rank_test import auc_evidence

    scores = [[-v for t in group if (v := _finite(t.get("mean_topk_l2"))) is not None] for group in (mem, non)]
    if len(scores[0]) != len(mem) or len(scores[1]) != len(non) or not mem or not non:
        return None
    labels = [True] * len(scores[0]) + [False] * len(scores[1])
    if auc is None or abs(auc_of(scores[0] + scores[1], labels) - auc) > 1e-9:
        return None
    return auc_evidence(scores[0], scores[1], seed=_int(st.seeds.get("seed")) or 0)


def _inpainting(rs: ResultSet) -> dict[str, Any] | None:
    """``auc``, counts, ``top_k``, the mean over targets of ``mean_topk_l2`` (the mean ℓ2 of each
    target's ``top_k`` best inpaintings) and ``best_l2``, for members and non-members, and
    ``auc_evidence`` (:func:`_inpainting_evidence`)."""
    st = rs.first("inpaint")
    if st is None:
        return None
    targets = inpainting_targets(st)
    mem = [t for t in targets if t.get("member")]
    non = [t for t in targets if not t.get("member")]
    auc = _finite(st.result.get("auc"))
    return {
        "auc": auc,
        "auc_evidence": _inpainting_evidence(st, auc, mem, non),
        "n_targets": len(targets),
        "n_members": len(mem),
        "n_nonmembers": len(non),
        "top_k": inpainting_top_k(st, targets),
        "mean_topk_l2": {
            "members": _mean([_finite(t.get("mean_topk_l2")) for t in mem]),
            "nonmembers": _mean([_finite(t.get("mean_topk_l2")) for t in non]),
        },
        "best_l2": {
            "members": _mean([_finite(t.get("best_l2")) for t in mem]),
            "nonmembers": _mean([_finite(t.get("best_l2")) for t in non]),
        },
    }


def _n_extracted(cans: list[dict[str, Any]]) -> int | None:
    """Canaries extracted, or None when none was tested for extraction (every ``extracted`` null or absent)."""
    tested = [c for c in cans if c.get("extracted") is not None]
    return sum(1 for c in tested if c["extracted"]) if tested else None


def exposure_ceiling(result: dict[str, Any]) -> float | None:
    """The largest exposure a canaries run can measure, log2(n_reference + 1) bits: exposure = log2 |R| −
    log2 rank, and a canary whose loss is below every reference's has rank 1 (its true exposure is at
    least this, maybe far more). The result's ``max_exposure``, else computed from its ``n_reference``;
    None when neither is recorded."""
    ceiling = _finite(result.get("max_exposure"))
    n_ref = _int(result.get("n_reference"))
    if ceiling is None and n_ref is not None and n_ref > 0:
        ceiling = math.log2(n_ref + 1)
    return ceiling


def _exposure_groups(result: dict[str, Any]) -> dict[int, list[float]]:
    """Repeat count (> 0) -> the recorded exposures of its canaries, in repeat order; {} without
    ``n_reference`` (no test against chance can be made)."""
    n_ref = _int(result.get("n_reference"))
    if n_ref is None or n_ref < 1:
        return {}
    groups: dict[int, list[float]] = {}
    for c in records(result, "repeats", preferred=("canaries",)):
        r, e = _int(c.get("repeats")), _finite(c.get("exposure"))
        if r is not None and r > 0 and e is not None:
            groups.setdefault(r, []).append(e)
    return {r: groups[r] for r in sorted(groups)}


def exposure_vs_chance(result: dict[str, Any]) -> dict[int, float | None]:
    """Repeat count (> 0) -> one-sided p that its canaries rank above the never-inserted references no
    more than never-learnt canaries would (:func:`~diffaudit.evaluation.exposure_chance.exposure_pvalue`
    of their recorded exposures); {} without ``n_reference``."""
    n_ref = _int(result.get("n_reference"))
    return {r: exposure_pvalue(e, n_ref) for r, e in _exposure_groups(result).items()}


def untestable_vs_chance(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The repeat counts whose test against chance cannot reach p < 0.05 whatever the model learnt: too
    few canaries or references for even canaries below every reference to give less
    (:func:`~diffaudit.evaluation.exposure_chance.smallest_pvalue`). Repeat count -> {``n_canaries`` (those
    tested), ``min_pvalue`` (the least p they could give), ``needs`` (the fewest ``n_reference`` with this many
    canaries, and the fewest ``n_canaries`` with these references, that could reach it:
    :func:`~diffaudit.evaluation.exposure_chance.needed_to_test`)}. A p of 0.05 or more for these says nothing
    either way: it is no sign that their canaries were not memorized."""
    n_ref = _int(result.get("n_reference"))
    out = {}
    for r, e in _exposure_groups(result).items():
        floor = smallest_pvalue(len(e), n_ref)
        if floor is not None and floor >= CHANCE_LEVEL:
            out[r] = {"n_canaries": len(e), "min_pvalue": floor, "needs": needed_to_test(len(e), n_ref)}
    return out


def at_ceiling(exposure: float | None, ceiling: float | None) -> bool:
    """Whether a canary's ``exposure`` is the run's ceiling (rank 1), up to rounding."""
    return exposure is not None and ceiling is not None and exposure >= ceiling - CEILING_TOLERANCE


def _ceiling_extrapolation(cans: list[dict[str, Any]], ceiling: float | None) -> dict[str, float] | None:
    """{"min", "max"} of the Gaussian-extrapolated exposure (``exposure_gaussian``, Secret Sharer §4.3) of
    the canaries at the ceiling; None when none is at it or none records one."""
    values = [_finite(c.get("exposure_gaussian")) for c in cans if at_ceiling(_finite(c.get("exposure")), ceiling)]
    values = [v for v in values if v is not None]
    return {"min": min(values), "max": max(values)} if values else None


def _canaries(rs: ResultSet) -> dict[str, Any] | None:
    st = rs.first("canaries")
    if st is None:
        return None
    cans = records(st.result, "repeats", preferred=("canaries",))
    ceiling = exposure_ceiling(st.result)
    groups: dict[int, list[dict[str, Any]]] = {}
    for c in cans:
        r = _int(c.get("repeats"))
        if r is not None:
            groups.setdefault(r, []).append(c)
    by_repeats = []
    n_ref = _int(st.result.get("n_reference"))
    vs_chance, untestable = exposure_vs_chance(st.result), untestable_vs_chance(st.result)
    for r in sorted(groups):
        exps = [_finite(c.get("exposure")) for c in groups[r]]
        exps = [e for e in exps if e is not None]
        by_repeats.append({
            "repeats": r,
            "n": len(groups[r]),
            "mean_exposure": _mean(exps),
            "max_exposure": max(exps) if exps else None,
            # canaries at the ceiling: the max is a lower bound, and so is the mean
            "n_at_ceiling": sum(1 for e in exps if at_ceiling(e, ceiling)),
            "n_extracted": _n_extracted(groups[r]),
            # one-sided p of ranking this far above the references by chance (None: the references, repeats 0)
            "chance_pvalue": vs_chance.get(r),
            # the least p these canaries could give, below every reference; where it is not below 0.05 the
            # test cannot find memorization, and what would let it (None: it can, or no p was made)
            "chance_min_pvalue": smallest_pvalue(len(exps), n_ref or 0) if r in vs_chance else None,
            "chance_needs": untestable[r]["needs"] if r in untestable else None,
        })
    n_extracted = _n_extracted(cans)
    if "n_extracted" in st.result and st.result["n_extracted"] is None:
        n_extracted = None  # the run skipped extraction (--n-samples 0)
    refs = [r for r in (st.result.get("references") or []) if isinstance(r, dict)]  # none before they were verified
    return {
        "n_canaries": len(cans),
        "n_extracted": n_extracted,
        "n_reference": n_ref,
        "exposure_ceiling": ceiling,
        # the mean exposure of a canary the model never learnt (its rank uniform among the references)
        "chance_exposure": chance_exposure(n_ref) if n_ref else None,
        "n_at_ceiling": sum(row["n_at_ceiling"] for row in by_repeats),
        "ceiling_extrapolated": _ceiling_extrapolation(cans, ceiling),
        "by_repeats": by_repeats,
        "references": {"n": len(refs), "n_extracted": _n_extracted(refs)} if refs else None,
    }


def at_chance(entry: dict[str, Any]) -> bool | None:
    """Whether a membership attack (a ``mia`` summary entry) is indistinguishable from guessing: with few
    members or non-members, its one-sided rank test is not below 0.05 (``ANECDOTE_LEVEL``; the bootstrap
    interval barely covers a small class's sampling); else its recorded AUC confidence interval holds 0.5
    (AUC 0.58 [0.57, 0.59] is weak but not guessing), or, without one (``--bootstrap 0``), Hanley and
    McNeil's 95% interval from its counts does (:func:`~diffaudit.evaluation.roc.auc_standard_error`); without
    the counts either, its AUC is below :data:`CHANCE_AUC`. None when the AUC is not recorded."""
    auc = entry.get("auc")
    if auc is None:
        return None
    few = entry.get("rank_test")
    if isinstance(few, dict) and few.get("pvalue") is not None:
        from diffaudit.report.rank_test import ANECDOTE_LEVEL

        return bool(few["pvalue"] >= ANECDOTE_LEVEL)
    ci = (entry.get("ci") or {}).get("auc")
    if ci and ci.get("low") is not None and ci.get("high") is not None:
        return bool(ci["low"] <= 0.5 <= ci["high"])
    n1, n0 = entry.get("n_members"), entry.get("n_nonmembers")
    if isinstance(n1, int) and isinstance(n0, int) and n1 > 0 and n0 > 0:  # no bootstrap: Hanley-McNeil's interval
        from diffaudit.evaluation.roc import auc_standard_error

        return bool(abs(auc - 0.5) <= 1.96 * auc_standard_error(auc, n1, n0))
    return auc < CHANCE_AUC


def separates(entry: dict[str, Any]) -> bool | None:
    """Whether a membership attack (a ``mia`` summary entry) separates members from non-members
    perfectly: AUC 1.0, every member scoring above every non-member. Then every member is identified at
    any threshold between the two groups, so all are equally exposed to the attack (at the ceiling), and
    how the scores vary among members says nothing about how exposed each is. None when the AUC is not
    recorded."""
    auc = entry.get("auc")
    return None if auc is None else bool(auc >= PERFECT_AUC)


def _scored_attack(mia_keys: dict[str, str]) -> str | None:
    """The attack whose per-example scores the outliers stage correlated: the audit's ``mia/`` folder
    (the one ``audit`` reads them from), else the only membership stage; None when unknown."""
    if "mia" in mia_keys:
        return mia_keys["mia"]
    return next(iter(mia_keys.values())) if len(mia_keys) == 1 else None


def _outliers(rs: ResultSet, mia: dict[str, Any], mia_keys: dict[str, str]) -> dict[str, Any] | None:
    """The Spearman correlation of outlier score with membership score, and the attack it rests on:
    ``attack``, ``attack_auc``, ``attack_at_chance`` and ``attack_separates`` (either true: the
    correlation says nothing about exposure; see :func:`at_chance` and :func:`separates`), the attack's
    member and non-member counts, and ``raw_loss`` (true: the score is the negative raw loss of the loss
    threshold attack, which also varies with how easily the model denoises each image)."""
    st = rs.first("outliers")
    if st is None:
        return None
    r = st.result
    sp = r.get("spearman") or {}
    key = _scored_attack(mia_keys)
    entry = mia.get(key) or {}
    return {"rho": _finite(sp.get("rho")), "pvalue": _finite(sp.get("pvalue")), "n": _int(sp.get("n")),
            "k": _int(r.get("k")), "n_images": _int(r.get("n_images")), "population": r.get("population"),
            "bins": r.get("bins") or [],
            "attack": key, "attack_auc": entry.get("auc"), "attack_auc_ci": (entry.get("ci") or {}).get("auc"),
            "attack_at_chance": at_chance(entry), "attack_separates": separates(entry),
            "attack_n_members": entry.get("n_members"), "attack_n_nonmembers": entry.get("n_nonmembers"),
            "raw_loss": entry.get("attack") == "loss" if entry else None}


#: How one embedder setting reads in words (value -> phrase); a setting not named here reads as
#: "<name with spaces> <value>", so a new embedder's settings still read.
EMBEDDER_SETTING_WORDS = {
    "size": lambda v: f"{v} px",
    "color": str,
    "max_shift": lambda v: "no shifts" if v == 0 else f"shifts up to {v}",
    "hash_size": lambda v: f"{v}x{v} hash",
    "model": lambda v: f"model {v}",
    "dim": lambda v: f"{v}-d",
}


def _setting_words(key: str, value: Any) -> str:
    words = EMBEDDER_SETTING_WORDS.get(key)
    return words(value) if words is not None else f"{key.replace('_', ' ')} {value}"


def describe_embedder(settings: Any) -> str | None:
    """An embedder's recorded settings in words, for people: ``{"name": "pixel", "size": 8, "color":
    "ycc", "max_shift": 2}`` -> ``pixel (8 px, ycc, shifts up to 2)``. Any settings dict reads (a key
    without a phrase of its own as "key value"); a bare name stays itself; None when nothing is recorded."""
    if settings is None or settings == {}:
        return None
    if not isinstance(settings, dict):
        return str(settings)
    rest = [_setting_words(k, v) for k, v in settings.items() if k != "name" and v is not None]
    name = str(settings.get("name") or "embedder")
    return f"{name} ({', '.join(rest)})" if rest else name


def _dedup(rs: ResultSet) -> dict[str, Any] | None:
    st = rs.first("dedup")
    if st is None:
        return None
    groups = records(st.result, "members", preferred=("groups",))
    sizes = [len(g.get("members") or []) for g in groups]
    embedder = st.result.get("embedder", st.settings.get("embedder"))
    return {
        # pairs at least this similar were joined (1 = identical); None where not recorded
        "threshold": _finite(st.result.get("threshold", st.settings.get("threshold"))),
        "n_images": _int(st.result.get("n_images")),
        "n_groups": len(groups),
        "n_in_groups": sum(sizes),
        "largest_group": max(sizes) if sizes else 0,
        "embedder": embedder,
        "embedder_text": describe_embedder(embedder),
    }


def _dataset(rs: ResultSet, one_model: bool = True) -> dict[str, Any] | None:
    """The dataset the results were made on: ``spec``, ``options`` and ``n_train`` (verify's training
    set, else the training images of the run found). ``one_model`` False (a folder whose results were
    made on several models, or pooled over the shadow models beside others): a training run's count is
    one model's, not the folder's, and ``n_train`` stays None unless verify records it."""
    order = ["verify", "train", "mia", "extract", "inpaint", "canaries", "dedup"]
    candidates = [rs.audit_settings]
    candidates += [st.settings for c in order for st in rs.of(c)]
    for s in candidates:
        spec, opts = data_spec(s)
        if spec:
            out: dict[str, Any] = {"spec": spec, "options": opts}
            train = rs.first("train")
            verify = rs.first("verify")
            n = _int(verify.result.get("n_train")) if verify is not None else None
            if train is not None and n is None and one_model:
                n = _int(train.result.get("n_train", train.result.get("n_examples")))
                ids = train.path / "train_ids.json"
                if n is None and ids.exists():
                    try:
                        n = len(parse_json(ids.read_text(encoding="utf-8"), ids).get("keys", []))
                    except (OSError, ValueError, AttributeError):
                        n = None
            out["n_train"] = n
            return out
    return None


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in ENVELOPE and isinstance(v, (str, int, float, bool)) and v is not None}


#: The training options of a run's record (``settings.train``, or flat in older records) that the
#: summary's ``model`` section carries.
TRAIN_FIELDS = ("preset", "steps", "batch_size", "lr", "warmup_steps", "ema_decay", "flip", "class_conditional")
#: The fields of a DP-SGD run's ``dp.json`` (also ``dp`` in its result.json) that ``model.dp`` carries.
DP_FIELDS = ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "accountant", "note")


def _training_data(train: Stage) -> dict[str, Any] | None:
    """{"spec", "options"} of the data the run trained on (options that were set), None when not recorded."""
    spec, opts = data_spec(train.settings)
    if not spec:
        return None
    opts = {k: v for k, v in opts.items() if v not in (None, False) and not (k == "subset_seed" and not opts.get("subset"))}
    return {"spec": spec, "options": opts}


def _dedup_record(train: Stage) -> dict[str, Any] | None:
    """{"keep_list", "n_dropped"} of a run trained with ``--dedup`` (the keep list as recorded, the
    near-duplicates it dropped: ``n_dropped_duplicates`` of its settings, else the keys of its
    ``dropped_duplicates.json``); None for a run trained without it."""
    data = train.settings.get("data") if isinstance(train.settings.get("data"), dict) else {}
    dropped = read_object(train.path / DROPPED_DUPLICATES) or {}
    keep_list = data.get("dedup") or dropped.get("keep_list")
    if not keep_list:
        return None
    n = _int(data.get("n_dropped_duplicates"))
    if n is None and isinstance(dropped.get("keys"), list):
        n = len(dropped["keys"])
    return {"keep_list": keep_list, "n_dropped": n}


def _dp_record(train: Stage) -> dict[str, Any] | None:
    """The DP-SGD settings and guarantee of a run (its result's ``dp``, else its ``dp.json``); None without DP-SGD."""
    dp = train.result.get("dp") if isinstance(train.result.get("dp"), dict) else (read_object(train.path / "dp.json") or {})
    return {k: dp.get(k) for k in DP_FIELDS if k in dp} or None


def _training_record(train: Stage) -> dict[str, Any]:
    """What a training run records about how it trained: :data:`TRAIN_FIELDS`, ``image_size`` (the
    UNet's, else the data option), ``data``, and ``dedup``, ``dp``, ``repeats`` and ``extended_from``
    (None when not used)."""
    s = train.settings
    opts = s["train"] if isinstance(s.get("train"), dict) else s
    out = {k: opts[k] for k in TRAIN_FIELDS if opts.get(k) is not None}
    data = _training_data(train)
    unet = s.get("unet") if isinstance(s.get("unet"), dict) else {}
    size = unet.get("sample_size") or (data or {}).get("options", {}).get("image_size")
    if size:
        out["image_size"] = size
    out.update(data=data, dedup=_dedup_record(train), dp=_dp_record(train), repeats=_repeats_record(train),
               extended_from=_extension_record(train))
    return out


def _repeats_record(train: Stage) -> dict[str, Any] | None:
    """{"n_repeated", "n_stream"} of a run trained with repeated examples (``--repeat``, or a canary run's
    inserted copies): how many examples its ``train_ids.json`` repeats and the training entries in all;
    None for a run without repeats."""
    ids = read_object(train.path / TRAIN_IDS) or {}
    repeats = ids.get("repeats") if isinstance(ids.get("repeats"), dict) else {}
    repeated = [k for k, r in repeats.items() if isinstance(r, int) and r > 1]
    if not repeated:
        return None
    return {"n_repeated": len(repeated), "n_stream": _int(train.result.get("n_stream"))}


def _extension_record(train: Stage) -> dict[str, Any] | None:
    """{"run", "steps"} of the finished run this one trained on from (``train --extend``); None otherwise."""
    ext = train.result.get("extended_from")
    if not isinstance(ext, dict) or not isinstance(ext.get("run"), str):
        return None
    return {"run": ext["run"], "steps": _int(ext.get("steps"))}


def _model(rs: ResultSet, mixed: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The audited model: its path, and what its training run records (steps, parameters, training
    images, final loss, options, data, deduplication, DP-SGD). The path is the first one run the
    results name (:func:`~diffaudit.report.results.model_used`: membership attacks pooled over every
    shadow model name none). In a folder whose results were made on several models (``mixed``, see
    :func:`_mixed_inputs`), ``stages`` lists the results made on this one, which are all it speaks for."""
    train = rs.first("train")
    out: dict[str, Any] = {}
    for s in [rs.audit_settings] + [st.settings for st in rs.stages]:
        used = model_used(s)  # mia's --target and --target-index too
        if used and used.get("run"):
            out["path"] = used["run"]
            break
    if train is not None:
        out.setdefault("path", train.name)
        out.update(_scalars(train.result))
        out.update({k: v for k, v in _training_record(train).items() if k not in out})
    models = (mixed or {}).get("model")
    if out.get("path") and models:
        out["stages"] = next((m["stages"] for m in models if "pooled" not in m and m["input"] is not None
                              and _same_path(m["input"], out["path"])), [])
    return out or None


def _same_path(a: str, b: str) -> bool:
    """Whether two recorded paths name one folder as written (``shadows/model-01`` and ``shadows/./model-01/``)."""
    return os.path.normpath(a) == os.path.normpath(b)


def data_record(settings: dict[str, Any]) -> dict[str, Any] | None:
    """{"spec", "options", "digest"} of the ``--data`` a command's recorded settings name, in every form
    commands write (:func:`~diffaudit.report.images.data_spec`, :func:`~diffaudit.report.images.data_digest`:
    the digest of the loaded data, None where not recorded); None when they name no ``--data``."""
    spec, opts = data_spec(settings)
    if not isinstance(spec, str) or not spec:
        return None
    digest = data_digest(settings)
    return {"spec": spec, "options": opts, "digest": digest if isinstance(digest, str) and digest else None}


def same_data(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`data_record` are one dataset: by their digests where both recorded one (the same
    pixels read with other options, ``digits`` with and without ``--image-size 8``, are the same data), else
    by the spec and loader options. The report's mixed-inputs note and ``diffaudit compare`` both ask it."""
    if a["digest"] and b["digest"]:
        return a["digest"] == b["digest"]
    return (a["spec"], a["options"]) == (b["spec"], b["options"])


def _data_groups(stages: list[Stage]) -> list[dict[str, Any]]:
    """The datasets ``stages`` read, each {"input", "options" (when any), "digest" (when recorded),
    "stages"}, in the order first read; a stage joins the first dataset it is the same as (:func:`same_data`)."""
    groups: list[tuple[dict[str, Any], list[str]]] = []
    for st in stages:
        rec = data_record(st.settings)
        if rec is None:
            continue
        found = next((g for g in groups if same_data(g[0], rec)), None)
        if found is None:
            groups.append((dict(rec), [st.name]))
        else:
            found[1].append(st.name)
            found[0]["digest"] = found[0]["digest"] or rec["digest"]
    return [{"input": rec["spec"], **({"options": rec["options"]} if rec["options"] else {}),
             **({"digest": rec["digest"]} if rec["digest"] else {}), "stages": names} for rec, names in groups]


def _store_model(st: Stage) -> dict[str, Any] | None:
    """{"run": path} of the model that made the generations an extract or verify result read (``samples``: a
    sample store records its ``model``), None where they are not a store of a known model. Generations of
    another model than the folder's other results are another model's results."""
    if st.command not in ("extract", "verify"):
        return None
    store = resolve_path(st.settings.get("samples"), st.path, st.path.parent)
    settings = recorded_settings(store, "sample") if store is not None else None
    model = settings.get("model") if isinstance(settings, dict) else None
    return {"run": model} if isinstance(model, str) and model else None


def _model_groups(stages: list[Stage]) -> list[dict[str, Any]]:
    """The models ``stages`` were made on (:func:`~diffaudit.report.results.model_used`), each {"input",
    "stages"} for one run, or {"input": the shadows folder, "pooled": M, "stages"} for membership attacks
    pooled over its M shadow models, in the order first named."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for st in stages:
        used = model_used(st.settings) or _store_model(st)
        if not used:
            continue
        if used.get("run"):
            key: tuple[Any, ...] = ("run", os.path.normpath(used["run"]))
            entry = {"input": used["run"]}
        else:
            shadows = used.get("shadows")
            key = ("pooled", shadows and os.path.normpath(shadows), used.get("pooled"))
            entry = {"input": shadows, "pooled": used.get("pooled")}
        groups.setdefault(key, {**entry, "stages": []})["stages"].append(st.name)
    return list(groups.values())


def _mixed_inputs(rs: ResultSet) -> dict[str, list[dict[str, Any]]] | None:
    """For a folder of separate commands' results (not one audit's, whose stages read views of its one
    dataset): the datasets (:func:`_data_groups`) and the models (:func:`_model_groups`: one run, or
    the shadow models a membership attack pooled) its results were made on, each with the stages that
    used it, when there is more than one of either; None when they agree. The headline names one of each."""
    if rs.audit:
        return None
    results = [st for st in rs.stages if not st.model_record]  # a run read for its record is no result
    found = {"data": _data_groups(results), "model": _model_groups(results)}
    out = {kind: groups for kind, groups in found.items() if len(groups) > 1}
    return out or None


def _shadows(rs: ResultSet) -> dict[str, Any] | None:
    """A ``diffaudit shadows`` folder's models: ``n_models``, ``n_examples`` (of --data, each IN for some
    models and OUT for the others by the membership matrix), ``n_columns`` (the matrix's), ``models``
    [{``run``, ``n_train``, ``final_loss``, ``epsilon``, ``noise_multiplier``}] as its result.json lists them
    (None where not recorded; the last two only for DP-SGD shadows), and under DP-SGD ``dp_noise`` (the
    noise multiplier all trained with, ``shadows --dp-noise``) or ``dp_target_epsilon`` (``--dp-epsilon``:
    each solved its own noise multiplier for it), absent for plain shadows; None without one, and for an audit without
    --shadows, whose models folder holds only the target it trained (column 0 of its target split)."""
    st = rs.first("shadows")
    if st is None or (rs.audit and not rs.audit_settings.get("shadows")):  # an audit's target, trained by `shadows`
        return None
    models = [m for m in st.result.get("models") or [] if isinstance(m, dict)]
    out = {
        "folder": st.name,
        "n_models": _int(st.result.get("n_models")) if _int(st.result.get("n_models")) is not None else len(models),
        "n_examples": _int(st.result.get("n_examples")),
        "n_columns": _int(st.result.get("n_columns")),
        "models": [{"run": str(m.get("run", f"model-{i:02d}")), "n_train": _int(m.get("n_train")),
                    "final_loss": _finite(m.get("final_loss")), "epsilon": _finite(m.get("epsilon")),
                    "noise_multiplier": _finite(m.get("noise_multiplier"))} for i, m in enumerate(models)],
    }
    dp = st.settings.get("dp")
    if isinstance(dp, dict):
        out["dp_noise"] = _finite(dp.get("noise_multiplier"))
        out["dp_target_epsilon"] = _finite(dp.get("target_epsilon"))
    return out


def _audit_stages(rs: ResultSet) -> list[str] | None:
    """The stages the audit's result.json lists as run (train, sample, extract, ...); None when it lists none."""
    stages = rs.audit.get("stages")
    return [str(x) for x in stages] if isinstance(stages, list) else None


#: Skipped inputs the summary lists by name (all are counted).
SKIPPED_LISTED = 50


def _skipped_inputs(rs: ResultSet) -> dict[str, Any] | None:
    """The inputs ``--skip-bad`` skipped in the data of any result here, each once: {``n``, ``listed``
    ({source, name, reason}, at most :data:`SKIPPED_LISTED`)}; None when none was skipped."""
    seen: dict[tuple[Any, Any], dict[str, Any]] = {}
    total = 0
    for result in [rs.audit] + [st.result for st in rs.stages]:
        entries = [e for e in result.get("skipped_inputs") or [] if isinstance(e, dict)]
        for e in entries:
            seen.setdefault(_skipped_identity(e), {k: e.get(k) for k in ("source", "name", "reason")})
        total = max(total, _int(result.get("skipped_inputs_total")) or len(entries))
    if not seen:
        return None
    return {"n": max(total, len(seen)), "listed": list(seen.values())[:SKIPPED_LISTED]}


def _skipped_identity(entry: dict[str, Any]) -> tuple[Any, Any]:
    """Which input a skipped entry names, however its stage spelled the data's path: one stage loads
    ``corrupt`` and names ``corrupt/empty.png``, another loads the recorded ``/home/u/corrupt`` and names
    ``/home/u/corrupt/empty.png``: (the source's last component, the name within the source)."""
    source, name = entry.get("source"), entry.get("name")
    if not isinstance(source, str) or not isinstance(name, str):
        return source, name
    root, path = os.path.normpath(source), os.path.normpath(name)
    return os.path.basename(root), path[len(root) + 1:] if path.startswith(root + os.sep) else name


def summarise(rs: ResultSet) -> dict[str, Any]:
    """The summary dictionary of a loaded :class:`ResultSet` (see the module docstring)."""
    mia: dict[str, Any] = {}
    mia_keys: dict[str, str] = {}  # stage folder -> its key in ``mia``
    labels = mia_labels(rs.of("mia"))
    for st in rs.of("mia"):
        mia_keys[st.name] = mia_key(st, set(mia))
        mia[mia_keys[st.name]] = {**_mia_entry(st), "label": labels[st.name]}
    mixed = _mixed_inputs(rs)
    settings: dict[str, Any] = {}
    seeds: dict[str, Any] = {}
    if rs.audit:
        if rs.audit_settings:
            settings["audit"] = rs.audit_settings
        if isinstance(rs.audit.get("seeds"), dict):
            seeds["audit"] = rs.audit["seeds"]
    for st in rs.stages:
        settings[st.name] = st.settings
        seeds[st.name] = st.seeds
    versions: dict[str, Any] = {}
    for src in [rs.audit] + [st.result for st in rs.stages]:
        if isinstance(src.get("versions"), dict) and src["versions"]:
            versions = dict(src["versions"])
            break
    return {
        "schema_version": SCHEMA_VERSION,
        "command": rs.command,
        "dataset": _dataset(rs, one_model=not (mixed or {}).get("model")),
        "model": _model(rs, mixed),
        "extraction": _extraction(rs),
        "mia": mia or None,
        "inpainting": _inpainting(rs),
        "canaries": _canaries(rs),
        "dedup": _dedup(rs),
        "outliers": _outliers(rs, mia, mia_keys),
        "shadows": _shadows(rs),
        # a training run read for the model's record is marked: it is not a result folder of its own
        "stages": [{"name": st.name, "command": st.command, **({"model_record": True} if st.model_record else {})}
                   for st in rs.stages],
        "audit_stages": _audit_stages(rs),
        # False: an audit that has not finished (the stages above are those it finished); else None/True
        "audit_finished": (not rs.unfinished) if rs.command == "audit" else None,
        "audit_stopped": rs.stopped,  # the stage that stopped an unfinished audit, and how
        "skipped_inputs": _skipped_inputs(rs),
        "mixed_inputs": mixed,
        "settings": settings,
        "seeds": seeds,
        "versions": versions,
    }


def without_names(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` as summary.json holds it: the skipped inputs counted, not named (their names, and the
    reasons that quote them, are file names of the data, which summary.json never holds; the stages'
    result.json files and the report list them)."""
    skipped = summary.get("skipped_inputs")
    if not skipped:
        return summary
    return {**summary, "skipped_inputs": {"n": skipped["n"]}}


def build_summary(result_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``summary.json`` dictionary of an audit folder or of one command's result folder: :func:`summarise`
    and the report's two answers under ``verdicts`` (:mod:`~diffaudit.report.verdicts`), for a script to read.

    Raises :class:`~diffaudit.core.errors.DiffauditError` when ``result_dir`` holds no result.
    """
    from diffaudit.report.verdicts import verdicts  # the views it reads import this module

    rs = load_results(result_dir)
    summary = summarise(rs)
    return {**summary, "verdicts": verdicts(rs, summary)}


def write_summary(result_dir: str | os.PathLike, out_file: str | os.PathLike | None = None, *,
                  redact: bool = False) -> Path:
    """Write :func:`build_summary` atomically (owner-only) to ``out_file`` (default ``result_dir/summary.json``).

    ``redact`` (the summary written beside a redacted report, which is made to be shared): every path
    and URL replaced as the report replaces it (:mod:`~diffaudit.report.path_redaction`: ``AUDIT/...``
    inside ``result_dir``, ``(path N)`` elsewhere, the same labels as the report's). The file says
    which in ``paths_redacted``.
    """
    out = Path(out_file) if out_file is not None else Path(result_dir) / "summary.json"
    from diffaudit.report.html import ensure_private_parent
    from diffaudit.report.path_redaction import hide_paths, path_labels

    summary = build_summary(result_dir)
    labels = path_labels(summary, result_dir) if redact else {}  # from the whole summary, as the report's are
    ensure_private_parent(out)
    write_json_atomic(out, {**hide_paths(without_names(summary), labels), "paths_redacted": bool(redact)})
    os.chmod(out, 0o600)
    return out
