"""Black-box extraction from unconditional generations, without the training set (issue 3).

The paper's generate-and-filter needs prompts to group generations. Unconditional samples have none,
so the grouping comes from the generations themselves:

1. exact k nearest neighbours of every generation among the others (plain ℓ2, :mod:`diffaudit.distances.knn`);
2. keep the pairs with ℓ2 ≤ edge threshold: since ℓ2 ≤ tiled ℓ2 always (module
   :mod:`diffaudit.distances.pixel`), every tiled-ℓ2 edge among a generation's k nearest is kept;
3. connected components of that sparse graph; components smaller than ``min_clique`` are dropped;
4. inside each component, the exact tiled-ℓ2 graph (paper §4.1) and every disjoint clique of at least
   ``min_clique`` members, largest first: each memorized image forms its own clique of copies.

Limits, reported in the result: a generation whose k-th neighbour is still within the threshold is
*saturated* (it may have more near-duplicates than k; raise ``k_neighbors``); a component above
``max_component`` generations is cut to the ``max_component`` members with the most kNN edges
(``truncated``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from diffaudit.attacks.extraction.cliques import disjoint_cliques
from diffaudit.attacks.extraction.filter import FilterSettings
from diffaudit.attacks.extraction.graph import mean_internal_distance, medoid, near_duplicate_graph
from diffaudit.core.device import resolve_device
from diffaudit.core.errors import DiffauditError
from diffaudit.distances.knn import KnnResult, knn_search

#: Default neighbours per generation in the black-box graph.
DEFAULT_K_NEIGHBORS = 32
#: Default largest component analysed in full.
DEFAULT_MAX_COMPONENT = 4096


@dataclass
class CliqueGroup:
    """One clique of near-identical generations (a candidate memorized image).

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
    bound_hit: any clique search hit its bound."""

    groups: list[CliqueGroup]
    n_samples: int
    n_candidate_edges: int
    n_components: int
    n_saturated: int
    bound_hit: bool
    stats: dict[str, Any] = field(default_factory=dict)


def candidate_components(knn: KnnResult, threshold: float, min_size: int) -> tuple[list[np.ndarray], int, int]:
    """Components (index arrays, ≥ ``min_size``, ordered by smallest member) of the graph joining each
    query to its kNN within ``threshold``; also the number of such edges and of saturated rows."""
    n, k = knn.indices.shape
    within = knn.distances <= threshold
    rows = np.repeat(np.arange(n), k)[within.ravel()]
    cols = knn.indices.ravel()[within.ravel()]
    saturated = int(within[:, -1].sum()) if k else 0
    g = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(g, directed=True, connection="weak")
    comps = []
    sizes = np.bincount(labels, minlength=labels.max(initial=0) + 1)
    for lab in np.flatnonzero(sizes >= min_size):
        comps.append(np.flatnonzero(labels == lab))
    comps.sort(key=lambda c: int(c[0]))
    return comps, int(len(rows)), saturated


def extract_unconditional(
    images: np.ndarray,
    ids: Sequence[str],
    *,
    settings: FilterSettings | None = None,
    k_neighbors: int = DEFAULT_K_NEIGHBORS,
    max_component: int = DEFAULT_MAX_COMPONENT,
    knn: KnnResult | None = None,
    backend: str = "torch",
    device: Any = "auto",
    compute: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> UnconditionalResult:
    """Find cliques of near-identical generations among unconditional samples (module docstring).

    images: uint8 (N, H, W, C); ids: N sample ids. ``knn``: a precomputed self-search with
    ``exclude_self`` (e.g. from :func:`~diffaudit.attacks.extraction.knn_cache.cached_knn`).
    ``progress`` is called once per analysed component.
    """
    s = (settings or FilterSettings()).validate()
    n = len(images)
    if len(ids) != n:
        raise DiffauditError(f"{n} images but {len(ids)} sample ids")
    if k_neighbors < 1:
        raise DiffauditError(f"--k-neighbors must be at least 1, got {k_neighbors}")
    if max_component < s.min_clique:
        raise DiffauditError(f"--max-component ({max_component}) must be at least --min-clique ({s.min_clique})")
    if n < 2:
        return UnconditionalResult([], n, 0, 0, 0, False)
    k = min(k_neighbors, n - 1)
    if knn is None:
        knn = knn_search(images, images, k, exclude_self=True, backend=backend, device=device, compute=compute)
    comps, n_edges, saturated = candidate_components(knn, s.edge_threshold, s.min_clique)
    indeg = np.bincount(knn.indices[knn.distances <= s.edge_threshold].ravel(), minlength=n)
    groups: list[CliqueGroup] = []
    bound_hit = False
    graph_device = resolve_device(device) if device is None or isinstance(device, str) else device
    for ci, comp in enumerate(comps):
        truncated = len(comp) > max_component
        members = comp
        if truncated:
            order = np.lexsort((comp, -indeg[comp]))[:max_component]
            members = np.sort(comp[order])
        g = near_duplicate_graph(images[members], threshold=s.edge_threshold, grid=s.grid, device=graph_device, compute=compute)
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
    return UnconditionalResult(groups, n, n_edges, len(comps), saturated, bound_hit,
                               {"k_neighbors": k, "knn_fallback_rows": knn.fallback_rows})
