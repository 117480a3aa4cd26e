"""Generate-and-filter for conditional models (paper §4.1: graph, then maximum clique).

For each prompt's generations: the tiled-ℓ2 near-duplicate graph, its maximum clique, a flag when
the clique has ≥ ``min_clique`` members (10 in the paper), the clique's medoid (its representative)
and its mean internal distance (flagged prompts are ranked by it, tightest first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from diffaudit.attacks.extraction.cliques import DEFAULT_MAX_EXPANSIONS, max_clique
from diffaudit.attacks.extraction.graph import (
    DEFAULT_EDGE_THRESHOLD,
    DEFAULT_MIN_CLIQUE,
    NearDuplicateGraph,
    check_threshold,
    mean_internal_distance,
    medoid,
    near_duplicate_graph,
    start_near_duplicate_graph,
)
from diffaudit.attacks.extraction.grid import resolve_grid
from diffaudit.core.errors import DiffauditError


@dataclass
class FilterSettings:
    """Thresholds of the filter (paper defaults). ``edge_threshold`` in (0, 1]; ``min_clique`` ≥ 2;
    ``grid`` tiles per side of the tiled ℓ2, None: :func:`~diffaudit.attacks.extraction.grid.default_grid`
    of the images (the paper's 4, fewer on images under 16 pixels a side), as `extract` and the audit take it."""

    edge_threshold: float = DEFAULT_EDGE_THRESHOLD
    min_clique: int = DEFAULT_MIN_CLIQUE
    grid: int | None = None
    max_expansions: int = DEFAULT_MAX_EXPANSIONS

    def validate(self) -> "FilterSettings":
        check_threshold(self.edge_threshold, "--edge-threshold")
        if int(self.min_clique) < 2:
            raise DiffauditError(f"--min-clique must be at least 2 (a clique of one is every image), got {self.min_clique}")
        if self.grid is not None and int(self.grid) < 1:
            raise DiffauditError(f"--grid must be at least 1, got {self.grid}")
        if int(self.max_expansions) < 1:
            raise DiffauditError(f"--max-expansions must be at least 1, got {self.max_expansions}")
        return self


@dataclass
class PromptResult:
    """One prompt's verdict (issue 3 result fields).

    Attributes:
        prompt: the caption; prompt_index: its order of first appearance in the samples;
        n_generations: generations of the prompt; largest_clique: size of the maximum clique;
        members: sample ids of the clique; medoid: sample id of its medoid (None without generations);
        mean_distance: mean tiled ℓ2 inside the clique, in [0, 1] (smaller = tighter = more likely
        memorized); flagged: largest_clique ≥ min_clique; bound_hit: the clique search hit its
        expansion bound; rank: 1-based rank among flagged prompts (None when not flagged).
    """

    prompt: str
    prompt_index: int
    n_generations: int
    largest_clique: int
    members: list[str]
    medoid: str | None
    mean_distance: float
    flagged: bool
    bound_hit: bool
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_prompt(
    images: Any,
    ids: Sequence[str],
    prompt: str,
    *,
    settings: FilterSettings | None = None,
    prompt_index: int = 0,
    device: Any = None,
    compute: str = "auto",
    distances_out: list | None = None,
) -> PromptResult:
    """Filter one prompt's generations ``images`` (n, H, W, C) uint8 with sample ids ``ids``.

    Paper §4.1: graph (tiled ℓ2 ≤ edge threshold), maximum clique, flag, medoid.
    ``distances_out``, when a list, receives the (n, n) tiled-ℓ2 matrix (for calibration).
    """
    s = (settings or FilterSettings()).validate()
    g = None if len(ids) == 0 else near_duplicate_graph(images, threshold=s.edge_threshold,
                                                        grid=resolve_grid(s.grid, images.shape[1:]), device=device,
                                                        compute=compute)
    return _verdict(g, ids, prompt, prompt_index, s, distances_out)


def filter_prompts(
    prompts: Iterable[tuple[int, str, Any, Sequence[str]]],
    *,
    settings: FilterSettings | None = None,
    device: Any = None,
    compute: str = "auto",
) -> Iterator[PromptResult]:
    """:func:`filter_prompt` for each ``(prompt_index, prompt, images, ids)``, in order. On a GPU the
    next prompt's graph is queued before the current prompt's clique search on the CPU, so each
    result comes one prompt later (an error in the next prompt's images is raised after the current
    result); on the CPU this is the plain loop. The results are those of :func:`filter_prompt`."""
    s = (settings or FilterSettings()).validate()
    pending = None
    for pi, prompt, images, ids in prompts:
        try:
            started = (pi, prompt, ids, None if len(ids) == 0 else start_near_duplicate_graph(
                images, threshold=s.edge_threshold, grid=resolve_grid(s.grid, images.shape[1:]), device=device,
                compute=compute))
        except BaseException:
            if pending is not None:  # deliver the finished prompt before the error
                yield _finish(pending, s)
            raise
        if pending is not None:
            yield _finish(pending, s)
            pending = None
        if started[3] is not None and started[3].ready is not None:
            pending = started  # its graph is still being computed: finish it after queueing the next
        else:
            yield _finish(started, s)
    if pending is not None:
        yield _finish(pending, s)


def _finish(started: tuple, s: FilterSettings) -> PromptResult:
    pi, prompt, ids, g = started
    return _verdict(None if g is None else g.result(), ids, prompt, pi, s, None)


def _verdict(g: NearDuplicateGraph | None, ids: Sequence[str], prompt: str, prompt_index: int, s: FilterSettings,
             distances_out: list | None) -> PromptResult:
    """The maximum clique of one prompt's graph, its flag and its medoid (``g`` None: no generations)."""
    if g is None:
        return PromptResult(prompt, prompt_index, 0, 0, [], None, 0.0, False, False)
    if distances_out is not None:
        distances_out.append(g.distances)
    cq = max_clique(g.adjacency, max_expansions=s.max_expansions)
    members = cq.members
    med = medoid(members, g.distances)
    return PromptResult(
        prompt=prompt,
        prompt_index=prompt_index,
        n_generations=len(ids),
        largest_clique=cq.size,
        members=[ids[i] for i in members],
        medoid=ids[med],
        mean_distance=mean_internal_distance(members, g.distances),
        flagged=cq.size >= s.min_clique,
        bound_hit=cq.bound_hit,
    )


def group_by_prompt(captions: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(prompt, indices) for every distinct caption, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(captions):
        groups.setdefault(c, []).append(i)
    return [(p, np.asarray(ix, dtype=np.int64)) for p, ix in groups.items()]


def rank_prompts(results: list[PromptResult]) -> list[PromptResult]:
    """Flagged first, ranked by mean internal distance (tightest first; ties: larger clique, then
    prompt order), then the rest by clique size (descending) and prompt order. Sets ``rank``."""
    flagged = sorted((r for r in results if r.flagged), key=lambda r: (r.mean_distance, -r.largest_clique, r.prompt_index))
    rest = sorted((r for r in results if not r.flagged), key=lambda r: (-r.largest_clique, r.mean_distance, r.prompt_index))
    for i, r in enumerate(flagged, 1):
        r.rank = i
    for r in rest:
        r.rank = None
    return flagged + rest


def filter_conditional(
    images: np.ndarray,
    ids: Sequence[str],
    captions: Sequence[str],
    *,
    settings: FilterSettings | None = None,
    device: Any = None,
    compute: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> list[PromptResult]:
    """Filter every prompt of a conditional sample set; returns ranked :class:`PromptResult` s.

    images: uint8 (N, H, W, C); ids, captions: N strings (the generation ids and their prompts).
    """
    if len(ids) != len(images) or len(captions) != len(images):
        raise DiffauditError(f"{len(images)} images, {len(ids)} ids and {len(captions)} prompts: counts differ")
    s = (settings or FilterSettings()).validate()
    out = []
    work = ((pi, prompt, images[idx], [ids[i] for i in idx]) for pi, (prompt, idx) in enumerate(group_by_prompt(captions)))
    for r in filter_prompts(work, settings=s, device=device, compute=compute):
        out.append(r)
        if progress is not None:
            progress(1)
    return rank_prompts(out)
