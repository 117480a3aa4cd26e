"""What exposure a canary gets by chance, and whether a group of canaries beats it.

Rank exposure (Secret Sharer, Definition 4; :func:`diffaudit.defenses.canaries.exposure`) is
log2(n + 1) − log2 rank, the rank of a canary's loss among its own and the n never-inserted
references' (1 = lowest). A canary the model never learnt is one more reference: its loss is
exchangeable with theirs, its rank uniform on 1..n + 1, so its exposure is not 0 but on average
:func:`chance_exposure` (about log2 e ≈ 1.44 bits as n grows, 1.38 at n = 64). A mean exposure near
it measures nothing; :func:`exposure_pvalue` says whether canaries rank above the references more
than chance lets them (one-sided Mann–Whitney U on the ranks their exposures record, exact under ties).

That test has a floor: however well the model learnt them, k canaries among n references cannot rank
higher than all below every reference, and the p of that (:func:`smallest_pvalue`; 1/(n + 1) for one
canary) is the least it can give. Where the floor is not below :data:`LEVEL` the test cannot find
memorization at all, and p ≥ 0.05 there is no evidence of its absence; :func:`needed_to_test` says how
many references, or canaries, would let it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from diffaudit.evaluation.rank_sum import rank_sum_pvalue

#: The one-sided level below which a group of canaries is said to rank above chance.
LEVEL = 0.05
#: How far :func:`needed_to_test` searches for a count of canaries that lets the test reach :data:`LEVEL`.
MAX_SEARCH = 1000


def chance_exposure(n_reference: int) -> float:
    """Mean rank exposure of a canary whose rank is uniform on 1..n + 1 (``n_reference`` = n ≥ 1):
    log2(n + 1) − log2((n + 1)!) / (n + 1), in bits; 0.5 at n = 1, → log2 e as n grows."""
    if n_reference < 1:
        raise ValueError("the chance exposure needs at least one reference")
    m = n_reference + 1
    return math.log2(m) - math.lgamma(m + 1) / math.log(2) / m


def exposure_pvalue(exposures: Sequence[float], n_reference: int) -> float | None:
    """One-sided p of canaries with rank ``exposures`` (bits, each in [0, log2(n + 1)]) ranking as high
    among the ``n_reference`` references as they do, or higher, if their losses were exchangeable with
    the references' (never learnt): Mann–Whitney U of the canaries' losses below the references',
    each canary's count of lower reference losses read back from its exposure (rank = 2^(log2(n + 1) −
    exposure), ties as halves). Exact under ties (canaries at the ceiling tie each other), by
    :func:`~diffaudit.evaluation.rank_sum.rank_sum_pvalue`, where that is cheap enough; else the normal
    approximation. In [0, 1]; None without exposures or references."""
    e = np.asarray([x for x in exposures if x is not None and math.isfinite(x)], np.float64)
    if len(e) == 0 or n_reference < 1:
        return None
    below = np.round(2 * (2.0 ** (math.log2(n_reference + 1) - e) - 1)) / 2  # references below each canary
    references = np.arange(n_reference, dtype=np.float64)  # distinct losses 0..n-1
    canaries = below - 0.5  # `below` of them lower; a half count ties one
    exact = rank_sum_pvalue(canaries, references)
    if exact is not None:
        return exact
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(canaries, references, alternative="less", method="asymptotic").pvalue)


def smallest_pvalue(n_canaries: int, n_reference: int) -> float | None:
    """The least p :func:`exposure_pvalue` can give ``n_canaries`` = k canaries among ``n_reference`` = n
    references: that of every canary's loss below every reference's (each at the ceiling, log2(n + 1)
    bits), the strongest evidence such a group can hold, 1 / C(n + k, k) (only the canaries' own k values
    rank that low). One canary among 16 references: 1/17 ≈ 0.059, so no model, however well it learnt
    it, gives p < 0.05. None without canaries or references."""
    if n_canaries < 1 or n_reference < 1:
        return None
    return 1.0 / math.comb(n_reference + n_canaries, n_canaries)


def testable(n_canaries: int, n_reference: int) -> bool:
    """Whether the test against chance can reach p < :data:`LEVEL` with these counts at all
    (:func:`smallest_pvalue` below it); False without canaries or references."""
    floor = smallest_pvalue(n_canaries, n_reference)
    return floor is not None and floor < LEVEL


def needed_to_test(n_canaries: int, n_reference: int) -> dict[str, int | None]:
    """What would let a group of ``n_canaries`` canaries among ``n_reference`` references reach p <
    :data:`LEVEL`: ``n_reference``, the fewest references with this many canaries, and ``n_canaries``, the
    fewest canaries with this many references (None where none up to :data:`MAX_SEARCH` does). Counts that
    already can are returned as they are."""
    k, n = max(n_canaries, 1), max(n_reference, 1)
    refs = next((m for m in range(n, n + MAX_SEARCH + 1) if testable(k, m)), None)
    cans = next((j for j in range(k, k + MAX_SEARCH + 1) if testable(j, n)), None)
    return {"n_reference": refs, "n_canaries": cans}
