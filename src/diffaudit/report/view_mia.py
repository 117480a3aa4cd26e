"""Report view of membership inference: per-attack metrics, log-log ROC curves, the timestep sweep.

ROC points come from the result itself (``roc`` {fpr, tpr} or top-level ``fpr``/``tpr``) or are
recomputed from the per-example scores file next to it (``scores.npz``/``.json``/``.csv`` with a
score and a member label per example; larger score = member).
"""

from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import open_npz
from diffaudit.core.npz_arrays import read_npz_array
from diffaudit.report import plots
from diffaudit.report.alt_text import roc_alt, sweep_alt
from diffaudit.report.fmt import fmt, fmt_ci, fmt_p
from diffaudit.report.images import data_uri
from diffaudit.report.rank_test import ANECDOTE_LEVEL, above_every_nonmember_by_chance, auc_spread_under_guessing
from diffaudit.report.results import ResultSet, Stage, parse_json
from diffaudit.report.summary import at_chance, mia_key

SCORE_NAMES = ("scores", "score")
LABEL_NAMES = ("member", "members", "is_member", "labels", "label")
SCORE_FILES = ("scores.npz", "scores.json", "scores.csv", "per_example.npz", "per_example.json", "per_example.csv")


def _pick(d: dict[str, Any], names: tuple[str, ...]):
    for n in names:
        if n in d:
            return d[n]
    return None


