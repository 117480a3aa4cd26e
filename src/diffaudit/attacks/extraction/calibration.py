"""Calibrating the filter: precision and recall over edge thresholds and clique sizes.

The paper does not publish its edge threshold (so it is calibrated here). Given which prompts are
truly memorized, every (edge threshold, minimum clique) pair is scored: a prompt is flagged when the
maximum clique of its tiled-ℓ2 graph at that threshold has ≥ min_clique members.

Each prompt's distance matrix is computed once; each threshold needs one clique search per prompt
and every clique size then costs nothing. Precision is ``None`` (JSON null) when nothing is flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from diffaudit.attacks.extraction.cliques import DEFAULT_MAX_EXPANSIONS, max_clique
from diffaudit.attacks.extraction.graph import check_threshold
from diffaudit.core.comma_lists import comma_values
from diffaudit.core.errors import DiffauditError


@dataclass
class CalibrationPoint:
    """Scores of one (edge_threshold, min_clique): counts and precision/recall in [0, 1]."""

    edge_threshold: float
    min_clique: int
    flagged: int
    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float | None
    recall: float | None
    bound_hits: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_float_list(text: str, name: str) -> list[float]:
    """"0.05,0.1" -> [0.05, 0.1] with a clear error naming the option (:func:`comma_values`); none is an error."""
    return _some(comma_values(text, float, "numbers", name), name)


def parse_int_list(text: str, name: str) -> list[int]:
    """"5,10" -> [5, 10] with a clear error naming the option (:func:`comma_values`); none is an error."""
    return _some(comma_values(text, int, "integers", name), name)


def _some(values: list, name: str) -> list:
    if not values:
        raise DiffauditError(f"{name}: no values given")
    return values


def check_clique_sizes(clique_sizes: Iterable[int]) -> list[int]:
    """The swept clique sizes, sorted and distinct; a :class:`DiffauditError` naming
    ``--sweep-min-clique`` when one is below 2 (a clique of one is every image)."""
    sizes = sorted({int(m) for m in clique_sizes})
    if any(m < 2 for m in sizes):
        raise DiffauditError(f"--sweep-min-clique values must be at least 2, got {sizes}")
    return sizes


def f1_score(point: CalibrationPoint) -> float:
    """The harmonic mean of precision and recall (0 when no memorized prompt is flagged)."""
    if not point.true_positives:
        return 0.0
    return 2 * point.true_positives / (2 * point.true_positives + point.false_positives + point.false_negatives)


def best_point(points: Sequence[CalibrationPoint]) -> CalibrationPoint | None:
    """The most useful point of a sweep: the highest F1; ties: higher precision, then the larger
    edge threshold and the smaller clique (the more permissive filter). None when no point flags a
    memorized prompt (every recall 0)."""
    useful = [p for p in points if p.true_positives]
    if not useful:
        return None
    return max(useful, key=lambda p: (f1_score(p), p.precision or 0.0, p.edge_threshold, -p.min_clique))


def calibrate(
    distances: Sequence[np.ndarray],
    memorized: Sequence[bool],
    *,
    thresholds: Iterable[float],
    clique_sizes: Iterable[int],
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
) -> list[CalibrationPoint]:
    """Precision/recall of the filter for every threshold x clique size.

    distances: one (n_p, n_p) tiled-ℓ2 matrix per prompt; memorized: ground truth per prompt.
    Returns points ordered by threshold, then clique size.
    """
    if len(distances) != len(memorized):
        raise DiffauditError(f"{len(distances)} prompts but {len(memorized)} ground-truth labels")
    truth = np.asarray(memorized, dtype=bool)
    ths = sorted({check_threshold(t, "--sweep-thresholds") for t in thresholds})
    sizes = check_clique_sizes(clique_sizes)
    out = []
    for t in ths:
        clique = np.zeros(len(distances), dtype=np.int64)
        hits = 0
        for p, d in enumerate(distances):
            if d.shape[0] == 0:
                continue
            adj = d <= t
            np.fill_diagonal(adj, False)
            res = max_clique(adj, max_expansions=max_expansions)
            clique[p] = res.size
            hits += int(res.bound_hit)
        for m in sizes:
            flag = clique >= m
            tp = int((flag & truth).sum())
            fp = int((flag & ~truth).sum())
            fn = int((~flag & truth).sum())
            out.append(CalibrationPoint(
                edge_threshold=t, min_clique=m, flagged=int(flag.sum()), true_positives=tp, false_positives=fp,
                false_negatives=fn,
                precision=(tp / (tp + fp)) if tp + fp else None,
                recall=(tp / (tp + fn)) if tp + fn else None,
                bound_hits=hits,
            ))
    return out
