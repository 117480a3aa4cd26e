"""Alt texts of the report's plots: what each plot shows, in numbers, for a reader who cannot see it.

Each function takes the values its plot in :mod:`diffaudit.report.plots` draws (the same arrays, passed
by the view that draws it) and returns plain text; numbers go through :mod:`diffaudit.report.fmt`. The
template puts the text in an ``alt`` attribute, where Jinja2's autoescaping escapes it (attack names
and labels come from result files).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffaudit.report.fmt import counted, fmt_float, fmt_int, fmt_pct
from diffaudit.report.summary import at_ceiling  # summary imports neither this module nor plots: no cycle

#: The FPRs the ROC plot marks (dotted lines) and its alt text reads the TPR at.
ROC_FPRS = (0.01, 0.001)


def curve_tpr(fpr: np.ndarray, tpr: np.ndarray, target: float, n_nonmembers: int | None = None) -> float | None:
    """Best TPR among a curve's points with FPR at most ``target``, by the rules of
    :func:`~diffaudit.evaluation.roc.tpr_at_fpr_from_curve` (None when ``target`` is below
    1/``n_nonmembers``: not measurable) or, with ``n_nonmembers`` unknown, of
    :func:`~diffaudit.evaluation.roc.best_tpr_within`; None when no point lies within ``target``."""
    from diffaudit.evaluation.roc import RocCurve, best_tpr_within, tpr_at_fpr_from_curve

    curve = RocCurve(fpr=np.asarray(fpr, dtype=float), tpr=np.asarray(tpr, dtype=float), thresholds=np.empty(0),
                     n_members=0, n_nonmembers=n_nonmembers or 0)
    try:
        return tpr_at_fpr_from_curve(curve, target) if n_nonmembers else best_tpr_within(curve, target)
    except ValueError:  # no point of the drawn curve lies within target (the max of none)
        return None


def roc_alt(curves: Sequence[tuple[str, float | None, np.ndarray, np.ndarray, int | None]]) -> str:
    """``curves`` = [(attack, AUC of its legend, fpr, tpr, n_nonmembers), ...]: each attack's AUC and
    its TPR at 1% and 0.1% FPR read from the drawn points."""
    parts = []
    for name, auc, fpr, tpr, n_non in curves:
        rates = ", ".join(f"{fmt_pct(curve_tpr(fpr, tpr, x, n_non))} at {fmt_pct(x)} FPR" for x in ROC_FPRS)
        parts.append(f"{name}: AUC {fmt_float(auc)}, TPR {rates}")
    what = "Log-log ROC curve of the membership attack" if len(curves) == 1 else \
        f"Log-log ROC curves of {counted(len(curves), 'membership attack')}"
    return (f"{what} (true against false positive rate; "
            f"the dashed diagonal is chance): " + "; ".join(parts) + ".")


def _timesteps(tied: list[int], ts: list[int]) -> str:
    """Positions ``tied`` (ascending) of the sweep's timesteps ``ts`` in words: "t = 50", "t = 50 and 100",
    "t = 10, 50 and 300", or, for three or more that follow each other in the sweep, "t = 10 to 200"."""
    named = [ts[i] for i in tied]
    if len(named) == 1:
        return f"t = {named[0]}"
    if len(named) > 2 and tied == list(range(tied[0], tied[0] + len(tied))):
        return f"t = {named[0]} to {named[-1]}"
    return "t = " + ", ".join(map(str, named[:-1])) + f" and {named[-1]}"


def _extreme(ts: list[int], values: list[float | None], scale: str) -> str | None:
    """"from LOW to HIGH, highest at t = T" over the known (finite) values of a sweep column; None without one.

    Where several t reach the highest value, all are named ("highest at t = 50 and 100 (tied)"), the
    first of them being the one the mia result picks as its ``best_timestep`` from the AUC column
    (:attr:`~diffaudit.evaluation.timestep_sweep.TimestepSweep.best_timestep`: the first of the largest)."""
    known = [(float(v), i) for i, v in enumerate(values[:len(ts)])
             if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
    if not known:
        return None
    fmt = fmt_pct if scale == "pct" else fmt_float
    lo, hi = min(v for v, _ in known), max(v for v, _ in known)
    tied = [i for v, i in known if v == hi]
    return f"from {fmt(lo)} to {fmt(hi)}, highest at {_timesteps(tied, ts)}" + (" (tied)" if len(tied) > 1 else "")


def sweep_alt(sweeps: Sequence[tuple[str, Sequence[int], Sequence[float | None], Sequence[float | None]]]) -> str:
    """``sweeps`` = [(attack, timesteps, auc, tpr at 1% FPR), ...] as the timestep-sweep plot draws them."""
    parts = []
    for name, ts, aucs, tprs in sweeps:
        ts = [int(t) for t in ts]
        span = f"t = {min(ts)} to {max(ts)}, {counted(len(ts), 'timestep')}" if ts else "no timestep"
        found = [f"AUC {a}" for a in [_extreme(ts, list(aucs), "float")] if a]
        found += [f"TPR at 1% FPR {x}" for x in [_extreme(ts, list(tprs), "pct")] if x]
        parts.append(f"{name} ({span}): " + ("; ".join(found) if found else "no value recorded"))
    empty = [f"The {panel} panel is empty: {why}." for panel, col, why in (
        ("AUC", 2, "not measured"), ("TPR at 1% FPR", 3, "not measured, it needs 100 or more non-members"))
        if not any(v is not None for s in sweeps for v in s[col])]
    return " ".join(["Attack success over the diffusion timestep t (shaded: t in [50, 300], the paper's best; dashed: "
                     "chance, AUC 0.5 and TPR 1%): " + "; ".join(parts) + ".", *empty])


def _group(values: Sequence[float], word: str) -> str:
    """"2 members, mean 0.075 (0.060 to 0.090)"."""
    if not len(values):
        return counted(0, word)
    v = np.asarray(values, dtype=float)
    spread = "" if len(v) == 1 else f" ({fmt_float(v.min())} to {fmt_float(v.max())})"
    return f"{counted(len(v), word)}, mean {fmt_float(v.mean())}{spread}"


def histogram_alt(members: Sequence[float], nonmembers: Sequence[float], *, xlabel: str) -> str:
    """The members-vs-non-members histogram of ``xlabel`` (one value per target)."""
    return f"Histogram of the {xlabel} per target: {_group(members, 'member')}; {_group(nonmembers, 'non-member')}."


def canary_alt(repeats: Sequence[int], exposure: Sequence[float | None], extracted: Sequence[bool],
               ceiling: float | None = None) -> str:
    """Per repeat count, as the canary plot draws it: canaries, mean exposure (finite values), how many
    extracted; and how many sit at the ``ceiling`` (the dotted line), whose exposure is at least that."""
    r = np.asarray(repeats, dtype=float)
    e = np.array([np.nan if v is None else float(v) for v in exposure], dtype=float)
    x = np.asarray(extracted, dtype=bool)
    parts = []
    for level in np.unique(r):
        m = r == level
        known = m & np.isfinite(e)
        mean = f"mean exposure {fmt_float(e[known].mean())} bits" if known.any() else "no exposure"
        parts.append(f"{counted(int(level), 'repeat')}: {counted(int(m.sum()), 'canary', 'canaries')}, {mean}, "
                     f"{fmt_int(int(x[m].sum()))} of {fmt_int(int(m.sum()))} extracted")
    text = ("Canary exposure (bits) against the repeats in training, and the fraction extracted: " + "; ".join(parts))
    if ceiling is not None:
        top = sum(1 for v in e if np.isfinite(v) and at_ceiling(float(v), ceiling))
        text += (f"; dotted line: the ceiling of {fmt_float(ceiling)} bits, reached by {counted(top, 'canary', 'canaries')} "
                 "(their exposure is at least that)")
    return text + "."


def loss_alt(steps: Sequence[float], losses: Sequence[float]) -> str:
    """The training-loss curve: points, step range, first, last and lowest loss."""
    s, v = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    if not len(v):
        return "Training loss: no point logged."
    return (f"Training loss over {counted(len(v), 'logged point')}, step {fmt_int(s.min())} to {fmt_int(s.max())}: "
            f"{fmt_float(v[0])} at the first, {fmt_float(v[-1])} at the last, lowest {fmt_float(v.min())}.")
