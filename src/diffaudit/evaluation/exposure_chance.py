"""What exposure a canary gets by chance, and whether a group of canaries beats it.

Rank exposure (Secret Sharer, Definition 4; :func:`diffaudit.defenses.canaries.exposure`) is
log2(n + 1) − log2 rank, the rank of a canary's loss among its own and the n never-inserted
references' (1 = lowest). A canary the model never learnt is one more reference: its loss is
exchangeable with theirs, its rank uniform on 1..n + 1, so its exposure is not 0 but on average
:func:`chance_exposure` (about log2 e ≈ 1.44 bits as n grows, 1.38 at n = 64). A mean exposure near
it measures nothing; :func:`exposure_pvalue` says whether canaries rank above the references more
than chance lets them (one-sided Mann–Whitney U on the ranks their exposures record).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


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
    exposure), ties as halves). In [0, 1]; None without exposures or references."""
    from scipy.stats import mannwhitneyu

    e = np.asarray([x for x in exposures if x is not None and math.isfinite(x)], np.float64)
    if len(e) == 0 or n_reference < 1:
        return None
    below = np.round(2 * (2.0 ** (math.log2(n_reference + 1) - e) - 1)) / 2  # references below each canary
    references = np.arange(n_reference, dtype=np.float64)  # distinct losses 0..n-1
    canaries = below - 0.5  # `below` of them lower; a half count ties one
    return float(mannwhitneyu(canaries, references, alternative="less").pvalue)
