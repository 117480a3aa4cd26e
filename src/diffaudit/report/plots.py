"""Matplotlib figures for the report, returned as PNG bytes (Agg, no pyplot global state).

Every function takes plain arrays and returns ``bytes``; none reads files. Axis conventions follow
the paper: ROC curves log-log (Carlini et al. 2023, Fig. 8), the timestep sweep over t (Fig. 9),
inpainting distances for members vs non-members (Fig. 12), memorization vs duplicates (Fig. 5).
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np

from diffaudit.report.alt_text import ROC_FPRS

PALETTE = ["#1f5fa8", "#d1495b", "#2a9d8f", "#e9a23b", "#6a4c93", "#3d405b", "#8ab17d", "#b5838d"]


def _figure(width: float = 5.2, height: float = 3.6, *, wspace: float = 0.25):
    """A figure with fixed margins (constrained layout would double the drawing time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.3 / height, wspace=wspace)
    return fig


def _literal(fig) -> None:
    """Draw every title, axis label, legend entry and figure text of ``fig`` as the text it is.

    Legend labels and titles carry names from result files (attack names, stage keys), and matplotlib
    would parse any ``$...$`` in them as mathtext: an odd or hostile name (``$\\undefinedmacro{x}$``)
    would fail the whole figure. Control characters in them (no font has a glyph for ESC) are written
    as escapes, as on the terminal. Tick labels keep mathtext (a log axis draws 10^-2 with it); they
    are numbers, never data text.
    """
    from diffaudit.core.progress import printable

    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        legend = ax.get_legend()
        if legend is not None:
            texts += [*legend.get_texts(), legend.get_title()]
    for t in texts:
        t.set_parse_math(False)
        t.set_text(printable(t.get_text()))


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    _literal(fig)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def try_plot(what: str, draw: Callable[[], bytes]) -> tuple[bytes | None, str | None]:
    """(``draw()``'s PNG bytes, None), or (None, a line saying that the ``what`` is left out and why)
    when drawing fails: a plot that the data of one result cannot draw never costs the whole report."""
    try:
        return draw(), None
    except Exception as exc:  # noqa: BLE001 - any failure of matplotlib on odd data leaves this plot out
        why = " ".join(str(exc).split())
        why = why if len(why) <= 200 else why[:199] + "…"
        return None, f"The {what} could not be drawn and is left out ({type(exc).__name__}{': ' + why if why else ''})."


def _style(ax) -> None:
    ax.grid(True, which="major", alpha=0.35, linewidth=0.6)
    ax.grid(True, which="minor", alpha=0.12, linewidth=0.4)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


#: The ROC's x axis reaches down to at least this FPR (the paper's plots go to 1e-3 and below).
ROC_AXIS_FLOOR = 1e-3


def roc_loglog(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], *, min_fpr: float | None = None) -> bytes:
    """The PNG of :func:`roc_loglog_figure`."""
    return _png(roc_loglog_figure(curves, min_fpr=min_fpr))


