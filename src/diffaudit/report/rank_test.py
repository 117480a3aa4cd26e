"""How sure an AUC on a few targets is: the inpainting attack's (Carlini et al. 2023, Sec. 5.3) runs on
a handful of members and non-members, where a bootstrap interval would invent precision.

The AUC of m members against n non-members is the Mann-Whitney statistic over their m·n pairs (score:
larger = more likely a member). The exact one-sided rank test asks how often chance alone reaches it:
with no relation between membership and score, each of the C(m + n, m) ways to give m of the targets
the member label is equally likely, and p is the share of them whose member rank sum (midranks for
ties) is at least the observed one. No result on these targets can reach a p below 1 / C(m + n, m):
with fewer than 1 / :data:`ANECDOTE_LEVEL` = 20 orderings (1 + k targets: k + 1; 2 + 2: 6; 2 + 3: 10)
even a perfect AUC is not significant at 0.05, and the result is an anecdote: no interval is given
for it. With more targets, a stratified percentile bootstrap interval
(:func:`diffaudit.evaluation.bootstrap.bootstrap_ci`, seeded) is given beside the p-value.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

#: The level a result must be able to reach to be evidence: fewer orderings than 1 / this, an anecdote.
ANECDOTE_LEVEL = 0.05
#: Member-non-member pairs (m·n) up to which untied scores beyond the exact count's reach
#: (:data:`~diffaudit.evaluation.rank_sum.EXACT_WORK`) take scipy's exact distribution (10 x 10,000: about
#: 0.3 s); beyond, the normal approximation.
SCIPY_EXACT_LIMIT = 100_000
#: Bootstrap replicates of the AUC interval (when the targets are not an anecdote).
N_BOOTSTRAP = 1000


def n_orderings(n_members: int, n_nonmembers: int) -> int:
    """C(m + n, m): the equally likely ways chance can give m of the m + n targets the member label."""
    return math.comb(n_members + n_nonmembers, n_members)


def above_every_nonmember_by_chance(n_members: int, n_nonmembers: int, n_above: int) -> dict[str, float]:
    """How a count of members scoring above every non-member (TPR at FPR 0, times m) compares with chance.

    With no relation between membership and score (untied), each of the m + n targets is equally likely
    to hold any rank; the members above every non-member are those ranked before the first non-member.
    ``expected``: their mean count, m / (n + 1) (each member beats all n non-members with probability
    1 / (n + 1)). ``pvalue``: the exact one-sided chance of ``n_above`` = k or more, that the k highest
    of the m + n scores are all members: prod_{i<k} (m - i) / (m + n - i) (1 for k = 0), in (0, 1]."""
    if min(n_members, n_nonmembers, n_above) < 0 or n_above > n_members:
        raise ValueError(f"need 0 <= n_above <= n_members and n_nonmembers >= 0; got {n_above}, {n_members}, {n_nonmembers}")
    p = 1.0
    for i in range(n_above):
        p *= (n_members - i) / (n_members + n_nonmembers - i)
    return {"expected": n_members / (n_nonmembers + 1), "pvalue": p}


def auc_spread_under_guessing(n_members: int, n_nonmembers: int) -> float:
    """Standard deviation of the AUC of a score that ignores membership, for ``n_members`` and
    ``n_nonmembers`` examples (the Mann–Whitney U statistic's null spread over n1·n2):
    σ0 = sqrt((n1 + n2 + 1) / (12·n1·n2)) ∈ (0, 0.5]."""
    return math.sqrt((n_members + n_nonmembers + 1) / (12.0 * n_members * n_nonmembers))


def rank_test(members: Sequence[float], nonmembers: Sequence[float]) -> dict[str, Any]:
    """One-sided test that members score higher than non-members (scores: larger = member).

    Returns ``{"pvalue", "method"}`` and, for the exact test, ``n_at_least`` (orderings whose AUC is at
    least the observed one; p = n_at_least / n_orderings). ``method``: "exact" (the orderings counted,
    ties included, by :func:`~diffaudit.evaluation.rank_sum.rank_sum_count` where that is cheap enough;
    beyond, scipy's exact distribution for untied scores, with ``n_at_least`` None) or "normal
    approximation" (Mann-Whitney, tie-corrected: tied scores, or more than :data:`SCIPY_EXACT_LIMIT` pairs).
    """
    from scipy.stats import mannwhitneyu

    from diffaudit.evaluation.rank_sum import rank_sum_count

    m, n = len(members), len(nonmembers)
    total = n_orderings(m, n)
    m_scores, n_scores = np.asarray(members, float), np.asarray(nonmembers, float)
    at_least = rank_sum_count(-m_scores, -n_scores)  # members' rank sum at least the observed one
    if at_least is not None:
        exact_count = total < 2 ** 53  # a float count is an exact integer below that
        return {"pvalue": min(at_least / total, 1.0), "method": "exact",
                "n_at_least": int(round(at_least)) if exact_count else None}
    if m * n <= SCIPY_EXACT_LIMIT and len(np.unique(np.r_[m_scores, n_scores])) == m + n:
        with np.errstate(all="ignore"):
            p = float(mannwhitneyu(members, nonmembers, alternative="greater", method="exact").pvalue)
        if math.isfinite(p):
            return {"pvalue": p, "method": "exact", "n_at_least": None}
    res = mannwhitneyu(members, nonmembers, alternative="greater", method="asymptotic")
    return {"pvalue": float(res.pvalue), "method": "normal approximation", "n_at_least": None}


def auc_evidence(members: Sequence[float], nonmembers: Sequence[float], *, seed: int = 0) -> dict[str, Any] | None:
    """What an AUC of ``members``' against ``nonmembers``' scores (larger = member) can show.

    Returns ``{"n_orderings", "min_pvalue", "anecdotal", "pvalue", "method", "n_at_least", "ci"}``:
    ``anecdotal`` when even a perfect AUC could not reach p < :data:`ANECDOTE_LEVEL` (then ``ci`` is
    None: the targets cannot bound one); else ``ci`` is the seeded bootstrap interval of the AUC
    {"low", "high", "level"}. None without a member or a non-member.
    """
    if not members or not nonmembers:
        return None
    total = n_orderings(len(members), len(nonmembers))
    out: dict[str, Any] = {"n_orderings": total, "min_pvalue": 1.0 / total, "anecdotal": 1.0 / total >= ANECDOTE_LEVEL,
                           **rank_test(members, nonmembers), "ci": None}
    if not out["anecdotal"]:
        from diffaudit.evaluation.bootstrap import bootstrap_ci

        scores = np.r_[np.asarray(members, float), np.asarray(nonmembers, float)]
        labels = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
        out["ci"] = bootstrap_ci(scores, labels, fpr_targets=(1.0,), n_bootstrap=N_BOOTSTRAP, seed=seed).auc.to_dict()
    return out