def _load_scores(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        if path.suffix == ".npz":
            with open_npz(path) as z:  # each array's declared size checked before it is allocated
                d = {k: read_npz_array(z, path, k) for k in z.files}
        elif path.suffix == ".json":
            d = parse_json(path.read_text(encoding="utf-8"), path)  # nested too deeply: ValueError, left out
            if isinstance(d, list):
                d = {k: [row.get(k) for row in d] for k in (SCORE_NAMES + LABEL_NAMES) if d and isinstance(d[0], dict) and k in d[0]}
        elif path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            d = {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}
        else:
            return None
        s, y = _pick(d, SCORE_NAMES), _pick(d, LABEL_NAMES)
        if s is None or y is None:
            return None
        s = np.asarray(s, dtype=float)
        y = np.asarray([str(v).lower() in ("1", "true", "1.0") if isinstance(v, str) else bool(v) for v in y], dtype=bool)
        if s.ndim != 1 or s.shape != y.shape:
            return None
        return s, y
    except (DiffauditError, OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


def roc_points(stage: Stage) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of one mia stage, or None when neither the curve nor the scores are recorded."""
    r = stage.result
    roc = r.get("roc") if isinstance(r.get("roc"), dict) else r
    if isinstance(roc.get("fpr"), list) and isinstance(roc.get("tpr"), list) and len(roc["fpr"]) == len(roc["tpr"]) > 1:
        return np.asarray(roc["fpr"], dtype=float), np.asarray(roc["tpr"], dtype=float)
    names = [r.get(k) for k in ("scores_file", "scores_path", "scores") if isinstance(r.get(k), str)]
    candidates = [stage.path / n for n in names] + [stage.path / n for n in SCORE_FILES]
    for path in candidates:
        if path.is_file():
            loaded = _load_scores(path)
            if loaded is None:
                continue
            try:
                from diffaudit.evaluation import roc_curve

                curve = roc_curve(*loaded)
            except Exception:  # noqa: BLE001 - a bad scores file leaves the curve out, not the report
                continue
            return curve.fpr, curve.tpr
    return None


def _sweep_columns(sweep: Any) -> tuple[list[int], list[Any], list[Any]] | None:
    """(timesteps, auc, tpr at 1%) from the column form, a list of rows, or a {t: row} mapping."""
    if isinstance(sweep, dict) and isinstance(sweep.get("timesteps"), list):
        tpr = sweep.get("tpr_at_fpr", {}).get("0.01") if isinstance(sweep.get("tpr_at_fpr"), dict) else None
        ts = sweep["timesteps"]
        return ts, list(sweep.get("auc") or [None] * len(ts)), list(tpr or [None] * len(ts))
    rows = None
    if isinstance(sweep, list):
        rows = [r for r in sweep if isinstance(r, dict)]
    elif isinstance(sweep, dict):
        rows = [dict(v, t=k) for k, v in sweep.items() if isinstance(v, dict)]
    if not rows:
        return None
    out = []
    for row in rows:
        t = row.get("t", row.get("timestep", (row.get("timesteps") or [None])[0] if isinstance(row.get("timesteps"), list) else None))
        try:
            t = int(t)
        except (TypeError, ValueError):
            continue
        tpr = row.get("tpr_at_fpr", {}).get("0.01") if isinstance(row.get("tpr_at_fpr"), dict) else None
        out.append((t, row.get("auc"), tpr))
    out.sort()
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def below_chance(timesteps: list[Any], aucs: list[Any], n_members: Any, n_nonmembers: Any) -> list[tuple[int, float]]:
    """The sweep's (t, AUC) whose AUC lies below 0.5 by more than twice
    :func:`auc_spread_under_guessing`: there members score as *less* member-like than non-members (a
    loss attack: members' losses are higher), beyond what guessing gives. Empty when the counts are unknown."""
    if not (isinstance(n_members, int) and isinstance(n_nonmembers, int) and n_members > 0 and n_nonmembers > 0):
        return []
    floor = 0.5 - 2 * auc_spread_under_guessing(n_members, n_nonmembers)
    return [(t, a) for t, a in zip(timesteps, aucs) if isinstance(a, (int, float)) and math.isfinite(a) and a < floor]


def mia_view(rs: ResultSet, summary: dict[str, Any]) -> dict[str, Any] | None:
    stages = rs.of("mia")
    if not stages:
        return None
    taken: set[str] = set()
    rows, curves, drawn, sweeps, missing = [], [], [], [], []
    sweep_notes: dict[str, dict[str, Any]] = {}  # sweep key -> {"below_chance": [(t, AUC)], "loss": the loss attack's}
    for st in stages:
        key = mia_key(st, taken)
        taken.add(key)
        entry = (summary.get("mia") or {}).get(key, {})
        label = str(entry.get("label") or key)  # the attack's name; its folder's too where two ran it
        rows.append({"key": key, "label": label, **entry})
        pts = roc_points(st)
        if pts is not None:
            auc = entry.get("auc")
            curves.append((f"{label} (AUC {auc:.3f})" if isinstance(auc, float) else label, pts[0], pts[1]))
            drawn.append((label, auc, pts[0], pts[1], entry.get("n_nonmembers")))  # the same points, for the alt text
        else:
            missing.append(label)
        cols = _sweep_columns(st.result.get("sweep"))
        if cols and cols[0]:
            sweeps.append((label, *cols))
            low = below_chance(cols[0], cols[1], entry.get("n_members"), entry.get("n_nonmembers"))
            sweep_notes[label] = {"below_chance": low, "loss": entry.get("attack") == "loss"}
    n_non = [r.get("n_nonmembers") for r in rows if r.get("n_nonmembers")]
    min_fpr = max(1.0 / max(n_non), 1e-5) if n_non else None
    roc = sweep = None
    notes = []
    if curves:
        roc, note = plots.try_plot("ROC plot", lambda: plots.roc_loglog(curves, min_fpr=min_fpr))
        notes += [note] if note else []
    if sweeps:
        sweep, note = plots.try_plot("timestep sweep plot", lambda: plots.timestep_sweep(sweeps))
        notes += [note] if note else []
    return {
        "rows": rows,
        "has_loss": any(r.get("mean_loss") for r in rows),
        "roc_uri": data_uri(roc) if roc else None,
        "roc_alt": roc_alt(drawn) if roc else None,
        "no_curve": missing,
        "sweep_uri": data_uri(sweep) if sweep else None,
        "sweep_alt": sweep_alt(sweeps) if sweep else None,
        "plot_notes": notes,
        "sweeps": [{"key": s[0], "rows": list(zip(s[1], s[2], s[3])), **sweep_notes[s[0]]} for s in sweeps],
    }


def best_mia(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The attack with the highest TPR at 1% FPR (then AUC), for the headline: its numbers, its ``label``,
    and whom it attacked (``pooled`` over ``n_models`` shadow models, or the run ``model``, given where the
    folder's results were made on several models)."""
    best = None
    for key, e in (summary.get("mia") or {}).items():
        tpr = (e.get("tpr_at_fpr") or {}).get("0.01")
        rank = (tpr if tpr is not None else -1.0, e.get("auc") or 0.0)
        if best is None or rank > best[0]:
            best = (rank, key, e)
    if best is None:
        return None
    _, key, e = best
    n_non = e.get("n_nonmembers")
    return {
        "key": key,
        "label": str(e.get("label") or key),
        # who was attacked: every shadow model in turn (pooled), or the one run, named where the folder's
        # results were made on several models (mixed_inputs), so that the answer says which
        "pooled": bool(e.get("pooled")),
        "n_models": e.get("n_models"),
        "model": e.get("model") if (summary.get("mixed_inputs") or {}).get("model") else None,
        "tpr": (e.get("tpr_at_fpr") or {}).get("0.01"),
        "tpr_ci": ((e.get("ci") or {}).get("tpr_at_fpr") or {}).get("0.01"),
        # an attack whose AUC interval holds 0.5 guesses: its TPR at 1% FPR is noise, not a finding
        "at_chance": bool(at_chance(e)),
        # TPR at 1% FPR needs at least 100 non-members (FPR resolves in steps of 1/n); below, it is not measured
        "fpr_step": (1.0 / n_non) if isinstance(n_non, int) and n_non > 0 else None,
        "auc": e.get("auc"),
        "auc_ci": (e.get("ci") or {}).get("auc"),
        "n_members": e.get("n_members"),
        "n_nonmembers": e.get("n_nonmembers"),
        # members above every non-member: TPR at FPR 0, measurable where 1% FPR is not
        "tpr0": e.get("tpr_at_zero_fpr"),
        "n_above": (round(e["tpr_at_zero_fpr"] * e["n_members"]) if isinstance(e.get("tpr_at_zero_fpr"), float)
                    and isinstance(e.get("n_members"), int) else None),
        "n_above_chance": _above_by_chance(e),
        "tpr_exact": _exact_rate_interval((e.get("tpr_at_fpr") or {}).get("0.01"),
                                          ((e.get("ci") or {}).get("tpr_at_fpr") or {}).get("0.01"), e.get("n_members")),
        "n_excluded": e.get("n_excluded"),
        "n_identical_excluded": e.get("n_identical_excluded"),
        "unlike_shadows": e.get("unlike_shadows"),  # how the attacked model trained otherwise than its shadows
        # few members or non-members: the rank test says how sure the AUC is, of the smaller class
        "rank_test": e.get("rank_test"),
        **smaller_class(e.get("n_members"), n_non),
    }


def pooled_target(summary: dict[str, Any]) -> dict[str, Any] | None:
    """{"n_models", "shadows"} of the first membership attack pooled over every shadow model (leave-one-out:
    each the target in turn), for the header to say so where no one model is named; None without one."""
    e = next((e for e in (summary.get("mia") or {}).values() if e.get("pooled")), None)
    return None if e is None else {"n_models": e.get("n_models"), "shadows": e.get("shadows")}


def _exact_rate_interval(rate: Any, ci: Any, n: Any) -> dict[str, Any] | None:
    """{"k", "n", "low", "high"}: the exact (Clopper–Pearson) 95% interval of k = rate · n members flagged,
    where the bootstrap interval of a TPR of 0 or 1 is [x, x] (every resample agreed, which bounds nothing:
    16 of 16 members give [0.794, 1]). It holds the threshold fixed, so the threshold's own uncertainty
    comes on top. None elsewhere."""
    if not (isinstance(rate, (int, float)) and rate in (0, 1) and isinstance(n, int) and n > 0 and isinstance(ci, dict)
            and ci.get("low") == ci.get("high") == rate):
        return None
    from scipy.stats import binomtest

    k = int(round(rate * n))
    interval = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": k, "n": n, "low": float(interval.low), "high": float(interval.high)}


def _above_by_chance(e: dict[str, Any]) -> dict[str, Any] | None:
    """{"expected", "pvalue", "beyond"} of the members above every non-member (``tpr_at_zero_fpr``) under
    a random score (:func:`~diffaudit.report.rank_test.above_every_nonmember_by_chance`); ``beyond``:
    whether chance reaches the count with p below :data:`~diffaudit.report.rank_test.ANECDOTE_LEVEL` (0.05)
    only. None where not recorded."""
    n, m, tpr0 = e.get("n_members"), e.get("n_nonmembers"), e.get("tpr_at_zero_fpr")
    if not (isinstance(n, int) and isinstance(m, int) and isinstance(tpr0, (int, float)) and n > 0):
        return None
    chance = above_every_nonmember_by_chance(n, m, min(n, round(tpr0 * n)))
    return {**chance, "beyond": chance["pvalue"] < ANECDOTE_LEVEL}


def smaller_class(n_members: Any, n_nonmembers: Any) -> dict[str, Any]:
    """``few_count`` and ``few_class`` ("1 member", "3 non-members"): the smaller of the two classes."""
    if not isinstance(n_members, int) or not isinstance(n_nonmembers, int):
        return {"few_count": None, "few_class": None}
    count, word = (n_members, "member") if n_members <= n_nonmembers else (n_nonmembers, "non-member")
    return {"few_count": count, "few_class": word if count == 1 else word + "s"}


def membership_verdict(best: dict[str, Any] | None) -> dict[str, str] | None:
    """The answer to "does the model reveal which images it trained on?" from the headline attack
    (:func:`best_mia`): level yes/no/unsure and a sentence in plain words; None without an attack.

    "yes" when the attack is not at chance (:func:`~diffaudit.report.summary.at_chance`: its AUC
    interval, or with few examples its rank test, excludes guessing) and its AUC is above 0.5; "no"
    when it is at chance (no evidence, which a small audit bounds only loosely); "unsure" for an AUC
    significantly below 0.5 (scores that rank never-seen images as members: a sign of a mismatched
    target or data, not of privacy) or none recorded. It names the attack by its label, and says whom it
    attacked (:func:`_attacked_words`): every shadow model in turn where its rows are pooled, the run
    where the folder's results were made on several models."""
    if best is None:
        return None
    auc = best.get("auc")
    if not isinstance(auc, (int, float)):
        return {"level": "unknown", "text": "Not measured: the membership attack recorded no AUC."}
    interval = fmt_ci(best.get("auc_ci"))
    measured = f"AUC {fmt(auc)}{', ' + interval if interval else ''}; 0.5 is a coin toss, 1 tells every one apart"
    counts = [n for n in (best.get("n_members"), best.get("n_nonmembers")) if isinstance(n, int)]
    few = bool(counts) and min(counts) < 100  # fewer than the 100 non-members that 1% FPR needs
    w = _attacked_words(best)
    if best.get("at_chance"):
        return {"level": "no", "text": f"No clear evidence: {w['attack']} does not tell {w['images']} from images "
                                       f"{w['never']} measurably better than guessing ({measured})."
                                       + (" With so few images this bounds the leak only loosely." if few else "")}
    if auc <= 0.5:
        return {"level": "unsure", "text": f"Unsure: {w['attack']} ranks images {w['never']} as more likely training "
                                           f"images ({measured}): chance beyond what the interval covers (it resamples "
                                           "the images, not the noise draws or the models: another --seed tells), or a "
                                           f"sign that {w['pair']} do not belong together (other training images); not a "
                                           "sign of privacy."}
    found = ""
    if best.get("tpr") == 0:
        found = (f" At a 1% false-positive rate it picks out none of {w['images']}: the leak shows in how the "
                 "scores rank on average (the AUC), not yet as images singled out with few false alarms.")
    elif best.get("tpr") is not None:
        found = f" At a 1% false-positive rate it picks out {fmt(best['tpr'], 'pct')} of {w['images']}."
    elif best.get("n_above") is not None and best.get("n_members") and best.get("n_above_chance"):
        chance = best["n_above_chance"]
        odds = (f"a random score puts {chance['expected']:.2g} there on average, and {best['n_above']:,} or more with "
                f"p = {fmt_p(chance['pvalue'])}")
        found = (f" {best['n_above']:,} of {w['the']} {best['n_members']:,} training images ({fmt(best['tpr0'], 'pct')}) "
                 f"score " + (f"above every image {w['it_never']}: picked out without a single false alarm ({odds})."
                              if chance["beyond"] else
                              f"above every image {w['it_never']}, not significantly more than chance gives ({odds}): "
                              "read the AUC."))
    return {"level": "yes", "text": f"Yes: {w['attack']} tells {w['images']} from images {w['never']} ({measured})."
                                    f"{found} Whoever holds {w['weights']} can test whether a given image was in its "
                                    "training set (the attack reads the model's denoising loss on it), even where no "
                                    "image is extracted."}


def _attacked_words(best: dict[str, Any]) -> dict[str, str]:
    """The phrases :func:`membership_verdict` says who was attacked with: the attack (its name, the model
    it attacked where the folder's results were made on several), whose training images, which model
    never saw the others, whose weights. An attack pooled over the shadow models (leave-one-out: each
    the target in turn) speaks of them all, never of one model: its members are each model's own."""
    name = f"the membership attack ({best.get('label') or best.get('key')})"
    if best.get("pooled"):
        n = best.get("n_models")
        models = f"the {n:,} shadow models" if isinstance(n, int) else "the shadow models"
        return {"attack": f"{name}, pooled over {models} (each the target in turn),", "images": "their training images",
                "never": "they never saw", "it_never": "they never saw", "the": "their", "pair": "the models and the data",
                "weights": "one of these models' weights"}
    attack = f"{name} on the model {best['model']}" if best.get("model") else name
    return {"attack": attack, "images": "the training images", "never": "the model never saw", "it_never": "it never saw",
            "the": "the", "pair": "the model and the data", "weights": "the model's weights"}