def roc_loglog_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], *, min_fpr: float | None = None):
    """The matplotlib Figure of log-log ROC curves: ``curves`` = [(label, fpr (K,), tpr (K,)), ...], rates in [0, 1].

    ``min_fpr``: the smallest FPR the evaluation resolves, 1/n_nonmembers (default: the smallest non-zero
    FPR over all curves). Points at FPR 0 are drawn there, so no curve claims a TPR below it; the x axis
    reaches down to at least :data:`ROC_AXIS_FLOOR`, and the part of it below ``min_fpr`` is shaded as not
    measured. The dashed diagonal is chance; dotted lines mark the FPRs of
    :data:`~diffaudit.report.alt_text.ROC_FPRS`, where the alt text reads the TPR.
    """
    fig = _figure()
    ax = fig.add_subplot()
    floors = [float(np.min(f[f > 0])) for _, f, _ in curves if np.any(np.asarray(f) > 0)]
    resolved = min_fpr if min_fpr is not None else min([ROC_AXIS_FLOOR] + floors)
    lo = min(resolved, ROC_AXIS_FLOOR)
    grid = np.logspace(np.log10(lo), 0, 50)
    ax.plot(grid, grid, "--", color="#888", linewidth=1, label="chance")
    if resolved > lo:
        ax.axvspan(lo, resolved, color="#ddd", alpha=0.6, linewidth=0, label=f"FPR < {resolved:.2g}: not measured")
    for i, (label, fpr, tpr) in enumerate(curves):
        f = np.clip(np.asarray(fpr, dtype=float), resolved, 1.0)
        t = np.clip(np.asarray(tpr, dtype=float), lo, 1.0)
        ax.step(f, t, where="post", color=PALETTE[i % len(PALETTE)], linewidth=1.6, label=label)
    for x in ROC_FPRS:
        if x >= resolved:
            ax.axvline(x, color="#bbb", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(lo, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Membership inference ROC (log-log)")
    _style(ax)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return fig


#: The AUC axis of the timestep sweep spans at least this much around chance (0.5), so that noise
#: about chance does not fill the axis and look like a peak.
AUC_SPAN = (0.45, 0.55)
#: The TPR axis (percent) reaches at least this multiple of chance (TPR = FPR).
TPR_SPAN_OVER_CHANCE = 3.0
SWEEP_FPR = 0.01


def _values(sweep_column: Sequence[float | None], scale: float = 1.0) -> np.ndarray:
    """A sweep's column as floats times ``scale``, None as NaN."""
    return np.array([np.nan if v is None else float(v) * scale for v in sweep_column], dtype=float)


def _limits(values: list[np.ndarray], floor: tuple[float, float], bounds: tuple[float, float], pad: float) -> tuple[float, float]:
    """Axis limits that hold every finite value (with ``pad``) and at least ``floor``, clipped to ``bounds``."""
    lo, hi = floor
    data = np.concatenate([v[np.isfinite(v)] for v in values] + [np.empty(0)])
    if data.size:
        lo, hi = min(lo, float(data.min()) - pad), max(hi, float(data.max()) + pad)
    return max(bounds[0], lo), min(bounds[1], hi)


def timestep_sweep_figure(sweeps: Sequence[tuple[str, Sequence[int], Sequence[float | None], Sequence[float | None]]]):
    """The matplotlib Figure of :func:`timestep_sweep` (nothing drawn to a file): the AUC axis holds
    chance (0.5) and at least :data:`AUC_SPAN`; TPR is in percent from 0 to at least
    :data:`TPR_SPAN_OVER_CHANCE` times chance; both panels draw chance as a dashed line and share the t
    axis. A panel with no value says so (TPR at 1% FPR is not measured below 100 non-members)."""
    from matplotlib.ticker import PercentFormatter

    fig = _figure(8.0, 3.2)
    axes = fig.subplots(1, 2, sharex=True)
    chance_tpr = 100 * SWEEP_FPR
    panels = ((axes[0], 2, "AUC", 1.0, 0.5, AUC_SPAN, (0.0, 1.01)),
              (axes[1], 3, f"TPR at {chance_tpr:g}% FPR", 100.0, chance_tpr, (0.0, TPR_SPAN_OVER_CHANCE * chance_tpr), (0.0, 101.0)))
    for ax, col, title, scale, chance, floor, bounds in panels:
        ax.axvspan(50, 300, color="#2a9d8f", alpha=0.08, label="t in [50, 300]")
        ys = []
        for i, sweep in enumerate(sweeps):
            t, y = np.asarray(sweep[1], dtype=float), _values(sweep[col], scale)
            ok = np.isfinite(y)
            ys.append(y)
            if ok.any():
                ax.plot(t[ok], y[ok], "o-", color=PALETTE[i % len(PALETTE)], markersize=3.5, linewidth=1.4, label=sweep[0])
        ax.axhline(chance, color="#888", linestyle="--", linewidth=0.8, label="chance")
        if not any(np.isfinite(y).any() for y in ys):
            ax.text(0.5, 0.5, f"not measured\n(needs {1 / SWEEP_FPR:.0f} or more non-members)" if col == 3 else "not measured",
                    transform=ax.transAxes, ha="center", va="center", color="#666", fontsize=9)
        ax.set_ylim(*_limits(ys, floor, bounds, pad=0.1 * (floor[1] - floor[0])))
        ax.set_xlabel("diffusion timestep t")
        ax.set_title(title, fontsize=10)
        _style(ax)
    axes[1].yaxis.set_major_formatter(PercentFormatter(xmax=100))
    axes[0].legend(fontsize=8, frameon=False)
    return fig


def timestep_sweep(sweeps: Sequence[tuple[str, Sequence[int], Sequence[float | None], Sequence[float | None]]]) -> bytes:
    """AUC and TPR at 1% FPR over the timestep t: ``sweeps`` = [(label, t, auc, tpr_at_1pct), ...], rates in [0, 1].

    The paper's best zone (t in [50, 300]) is shaded; chance is a dashed line; None values are skipped.
    """
    return _png(timestep_sweep_figure(sweeps))


def canary_curve(repeats: Sequence[int], exposure: Sequence[float | None], extracted: Sequence[bool], *,
                 ceiling: float | None = None) -> bytes:
    """Exposure of each canary over its number of repeats (log2 axis), extracted ones filled.

    The line is the mean exposure per repeat count; the right panel is the fraction extracted. A
    ``ceiling`` (log2(n_reference + 1), the largest exposure measurable) is drawn as a dotted line: a
    canary on it has an exposure of at least that.
    """
    r = np.asarray(repeats, dtype=float)
    e = np.array([np.nan if v is None else float(v) for v in exposure], dtype=float)
    x = np.asarray(extracted, dtype=bool)
    fig = _figure(8.0, 3.2)
    ax, ax2 = fig.subplots(1, 2)
    ok = np.isfinite(e)
    ax.scatter(r[ok & ~x], e[ok & ~x], s=18, facecolors="none", edgecolors=PALETTE[0], label="not extracted")
    ax.scatter(r[ok & x], e[ok & x], s=18, color=PALETTE[1], label="extracted")
    levels = np.unique(r)
    means = [np.nanmean(e[(r == v) & ok]) if np.any((r == v) & ok) else np.nan for v in levels]
    ax.plot(levels, means, "-", color="#444", linewidth=1.2, label="mean")
    if ceiling is not None:
        ax.axhline(ceiling, color="#888", linestyle=":", linewidth=1.0, label="ceiling (at least)")
    frac = [float(np.mean(x[r == v])) for v in levels]
    ax2.bar(np.arange(len(levels)), frac, color=PALETTE[1], alpha=0.8)
    ax2.set_xticks(np.arange(len(levels)), [f"{int(v)}" for v in levels])
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("repeats in training")
    ax2.set_title("fraction extracted", fontsize=10)
    if len(levels) and levels.min() > 0:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("repeats in training")
    ax.set_ylabel("exposure (bits)")
    ax.set_title("canary exposure", fontsize=10)
    for a in (ax, ax2):
        _style(a)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def distance_histogram(members: Sequence[float], nonmembers: Sequence[float], *, xlabel: str) -> bytes:
    """Overlaid histograms of a distance for members (training images) and non-members."""
    fig = _figure(5.2, 3.0)
    ax = fig.add_subplot()
    allv = np.asarray([*members, *nonmembers], dtype=float)
    allv = allv[np.isfinite(allv)]
    bins = np.linspace(allv.min(), allv.max() + 1e-9, 20) if allv.size else 10
    if len(members):
        ax.hist(members, bins=bins, alpha=0.6, color=PALETTE[1], label=f"members ({len(members)})")
    if len(nonmembers):
        ax.hist(nonmembers, bins=bins, alpha=0.6, color=PALETTE[0], label=f"non-members ({len(nonmembers)})")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("targets")
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def training_loss(steps: Sequence[float], losses: Sequence[float]) -> bytes:
    """Training loss over steps (log y), with a moving average when there are many points."""
    s = np.asarray(steps, dtype=float)
    l = np.asarray(losses, dtype=float)
    fig = _figure(5.2, 2.8)
    ax = fig.add_subplot()
    ax.plot(s, l, color=PALETTE[0], alpha=0.35 if len(l) > 50 else 1.0, linewidth=0.8)
    if len(l) > 50:
        k = max(5, len(l) // 50)
        smooth = np.convolve(l, np.ones(k) / k, mode="valid")
        ax.plot(s[k - 1:], smooth, color=PALETTE[0], linewidth=1.6)
    if np.all(l > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (noise prediction MSE)")
    _style(ax)
    return _png(fig)
