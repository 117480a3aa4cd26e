"""PNG files of membership-inference results: the log-log ROC curve (Carlini et al. 2023, Sec. 5)
and the attack's success over the diffusion timestep (Fig. 9).

Thin writers over the drawing functions of :mod:`diffaudit.report.plots` (matplotlib Agg, no
pyplot state); the files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import write_bytes_atomic
from diffaudit.evaluation.attack_evaluation import AttackEvaluation
from diffaudit.evaluation.timestep_sweep import TimestepSweep
from diffaudit.report import plots


def _label(ev: AttackEvaluation) -> str:
    tpr = ev.tpr_at_fpr.get("0.01")
    tail = "" if tpr is None else f", TPR@1% {100 * tpr:.1f}%"
    return f"{ev.attack} (AUC {ev.auc:.3f}{tail})"


def roc_png_bytes(evaluations: Sequence[AttackEvaluation]) -> bytes:
    """Log-log ROC curves of ``evaluations`` (each must carry its ``curve``), measured from 1/n_nonmembers."""
    curves = []
    for ev in evaluations:
        if ev.curve is None:
            raise DiffauditError(f"the evaluation of {ev.attack} has no ROC curve to draw")
        curves.append((_label(ev), ev.curve.fpr, ev.curve.tpr))
    if not curves:
        raise DiffauditError("no ROC curve to draw")
    return plots.roc_loglog(curves, min_fpr=1.0 / max(ev.n_nonmembers for ev in evaluations))


def write_roc_png(path: str | os.PathLike, evaluations: Sequence[AttackEvaluation]) -> Path:
    """Write the log-log ROC PNG of ``evaluations`` to ``path``."""
    return write_bytes_atomic(path, roc_png_bytes(evaluations))


def sweep_png_bytes(sweeps: Sequence[TimestepSweep]) -> bytes:
    """AUC and TPR at 1% FPR over t, one line per sweep; the paper's best zone t in [50, 300] shaded."""
    if not sweeps:
        raise DiffauditError("no timestep sweep to draw")
    rows = [
        (s.attack, s.timesteps, [e.auc for e in s.evaluations], [e.tpr_at_fpr.get("0.01") for e in s.evaluations])
        for s in sweeps
    ]
    return plots.timestep_sweep(rows)


def write_sweep_png(path: str | os.PathLike, sweeps: Sequence[TimestepSweep]) -> Path:
    """Write the timestep-sweep PNG to ``path``."""
    return write_bytes_atomic(path, sweep_png_bytes(sweeps))
