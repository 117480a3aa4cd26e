"""Members versus non-members: the distance statistics of the inpainting attack (paper Figure 12).

A memorizing model reconstructs the hidden half of its training images far better than that of
unseen images, so ``mean_topk_l2`` (the mean ℓ2 of the ``top_k`` kept inpaintings; the paper's
top-10 mean when k = 10) and ``best_l2`` should be lower for members. The separation
as an AUC (of −mean_topk_l2, members positive; larger score = more likely a member,
Conventions: scores) is computed by :func:`diffaudit.evaluation.roc.auc` in the command, which may import the
evaluation layer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffaudit.attacks.inpainting.attack import TargetResult

FIELDS = ("best_l2", "mean_topk_l2", "top1_l2", "oracle_best_l2", "mean_topk_l2_hidden")


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "max": float(values.max())}


def membership_scores(results: Sequence[TargetResult], field: str = "mean_topk_l2") -> tuple[np.ndarray, np.ndarray]:
    """(scores float64 (n,), members bool (n,)): score = −``field`` (larger = more likely a member)."""
    return (-np.asarray([getattr(r, field) for r in results], dtype=np.float64),
            np.asarray([r.member for r in results], dtype=bool))


def summarize(results: Sequence[TargetResult]) -> dict:
    """Counts and mean/median/min/max of each distance in :data:`FIELDS`, for members and non-members.

    Returns ``{"n_targets", "n_members", "n_nonmembers", "<field>": {"members": {...}, "nonmembers": {...}}}``.
    """
    members = np.asarray([r.member for r in results], dtype=bool)
    out: dict = {"n_targets": len(results), "n_members": int(members.sum()), "n_nonmembers": int((~members).sum())}
    for name in FIELDS:  # a value a result lacks (None: results made before it was measured) is left out
        v = np.asarray([np.nan if getattr(r, name) is None else getattr(r, name) for r in results], dtype=np.float64)
        known = ~np.isnan(v)
        out[name] = {"members": _stats(v[members & known]), "nonmembers": _stats(v[~members & known])}
    return out
