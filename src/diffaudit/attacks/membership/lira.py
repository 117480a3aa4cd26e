"""The Likelihood Ratio Attack (LiRA) on diffusion losses: online, offline, fixed variance, Strong.

Carlini et al. 2023, Sec. 5 (membership inference): train shadow models on random halves of the
data so each example is IN for about half of them, fit per-example Gaussians to the shadow models'
losses on it, and score the target model's loss by the likelihood ratio (LiRA, Carlini et al. 2022,
Sec. IV, Algorithm 1). Pure functions on arrays (shapes in :mod:`.inputs`); losses are first transformed
(:func:`~.inputs.transform_losses`, log by default). Every score is float (N,), finite, and LARGER
MEANS MORE LIKELY A MEMBER.

- online (:func:`lira_online_scores`): Λ(x) = log N(ℓ; μ_in, σ_in²) − log N(ℓ; μ_out, σ_out²)
  with (μ_in, σ_in) from the shadows IN on x and (μ_out, σ_out) from those OUT.
- offline (:func:`lira_offline_scores`): OUT shadows only, one-sided: −log Φ((ℓ − μ_out) / σ_out),
  minus the log-probability that an OUT model has a loss at most ℓ (the one-sided test of LiRA's
  offline variant). Large when the target's loss lies below the OUT distribution; ≥ 0.
- variance ``"fixed"``: one σ_in and one σ_out (per query) shared by all examples, the pooled
  within-example standard deviation; needed when there are few shadows (with 2 IN / 2 OUT a
  per-example σ is degenerate). ``"per-example"``: σ from each example's own shadows (ddof = 1);
  an example with fewer than 2 shadow losses on a side falls back to the pooled σ of that side.
- Strong LiRA, query = noise draw ε and horizontal flip with the same ε in every model:
  ``aggregate="sum-llr"`` (the attack registry's default) fits one Gaussian per (example, query) and
  sums the per-query scores (the log-likelihood ratios add as if independent);
  ``aggregate="mean-loss"`` averages the raw losses over the queries first and fits one Gaussian
  (the paper: Strong LiRA averages the loss over several noise draws ε and horizontal flips). Measured
  on 8 digits models, sum-llr is the stronger (docs/experiments.md).

An example with no IN (or no OUT) shadow loss takes μ from the other side shifted by the mean
IN − OUT gap over the examples that have both, and the pooled σ; one with no shadow loss it may read
(see :func:`~.targets.equal_in_out`) is scored against the mean IN and OUT Gaussians of all examples.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from diffaudit.attacks.membership.inputs import AttackInput, transform_losses
from diffaudit.core.errors import DiffauditError

VARIANCES = ("per-example", "fixed")
AGGREGATES = ("sum-llr", "mean-loss")
_MIN_STD = 1e-8
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


def gaussian_fit(x: np.ndarray, mask: np.ndarray, *, variance: str = "per-example") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example Gaussian of the values ``x`` selected by ``mask``.

    Args:
        x: float (N, S, Q) transformed shadow losses.
        mask: bool (N, S), which shadows belong to this side (IN or OUT) for each example.
        variance: ``"per-example"`` or ``"fixed"`` (see module docstring).

    Returns:
        ``(mu (N, Q), sigma (N, Q), count (N,))``; mu is NaN where count == 0 (filled by the caller),
        sigma ≥ 1e-8 everywhere.
    """
    if variance not in VARIANCES:
        raise DiffauditError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    m = mask[:, :, None].astype(np.float64)
    count = mask.sum(axis=1)
    c = count[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = (x * m).sum(axis=1) / c
    resid = np.where(mask[:, :, None], x - np.nan_to_num(mu)[:, None, :], 0.0)
    ss = (resid**2).sum(axis=1)  # (N, Q)
    dof = np.maximum(count - 1, 0)  # per-example degrees of freedom
    total_dof = dof.sum()
    if total_dof > 0:
        pooled = np.sqrt(ss.sum(axis=0) / total_dof)  # (Q,)
    else:  # every example has at most one value on this side: no within-example spread to pool
        pooled = np.full(x.shape[2], np.nan)
    if variance == "fixed" or total_dof == 0:
        sigma = np.broadcast_to(pooled, mu.shape).copy()
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma = np.sqrt(ss / dof[:, None])
        few = count < 2
        sigma[few] = pooled
    if np.isnan(sigma).any():
        # No spread can be estimated at all (one shadow per side): fall back to the spread of the
        # per-example means across examples, which over-states σ (a conservative choice).
        spread = np.nanstd(mu, axis=0) if np.isfinite(mu).any() else np.ones(x.shape[2])
        sigma = np.where(np.isnan(sigma), np.nan_to_num(spread, nan=1.0)[None, :], sigma)
    return mu, np.maximum(sigma, _MIN_STD), count


def _fill_missing(mu: np.ndarray, count: np.ndarray, other_mu: np.ndarray, other_count: np.ndarray) -> np.ndarray:
    """Fill μ where an example has no value on this side: the other side's μ + the mean gap (this −
    other); with no value on either side, this side's mean μ over the examples (the population's
    Gaussian, which reads nothing of the example's shadows)."""
    missing = count == 0
    if not missing.any():
        return mu
    both = (count > 0) & (other_count > 0)
    if not both.any():
        raise DiffauditError("no example has both IN and OUT shadow losses; train shadows on random halves (see `diffaudit membership`)")
    gap = np.mean(mu[both] - other_mu[both], axis=0)  # (Q,)
    mu = mu.copy()
    one_side = missing & (other_count > 0)
    mu[one_side] = other_mu[one_side] + gap
    mu[missing & (other_count == 0)] = mu[~missing].mean(axis=0)
    return mu


def _log_normal_pdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    z = (x - mu) / sigma
    return -0.5 * z * z - np.log(sigma) - _HALF_LOG_2PI


def _prepare(inp: AttackInput, aggregate: str, transform: str) -> tuple[np.ndarray, np.ndarray]:
    if aggregate not in AGGREGATES:
        raise DiffauditError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    target, shadows = inp.target, inp.shadows
    if aggregate == "mean-loss":
        target = target.mean(axis=1, keepdims=True)
        shadows = shadows.mean(axis=2, keepdims=True)
    return transform_losses(target, transform), transform_losses(shadows, transform)


def lira_online_scores(
    inp: AttackInput,
    *,
    variance: str = "per-example",
    aggregate: str = "mean-loss",
    transform: str = "log",
) -> np.ndarray:
    """Online LiRA: Σ_q [log N(ℓ_q; μ_in,q, σ_in,q²) − log N(ℓ_q; μ_out,q, σ_out,q²)].

    Args:
        inp: target (N, Q), shadows (N, S, Q), shadow_in (N, S) (and shadow_used); needs IN and OUT shadows.
        variance: ``"per-example"`` or ``"fixed"``.
        aggregate: ``"mean-loss"`` (average queries first; one Gaussian per example, plain LiRA)
            or ``"sum-llr"`` (one Gaussian per query, log-ratios summed: Strong LiRA).
        transform: ``"log"`` or ``"none"``, applied to losses before fitting.

    Returns:
        float (N,), larger = more likely a member (ℓ likelier under the IN Gaussian than under the OUT one).
        Not monotone in the loss: where σ_in < σ_out, a loss far below both Gaussians is likelier under
        the wider OUT one and scores as a non-member (the likelihood ratio of the paper, as it is).
    """
    inp.require_shadows("lira", need_in=True)
    target, shadows = _prepare(inp, aggregate, transform)
    mu_in, sd_in, n_in = gaussian_fit(shadows, inp.in_mask, variance=variance)
    mu_out, sd_out, n_out = gaussian_fit(shadows, inp.out_mask, variance=variance)
    mu_in = _fill_missing(mu_in, n_in, mu_out, n_out)
    mu_out = _fill_missing(mu_out, n_out, mu_in, n_in)
    llr = _log_normal_pdf(target, mu_in, sd_in) - _log_normal_pdf(target, mu_out, sd_out)
    return llr.sum(axis=1)


def lira_offline_scores(
    inp: AttackInput,
    *,
    variance: str = "per-example",
    aggregate: str = "mean-loss",
    transform: str = "log",
) -> np.ndarray:
    """Offline LiRA (OUT shadows only, one-sided): Σ_q −log Φ((ℓ_q − μ_out,q) / σ_out,q).

    Φ((ℓ − μ_out)/σ_out) is the probability that a model which did not train on x has a loss at most
    ℓ; a small probability (ℓ far below the OUT losses) gives a large score. Returns float (N,) ≥ 0,
    larger = more likely a member. For one query it ranks examples as −(ℓ − μ_out)/σ_out does.
    """
    inp.require_shadows("lira-offline", need_in=False)
    target, shadows = _prepare(inp, aggregate, transform)
    mu_out, sd_out, n_out = gaussian_fit(shadows, inp.out_mask, variance=variance)
    if (n_out == 0).any():
        # No OUT loss for some example: use its IN mean shifted by the mean OUT - IN gap.
        mu_in, _, n_in = gaussian_fit(shadows, inp.in_mask, variance=variance)
        mu_out = _fill_missing(mu_out, n_out, mu_in, n_in)
    z = (target - mu_out) / sd_out
    return (-log_ndtr(z)).sum(axis=1)
