"""Black-box extraction from unconditional generations, without the training set (issue 3).

The paper's generate-and-filter needs prompts to group generations. Unconditional samples have none,
so the grouping comes from the generations themselves:

1. exact k nearest neighbours of every generation among the others (plain ℓ2, :mod:`diffaudit.distances.knn`);
2. keep the pairs with ℓ2 ≤ edge threshold: since ℓ2 ≤ tiled ℓ2 always (module
   :mod:`diffaudit.distances.pixel`), every tiled-ℓ2 edge among a generation's k nearest is kept;
3. connected components of that sparse graph; components smaller than ``min_clique`` are dropped;
4. inside each component, the exact tiled-ℓ2 graph (paper §4.1) and every disjoint clique of at least
   ``min_clique`` members, largest first: each clique is a set of candidate copies of one image (the
   copies of one memorized image may split into several cliques; ``diffaudit verify --from-extract``
   maps them to training images).

Limits, reported in the result (and said by ``diffaudit extract`` and the report): a generation whose
k-th neighbour is still within the threshold is *saturated* (it may have more near-duplicates than k;
raise ``k_neighbors``; ``n_saturated``); a component above ``max_component`` generations is cut to the
``max_component`` members with the most kNN edges (its cliques ``truncated``; ``n_truncated``
components), so cliques among the members cut away may be missed.

Memory: only the edges within the threshold are kept (:class:`NeighbourEdges`, built chunk by chunk
from a resumable search), never the (N, k) neighbour lists, so 2^20 generations cost O(edges).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from diffaudit.attacks.extraction.cliques import disjoint_cliques
from diffaudit.attacks.extraction.filter import FilterSettings
from diffaudit.attacks.extraction.graph import mean_internal_distance, medoid, near_duplicate_graph
from diffaudit.attacks.extraction.grid import resolve_grid
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.distances.knn import KnnResult, knn_search

#: Default neighbours per generation in the black-box graph.
DEFAULT_K_NEIGHBORS = 32
#: Default largest component analysed in full.
DEFAULT_MAX_COMPONENT = 4096


@dataclass
class CliqueGroup:
    """One clique of near-identical generations: candidate copies of one image (several cliques may
    copy the same training image; verification maps them to training images).

    Attributes:
        group: 1-based rank (by mean internal distance, tightest first; ties: larger first);
        component: index of its connected component; component_size: generations in it;
        size: clique members; members: their sample ids; member_indices: their positions;
        medoid: sample id of the medoid; mean_distance: mean tiled ℓ2 inside, in [0, 1];
        bound_hit: the clique search hit its expansion bound; truncated: the component was cut.
    """

    group: int
    component: int
    component_size: int
    size: int
    members: list[str]
    member_indices: list[int]
    medoid: str
    mean_distance: float
    bound_hit: bool
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UnconditionalResult:
    """groups: the cliques found; n_samples; n_candidate_edges (kNN pairs within the threshold);
    n_components (components with ≥ min_clique generations); n_saturated (see module docstring);
    bound_hit: any clique search hit its bound; n_truncated: components cut to ``max_component``."""

    groups: list[CliqueGroup]
    n_samples: int
    n_candidate_edges: int
    n_components: int
    n_saturated: int
    bound_hit: bool
    stats: dict[str, Any] = field(default_factory=dict)
    n_truncated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NeighbourEdges:
    """The near-duplicate candidates of a kNN self-search: every (query, neighbour) pair with ℓ2 ≤ the
    edge threshold.

    Attributes:
        n: generations; rows, cols: int64 (E,) query and neighbour positions; saturated: queries whose
        k-th neighbour is within the threshold while k < n − 1 (some edges may be missing);
        fallback_rows: the search's certificate fallbacks.
    """

    n: int
    rows: np.ndarray
    cols: np.ndarray
    saturated: int
    fallback_rows: int = 0

    @classmethod
    def from_chunks(cls, n: int, chunks: Iterable[tuple[int, KnnResult]], threshold: float) -> "NeighbourEdges":
        """Edges from ``(query offset, KnnResult)`` chunks (e.g. ``iter_cached_knn``), one chunk in memory."""
        rows, cols, saturated, fallback = [], [], 0, 0
        for off, knn in chunks:
            within = knn.distances <= threshold
            r, c = np.nonzero(within)
            rows.append(r.astype(np.int64) + off)
            cols.append(knn.indices[r, c].astype(np.int64))
            # a k-th neighbour within the threshold means edges may be missing, unless the k neighbours
            # are all the other generations (self excluded: k = n − 1), when nothing can be missing
            if within.shape[1] and within.shape[1] < n - 1:
                saturated += int(within[:, -1].sum())
            fallback += knn.fallback_rows
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
        return cls(n, cat(rows), cat(cols), saturated, fallback)

    @classmethod
    def from_knn(cls, knn: KnnResult, threshold: float) -> "NeighbourEdges":
        return cls.from_chunks(len(knn.indices), [(0, knn)], threshold)



def too_large_a_clique(min_clique: int, max_component: int) -> str:
    """The refusal of a ``--min-clique`` above ``--max-component``: the clique asked for is larger than any
    group searched, so none could ever be flagged (it named --max-component as the one at fault)."""
    return (f"--min-clique {min_clique:,} is more than --max-component {max_component:,}, the largest group of "
            "near-identical generations searched for cliques, so no clique could be flagged: lower --min-clique "
            "(the paper: 10) or raise --max-component")

def candidate_components(edges: NeighbourEdges, min_size: int) -> list[np.ndarray]:
    """Components (index arrays, ≥ ``min_size``, ordered by smallest member) of the graph of ``edges``."""
    n = edges.n
    g = coo_matrix((np.ones(len(edges.rows), dtype=np.int8), (edges.rows, edges.cols)), shape=(n, n))
    _, labels = connected_components(g, directed=True, connection="weak")
    sizes = np.bincount(labels, minlength=labels.max(initial=0) + 1)
    comps = [np.flatnonzero(labels == lab) for lab in np.flatnonzero(sizes >= min_size)]
    comps.sort(key=lambda c: int(c[0]))
    return comps


def extract_unconditional(
    images: np.ndarray,
    ids: Sequence[str],
    *,
    settings: FilterSettings | None = None,
    k_neighbors: int = DEFAULT_K_NEIGHBORS,
    max_component: int = DEFAULT_MAX_COMPONENT,
    knn: KnnResult | NeighbourEdges | None = None,
    backend: str = "torch",
    device: Any = "auto",
    compute: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> UnconditionalResult:
    """Find cliques of near-identical generations among unconditional samples (module docstring).

    images: uint8 (N, H, W, C); ids: N sample ids. ``knn``: a precomputed self-search with
    ``exclude_self`` (e.g. from :func:`~diffaudit.attacks.extraction.knn_cache.cached_knn`), or its
    :class:`NeighbourEdges` at ``settings.edge_threshold`` (:meth:`NeighbourEdges.from_chunks`).
    ``progress`` is called once per analysed component.
    """
    s = (settings or FilterSettings()).validate()
    n = len(images)
    if len(ids) != n:
        raise DiffauditError(f"{n} images but {len(ids)} sample ids")
    if k_neighbors < 1:
        raise DiffauditError(f"--k-neighbors must be at least 1, got {k_neighbors}")
    if max_component < s.min_clique:
        raise DiffauditError(too_large_a_clique(s.min_clique, max_component))
    if n < 2:
        return UnconditionalResult([], n, 0, 0, 0, False)
    k = min(k_neighbors, n - 1)
    if knn is None:
        knn = knn_search(images, images, k, exclude_self=True, backend=backend, device=device, compute=compute)
    edges = knn if isinstance(knn, NeighbourEdges) else NeighbourEdges.from_knn(knn, s.edge_threshold)
    if edges.n != n:
        raise DiffauditError(f"the neighbour graph covers {edges.n} generations, not {n}")
    comps = candidate_components(edges, s.min_clique)
    indeg = np.bincount(edges.cols, minlength=n)
    groups: list[CliqueGroup] = []
    bound_hit = False
    graph_device = resolve_device(device) if device is None or isinstance(device, str) else device
    for ci, comp in enumerate(comps):
        truncated = len(comp) > max_component
        members = comp
        if truncated:
            order = np.lexsort((comp, -indeg[comp]))[:max_component]
            members = np.sort(comp[order])
        g = near_duplicate_graph(images[members], threshold=s.edge_threshold, grid=resolve_grid(s.grid, images.shape[1:]),
                                 device=graph_device, compute=compute)
        for cq in disjoint_cliques(g.adjacency, min_size=s.min_clique, max_expansions=s.max_expansions):
            bound_hit |= cq.bound_hit
            glob = members[cq.members]
            groups.append(CliqueGroup(
                group=0,
                component=ci,
                component_size=int(len(comp)),
                size=cq.size,
                members=[ids[i] for i in glob],
                member_indices=[int(i) for i in glob],
                medoid=ids[int(members[medoid(cq.members, g.distances)])],
                mean_distance=mean_internal_distance(cq.members, g.distances),
                bound_hit=cq.bound_hit,
                truncated=truncated,
            ))
        if progress is not None:
            progress(1)
    groups.sort(key=lambda c: (c.mean_distance, -c.size, c.member_indices[0]))
    for i, c in enumerate(groups, 1):
        c.group = i
    return UnconditionalResult(groups, n, int(len(edges.rows)), len(comps), edges.saturated, bound_hit,
                               {"k_neighbors": k, "knn_fallback_rows": edges.fallback_rows},
                               n_truncated=sum(1 for comp in comps if len(comp) > max_component))
