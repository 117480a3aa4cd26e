"""The exact null distribution of a rank sum, ties included: the one-sided Mann–Whitney (Wilcoxon rank-sum)
test that the canary exposure test (:mod:`diffaudit.evaluation.exposure_chance`) and the few-target AUC test
(:mod:`diffaudit.report.rank_test`) read their p from.

Under the permutation null every choice of which k of the N pooled values form the tested group is equally
likely, C(N, k) in all; ties take their midrank, as they did in the data. The count of choices whose rank sum
is at most the observed one comes from the subset-sum recursion over doubled ranks (midranks are multiples
of 1/2): ways[j, s] = number of j-subsets of the values seen so far whose doubled rank sum is s, each value
added once, O(k · N · 2kN) element operations. scipy's exact distribution holds only without ties.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: The most element operations :func:`rank_sum_count` may take (k · N · the largest doubled rank sum: a
#: fraction of a second); beyond it the callers fall back to an approximation.
EXACT_WORK = 5e8


def rank_sum_count(low: Sequence[float], other: Sequence[float]) -> float | None:
    """How many of the C(N, k) ways to choose k = len(``low``) of the N pooled values have a rank sum at most
    ``low``'s (midranks for ties): small when ``low``'s values sit below ``other``'s. A float (an exact
    integer below 2^53); None when either group is empty or the count would take more than
    :data:`EXACT_WORK`. The smaller group is counted (its rank sum is the total's complement)."""
    from scipy.stats import rankdata

    low, other = np.asarray(low, np.float64), np.asarray(other, np.float64)
    k, n = len(low), len(other)
    if not k or not n:
        return None
    ranks = np.rint(2 * rankdata(np.r_[low, other])).astype(np.int64)
    observed = int(ranks[:k].sum())
    if n < k:  # count the other group: low's sum at most `observed` is other's at least the rest
        ways = _subset_sums(ranks, n)
        return None if ways is None else float(ways[int(ranks.sum()) - observed:].sum())
    ways = _subset_sums(ranks, k)
    return None if ways is None else float(ways[:observed + 1].sum())


def rank_sum_pvalue(low: Sequence[float], other: Sequence[float]) -> float | None:
    """One-sided exact p that ``low``'s values rank as low among the pooled values as they do, or lower, by
    chance: :func:`rank_sum_count` / C(N, k), in (0, 1]; None where that count is."""
    count = rank_sum_count(low, other)
    return None if count is None else min(count / math.comb(len(low) + len(other), len(low)), 1.0)


def _subset_sums(ranks: np.ndarray, k: int) -> np.ndarray | None:
    """ways[s]: the k-subsets of ``ranks`` (doubled, integers) whose sum is s, for s in 0..the largest; None
    beyond :data:`EXACT_WORK`."""
    top = int(np.sort(ranks)[-k:].sum())
    if k * len(ranks) * (top + 1) > EXACT_WORK:
        return None
    ways = np.zeros((k + 1, top + 1))
    ways[0, 0] = 1.0
    for i, r in enumerate(ranks):
        for j in range(min(k, i + 1), 0, -1):  # downwards: each value joins a subset at most once
            ways[j, r:] += ways[j - 1, :top + 1 - r]
    return ways[k]
