"""DP-SGD training of the DDPM through opacus (paper Section 7: differential privacy as a defence;
the paper's DP-SGD runs diverged even at ε ≥ 50).

Same loop, schedule, EMA and run-directory layout as :func:`diffaudit.models.training.train`
(``unet/``, ``scheduler/``, ``train_config.json``, ``train_ids.json``, ``loss_log.jsonl``,
``checkpoints/`` every :func:`diffaudit.models.training.checkpoint_interval` steps, ``result.json``),
so sampling, the loss and every attack load a DP run like any other, plus ``dp.json``: ε, δ, σ,
sampling rate, steps, accountant (configured and used, with any fallback reason).

DP-SGD (Abadi et al. 2016) per step:

1. Batch: Poisson sampling (each training example independently with probability q = B / N;
   ``poisson_sampling=False``: fixed-size batches of B distinct examples, each epoch a fresh seeded
   permutation cut into N // B batches (:func:`diffaudit.models.training.epoch_batch_positions`; a
   batch never spans two epochs, so no example enters a batch twice), which the accountant does not
   formally cover).
2. Per example, K = ``augmentations`` (t, ε) draws (augmentation multiplicity, De et al. 2022): the
   example's gradient is the mean over its K draws, then clipped to norm ``max_grad_norm`` = C.
3. Sum, add N(0, σ²C²) noise (σ = ``noise_multiplier``, or solved from ``target_epsilon``), divide
   by the expected batch size B, Adam step (DP is preserved by post-processing, as is the EMA).

Accounting: opacus RDP (default) or PRV accountant over (σ, q, steps), δ = 1 / (10 N) by default.
Each loss-log line carries a progress ε from the RDP accountant (cheap; PRV is recomputed from
scratch at a cost growing with the steps, seconds to minutes per call); the final ε, in ``dp.json``
and on the last log line, is the configured accountant's. PRV fails numerically at large ε (an
infinite ε, or a discretisation mesh of many GiB: ``MemoryError``), so where its mesh would exceed
:data:`PRV_MAX_POINTS` or it fails, the RDP bound (valid, looser) is recorded instead, with
``accountant_used`` and ``fallback_reason`` saying so (:func:`accounted_epsilon`).
Per-sample gradients come from opacus' ``GradSampleModule``. **Known opacus problem**: its hook
mode returns silently wrong (zero) per-sample gradients for Conv2d layers whose input is not
contiguous — which is what diffusers' attention blocks hand to the next convolution (measured:
every conv after an ``AttnDownBlock2D``/mid-block attention of a ``UNet2DModel`` got zero
per-sample gradients, opacus 1.6). ``grad_sample_mode="auto"`` therefore uses the hook mode only
for UNets without attention and functorch (``force_functorch=True``, vmap per layer; exact, ~1.5x
slower) otherwise; :func:`check_grad_samples` compares either against per-example backward passes.
diffusers UNets use GroupNorm only (no BatchNorm), which opacus' ``ModuleValidator`` confirms.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError
from diffaudit.core.faults import fault_point
from diffaudit.core.folder_identity import FolderIdentity
from diffaudit.core.io import write_bytes_atomic, write_json_atomic
from diffaudit.core.progress import progress_bar, stage_line, warning_line, warning_once
from diffaudit.core.results import write_result
from diffaudit.core.seeds import derive_seed, numpy_rng, torch_generator
from diffaudit.data.dataset import ImageDataset, to_model_space
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.models.training import (  # the plain run's pieces, reused so both runs share one definition
    Ema,
    TrainConfig,
    build_unet_untouched_rng,
    check_finite_state,
    check_train_indices,
    checkpoint_interval,
    drop_checkpoints,
    epoch_batch_positions,
    expand_repeats,
    init_model,
    is_finished,
    lr_at,
    plan_run,
    resume,
    save_checkpoint,
    save_pretrained_atomic,
)
from diffaudit.models.run_record import training_digests
from diffaudit.models.unets import count_parameters

ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("auto", "hooks", "functorch")


@dataclass
class DPConfig:
    """DP-SGD settings (saved in ``train_config.json`` and ``dp.json``).

    Attributes:
        noise_multiplier: σ (noise std = σ · C); None with ``target_epsilon`` set: solved for it.
        target_epsilon: the ε to reach after ``TrainConfig.steps`` steps (instead of σ).
        delta: δ; None: 1 / (10 N).
        max_grad_norm: per-example clipping norm C (``inf``: no clipping, only with σ = 0).
        poisson_sampling: Poisson batches (what the accountant assumes) or fixed-size batches of distinct
            examples (:func:`batch_rows`; the plain run's batches when ``batch_size`` divides N).
        accountant: ``rdp`` or ``prv`` (for the final ε; where PRV fails, RDP's is recorded, module docstring).
        augmentations: K (t, ε) draws per example per step, averaged before clipping.
        grad_sample_mode: ``auto``, ``hooks`` or ``functorch`` (module docstring).
    """

    noise_multiplier: float | None = 1.0
    target_epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float = 1.0
    poisson_sampling: bool = True
    accountant: str = "rdp"
    augmentations: int = 1
    grad_sample_mode: str = "auto"

    def validate(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise DiffauditError("DP-SGD: give exactly one of --dp-noise (noise multiplier) and --dp-epsilon (target epsilon)")
        if self.noise_multiplier is not None and not (0 <= self.noise_multiplier < 1e4):
            raise DiffauditError(f"--dp-noise must lie in [0, 1e4); got {self.noise_multiplier}")
        if self.target_epsilon is not None and not (0 < self.target_epsilon < 1e4):
            raise DiffauditError(f"--dp-epsilon must lie in (0, 1e4) (a finite privacy budget; without DP-SGD leave "
                                 f"out --dp-epsilon and --dp-noise); got {self.target_epsilon}")
        if self.delta is not None and not (0 < self.delta < 1):
            raise DiffauditError(f"--dp-delta must lie in (0, 1); got {self.delta}")
        if not self.max_grad_norm > 0:
            raise DiffauditError(f"--dp-max-grad-norm must be positive (inf: no clipping); got {self.max_grad_norm}")
        if math.isinf(self.max_grad_norm) and (self.target_epsilon is not None or self.noise_multiplier):
            raise DiffauditError("--dp-max-grad-norm inf (no clipping) only works without noise (--dp-noise 0): "
                                 "the noise is proportional to the clipping norm")
        if self.accountant not in ACCOUNTANTS:
            raise DiffauditError(f"--dp-accountant must be one of {', '.join(ACCOUNTANTS)}; got {self.accountant!r}")
        if self.augmentations < 1:
            raise DiffauditError(f"--dp-augmentations must be at least 1; got {self.augmentations}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise DiffauditError(f"--dp-grad-sample-mode must be one of {', '.join(GRAD_SAMPLE_MODES)}")


def check_model(model: torch.nn.Module) -> None:
    """Raise :class:`DiffauditError` listing what opacus cannot train privately (e.g. BatchNorm)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise DiffauditError("this UNet cannot be trained with DP-SGD: " + "; ".join(str(e) for e in errors[:5]))


def has_attention(model: torch.nn.Module) -> bool:
    """Whether the model holds a diffusers attention block (see the opacus hook-mode problem above)."""
    return any(type(m).__name__ == "Attention" for m in model.modules())


def grad_sample_mode(model: torch.nn.Module, mode: str = "auto") -> str:
    """The per-sample gradient mode for ``model``: ``auto`` -> functorch with attention, else hooks;
    ``hooks`` with attention is refused (:class:`DiffauditError`, see the module docstring)."""
    used = ("functorch" if has_attention(model) else "hooks") if mode == "auto" else mode
    if used == "hooks" and has_attention(model):
        raise DiffauditError("--dp-grad-sample-mode hooks gives wrong (zero) per-example gradients for the convolutions "
                             "after a diffusers attention block, which this UNet has (opacus 1.6); use auto or functorch")
    return used


def wrap_model(model: torch.nn.Module, mode: str = "auto"):
    """``GradSampleModule`` over ``model`` (loss reduction mean); returns (wrapped, mode used)."""
    from opacus import GradSampleModule

    used = grad_sample_mode(model, mode)
    return GradSampleModule(model, loss_reduction="mean", force_functorch=(used == "functorch")), used


def check_grad_samples(model: torch.nn.Module, mode: str, x: torch.Tensor, t: torch.Tensor, *, atol: float = 1e-5) -> float:
    """Largest absolute difference between opacus' per-sample gradients and per-example backward passes.

    Runs on a deep copy of ``model``; ``x`` (B, C, H, W), ``t`` (B,) long. A correct mode gives ~1e-7.
    """
    import copy

    ref_model = copy.deepcopy(model)
    refs = []
    for i in range(len(x)):
        ref_model.zero_grad(set_to_none=True)
        ref_model(x[i:i + 1], t[i:i + 1]).sample.pow(2).mean().backward()
        refs.append([p.grad.detach().clone() for p in ref_model.parameters()])
    probe = copy.deepcopy(model)
    gsm, _ = wrap_model(probe, mode)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        gsm(x, t).sample.pow(2).flatten(1).mean(1).mean().backward()
    err = 0.0
    for j, p in enumerate(probe.parameters()):
        for i in range(len(x)):
            err = max(err, float((p.grad_sample[i] - refs[i][j]).abs().max()))
    gsm._close()
    return err


def resolve_noise(dp: DPConfig, *, sample_rate: float, steps: int, delta: float) -> float:
    """σ: the configured one, or the smallest reaching ``target_epsilon`` after ``steps`` (opacus search).

    Raises :class:`DiffauditError` when no σ up to opacus' limit (1e6) reaches ``target_epsilon``.
    """
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

    search = dict(target_epsilon=dp.target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                  epsilon_tolerance=0.01)
    try:
        with _rdp_order_unsaid():
            if dp.accountant == "prv":
                return _prv_noise(search, _prv_upper_sigma(search, MAX_SIGMA))
            return float(get_noise_multiplier(**search, accountant=dp.accountant))
    except ValueError as exc:
        if "too low" not in str(exc):
            raise
        raise DiffauditError(
            f"--dp-epsilon {dp.target_epsilon:g} cannot be reached at delta {delta:.3g} after {steps} steps with sampling "
            f"rate q = {sample_rate:.3g} (--batch-size / training examples): even noise multiplier sigma = {MAX_SIGMA:g} "
            f"({dp.accountant} accountant) gives a larger epsilon. Raise --dp-epsilon, or lower the privacy cost: fewer "
            "--steps, more training data or a smaller --batch-size (a smaller q), or a larger --dp-delta"
        ) from None


def _prv_upper_sigma(search: dict, max_sigma: float) -> float:
    """A σ whose ε reaches the target under PRV: the one RDP needs (RDP being the looser bound), or, where RDP
    reaches no such ε (its bound has a floor above small targets: its largest order binds), the first power
    of 2 whose PRV ε does. Raises opacus' ValueError ("too low") when none up to ``max_sigma`` does."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(**search, accountant="rdp"))
    except ValueError as exc:
        if "too low" not in str(exc):
            raise
    kw = dict(sample_rate=search["sample_rate"], steps=search["steps"], delta=search["target_delta"])
    sigma = 1.0
    while accounted_epsilon(noise_multiplier=sigma, accountant="prv", **kw).value > search["target_epsilon"]:
        sigma *= 2
        if sigma > max_sigma:
            raise ValueError(f"the privacy budget is too low: no sigma up to {max_sigma:g} reaches it under PRV")
    return sigma


def _prv_noise(search: dict, sigma_rdp: float) -> float:
    """σ for a target ε under the PRV accountant (``search``: opacus' ``get_noise_multiplier`` arguments;
    ``sigma_rdp``: the σ RDP needs, an upper bound, RDP being the looser bound).

    opacus' PRV search evaluates PRV at σ down to about half its answer, which is at most ``sigma_rdp``;
    where the mesh at a quarter of ``sigma_rdp`` would exceed :data:`PRV_MAX_POINTS`, or the search
    fails (:data:`PRV_FAILURES`), σ is instead the smallest (to 1 %) whose recorded ε
    (:func:`accounted_epsilon`: PRV, or RDP where PRV gives none) reaches the target, found by bisection
    below ``sigma_rdp``; so the ε a run records never exceeds the target."""
    from opacus.accountants.utils import get_noise_multiplier

    kw = dict(sample_rate=search["sample_rate"], steps=search["steps"], delta=search["target_delta"])
    points = prv_mesh_points(noise_multiplier=sigma_rdp / 4, **kw)
    if points is None or points <= PRV_MAX_POINTS:
        try:
            return float(get_noise_multiplier(**search, accountant="prv"))
        except PRV_FAILURES as exc:
            if isinstance(exc, ValueError) and "too low" in str(exc):
                raise
    lo, hi = 0.0, float(sigma_rdp)
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if accounted_epsilon(noise_multiplier=mid, accountant="prv", **kw).value <= search["target_epsilon"]:
            hi = mid
        else:
            lo = mid
    return hi


def epsilon_after(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε after ``steps`` DP-SGD steps at (σ, q), for δ (``inf`` without noise, 0 before any step).

    The accountant's raw answer: PRV may return ``inf`` or raise at large ε (:func:`accounted_epsilon`
    is what a run records).
    """
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with _rdp_order_unsaid():
        return float(acc.get_epsilon(delta=delta))


@contextlib.contextmanager
def _rdp_order_unsaid() -> Iterator[None]:
    """Without opacus' "Optimal order is the largest alpha" (much noise) or "... smallest alpha" (little
    noise, a large ε) warning: advice to widen RDP's orders, which no option here sets; the ε is then a
    valid, looser bound (the PRV accountant is the tighter one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha", category=UserWarning)
        yield


#: Largest discretisation mesh (points) the PRV accountant is run on. opacus 1.6 needs about 160 bytes
#: per point at its peak (measured: 4.6M points 0.7 GiB, 9.4M points 1.5 GiB), so 2^25 points is about
#: 5 GiB: enough for σ = 0.5, q = 0.01, 50,000 steps (26M points); a larger mesh (σ = 0.05, q = 1/6,
#: 1,000 steps: 3.5G points, 26 GiB) could take the machine's memory before any MemoryError.
PRV_MAX_POINTS = 2**25
PRV_BYTES_PER_POINT = 160

#: What opacus' PRV accountant raises when its numerics fail (MemoryError: a mesh too large to allocate).
PRV_FAILURES = (MemoryError, ArithmeticError, ValueError, RuntimeError)


@dataclass(frozen=True)
class Epsilon:
    """An ε and how it was obtained.

    Attributes:
        value: ε (``inf`` without noise, 0 before any step).
        accountant: the accountant that produced it (``rdp`` or ``prv``).
        fallback_reason: why RDP replaced the configured PRV accountant; None when it did not.
    """

    value: float
    accountant: str
    fallback_reason: str | None = None


@_rdp_order_unsaid()  # PRV sizes its domain with RDP
def prv_mesh_points(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> int | None:
    """Points of the mesh opacus' PRV accountant would discretise (σ, q, steps) on at its default errors
    (ε error 0.01, δ error δ / 1000), found cheaply (RDP bounds only), so an impossible mesh is refused
    before it is allocated. None when this opacus version does not expose the domain computation."""
    try:
        from opacus.accountants import PRVAccountant
        from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

        prv = PoissonSubsampledGaussianPRV(float(sample_rate), float(noise_multiplier))
        domain = PRVAccountant()._get_domain(prvs=[prv], num_self_compositions=[int(steps)], eps_error=0.01,
                                             delta_error=delta / 1000)
    except (ImportError, AttributeError, TypeError):
        return None
    return int(domain.size)


@_rdp_order_unsaid()  # PRV sizes its domain with RDP
def _prv_or_reason(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> tuple[float | None, str | None]:
    """(PRV ε, None), or (None, why the PRV accountant gives no usable ε here): a mesh over
    :data:`PRV_MAX_POINTS`, an exception from its numerics (:data:`PRV_FAILURES`), a non-finite ε."""
    kw = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    try:
        points = prv_mesh_points(**kw)
        if points is not None and points > PRV_MAX_POINTS:
            gib = points * PRV_BYTES_PER_POINT / 2**30
            return None, (f"PRV accountant not run: its mesh would hold {points:,} points (about {gib:,.0f} GiB; "
                          f"limit {PRV_MAX_POINTS:,}), as happens at a very large epsilon")
        eps = epsilon_after(**kw, accountant="prv")
    except PRV_FAILURES as exc:
        detail = str(exc).strip()[:160] or "no message"
        return None, f"PRV accountant failed: {type(exc).__name__}: {detail}"
    if not math.isfinite(eps):
        return None, f"PRV accountant returned a non-finite epsilon ({eps}): its numerics fail at a very large epsilon"
    return eps, None


def accounted_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                      accountant: str = "rdp") -> Epsilon:
    """The ε a run records: the configured accountant's, or RDP's (a valid, looser bound) where PRV
    gives none (:func:`_prv_or_reason`), so a run never crashes or records "infinite" for a PRV failure.

    Without noise or before any step no accountant is asked (``inf`` / 0, :func:`epsilon_after`).
    """
    kw = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    if accountant != "prv" or steps <= 0 or noise_multiplier <= 0:
        return Epsilon(epsilon_after(**kw, accountant=accountant), accountant)
    eps, reason = _prv_or_reason(**kw)
    if reason is None:
        return Epsilon(eps, "prv")
    return Epsilon(epsilon_after(**kw, accountant="rdp"), "rdp", reason)


def progress_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε for a loss-log line: RDP's (milliseconds at any step count; PRV's cost grows with the steps and
    it is recomputed from scratch, opacus keeping no state between calls)."""
    return epsilon_after(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta,
                         accountant="rdp")


def dp_note(noise_multiplier: float, epsilon: float, poisson_sampling: bool, sample_rate: float | None = None) -> str:
    """The ``note`` of ``dp.json``: "not private" only without noise (σ = 0); an infinite ε with noise is
    an accountant's limit, not the absence of privacy noise. At ``sample_rate`` 1 (every example in every
    batch) nothing is subsampled: the Gaussian mechanism's ε is spent in full at every step."""
    if noise_multiplier <= 0:
        return "not private: no noise (epsilon is infinite)"
    if not math.isfinite(epsilon):
        return "noise added, but no accountant bounds epsilon at this noise level (epsilon not finite)"
    if not poisson_sampling:
        return "accounting assumes Poisson sampling; fixed shuffled batches are not formally covered"
    if sample_rate is not None and sample_rate >= 1:
        return ("(epsilon, delta)-DP per training example, Gaussian mechanism on every example at every step (sampling "
                "rate 1: no amplification by subsampling)")
    return "(epsilon, delta)-DP per training example, Poisson-subsampled Gaussian mechanism"


def average_grad_samples(params, n_examples: int, k: int) -> None:
    """Per-example gradient = mean of its ``k`` per-draw gradients (rows e·k .. e·k + k − 1), in place.

    ``p.grad_sample`` goes from (n_examples·k, *p.shape) to (n_examples, *p.shape), so opacus clips
    and counts examples, not draws (augmentation multiplicity, De et al. 2022).
    """
    for p in params:
        p.grad_sample = p.grad_sample.reshape(n_examples, k, *p.shape).mean(1)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _check_finite(window_sum: float, model: torch.nn.Module, step: int) -> None:
    """:class:`NonFiniteError` if the losses summed since the last log line or the weights are not finite."""
    check_finite_state(window_sum, model, step, "DP-SGD training", "lower --lr or --dp-max-grad-norm")


def _warn_weak_settings(batch_size: int, n: int, noise_multiplier: float, delta: float) -> None:
    """Warn of DP-SGD settings that keep the guarantee but weaken it: a batch of all ``n`` examples
    (sampling rate q = 1, no amplification by subsampling) and a δ not below 1/n; and settings that give
    none: no noise (σ = 0, per-example clipping alone: ε is infinite)."""
    if noise_multiplier == 0:  # once for a command's every model (each shadow of `shadows` trains with it)
        warning_once("train", "(DP-SGD) --dp-noise 0 adds no noise: the run clips each example's gradient and nothing "
                     "more, so the model has no privacy guarantee (epsilon is infinite); it compares DP-SGD's clipping "
                     "with plain training, it is not a defence")
        return
    if batch_size == n and noise_multiplier != 0:
        warning_line("train", f"(DP-SGD) --batch-size {batch_size} takes all {n} training examples every "
                     "step (sampling rate q = 1), so subsampling amplifies no privacy: every step spends its full "
                     "privacy cost; a --batch-size well below the training set buys a lower epsilon per step")
    if delta >= 1.0 / n:  # (ε, δ) allows a δ chance of anything: here as likely as naming one example whole
        warning_line("train", f"(DP-SGD) --dp-delta {delta:g} is not below 1/N = {1.0 / n:.3g} for the {n} training "
                     "examples: a mechanism that publishes one whole training example at random meets it, so the epsilon "
                     f"promises little; leave --dp-delta out for 1/(10 N) = {1.0 / (10 * n):.3g}, or give one well below 1/N")


def batch_rows(step: int, cfg: TrainConfig, dp: DPConfig, n: int, q: float) -> np.ndarray:
    """Rows (positions among the n training examples) of DP-SGD batch ``step``, distinct, int64.

    Poisson: each row independently with probability q, seeded by (seed, "dp-poisson", step), so the
    size varies (may be 0). Fixed: ``cfg.batch_size`` distinct rows (:func:`epoch_batch_positions`).
    Either way a pure function of (seed, step): a resumed run draws the same batches.
    """
    if not dp.poisson_sampling:
        return epoch_batch_positions(step, cfg.batch_size, n, cfg.seed)
    return np.flatnonzero(numpy_rng(derive_seed(cfg.seed, "dp-poisson", step)).random(n) < q).astype(np.int64)


def train_dp(
    dataset: ImageDataset,
    config: TrainConfig,
    dp: DPConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    train_indices: np.ndarray | list[int] | None = None,
    repeats: dict[int, int] | None = None,
    data_record: dict[str, Any] | None = None,
    fresh: bool = False,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Path:
    """Train a DDPM with DP-SGD on ``dataset[train_indices]`` and write a run directory (module docstring).

    ``train_indices``: distinct dataset indices, int (n,) (the shared check
    :func:`diffaudit.models.training.check_train_indices`: no boolean mask, no repeats; an example
    listed twice would be one example drawn twice, while the accountant counts it once).
    ``repeats``: {dataset index: k} as :func:`diffaudit.models.training.train` takes it, but here each of
    the k copies is a training example of its own: sampled, clipped and accounted on its own, so the
    accountant's N counts every copy (``dp.json``'s ``n_train``; ``result.json``'s ``n_train`` counts
    distinct images, ``n_stream`` the copies). That is what duplicated data is, and the guarantee
    for an image present k times is a group's of k (up to kε), which is what canaries measure.
    ``config.grad_clip`` (the plain run's clipping of the batch gradient's global norm) is not used:
    per-example clipping to ``dp.max_grad_norm`` replaces it; ``config.bf16``/``compile`` are not used
    either (per-sample gradients in float32). Under the same seeds, with σ = 0, C = inf,
    ``poisson_sampling=False``, K = 1 and ``batch_size`` dividing the number of training examples, the
    updates equal those of :func:`diffaudit.models.training.train` (up to float summation order) only
    when the plain run's ``grad_clip`` never binds (e.g. ``grad_clip=1e9``); with its default 1.0 the
    plain run clips the batch gradient and the two differ.
    The loss log holds the mean loss over the non-empty batches of each ``log_every`` window; the loss
    and the weights are checked finite at every log line and before every checkpoint
    (:class:`NonFiniteError`), so non-finite weights are never saved. torch's global RNG is left untouched.
    ``upgrade``: how the run folder reads settings an earlier version recorded (:meth:`RunPlan.open`).
    """
    config.validate()
    dp.validate()
    device = torch.device(device)
    checked = check_train_indices(train_indices, len(dataset))
    n = len(expand_repeats(np.arange(len(dataset), dtype=np.int64) if checked is None else checked, repeats))
    if config.batch_size > n:
        raise DiffauditError(f"--batch-size {config.batch_size} exceeds the {n} training examples: a DP-SGD batch holds "
                             "each example at most once (sampling rate q = B / N at most 1); lower --batch-size")
    q = config.batch_size / n
    delta = dp.delta if dp.delta is not None else 1.0 / (10 * n)
    sigma = resolve_noise(dp, sample_rate=q, steps=config.steps, delta=delta)
    dp_settings = {**dataclasses.asdict(dp), "max_grad_norm": _finite(dp.max_grad_norm), "delta": delta,
                   "noise_multiplier_used": sigma, "sample_rate": q}
    plan = plan_run(dataset, config, train_indices=train_indices, repeats=repeats, data_record=data_record,
                    extra={"dp": dp_settings})
    idx, ucfg, num_classes, settings = plan.indices, plan.unet_config, plan.num_classes, plan.settings
    examples = plan.stream  # the dataset index of each DP example: each copy of a repeated image one (n,)
    H, W, C = dataset.image_shape
    model = init_model(config, ucfg)  # same initialisation as the plain run
    check_model(model)  # what opacus cannot train, and hooks with attention: refused before the folder exists
    grad_sample_mode(model, dp.grad_sample_mode)
    run = plan.open(out_dir, fresh=fresh, upgrade=upgrade)
    if is_finished(run):
        stage_line(f"train (DP-SGD): {run} is already finished; nothing to do")
        drop_checkpoints(run)  # a run killed between its result and this cleanup
        return run
    _warn_weak_settings(config.batch_size, n, dp.noise_multiplier, delta)  # once the run folder took the settings
    folder = FolderIdentity.of(run)  # checked before each write: a run moved meanwhile is not made again

    model.to(device).train()
    ema = Ema(model, config.ema_decay)
    gsm, mode = wrap_model(model, dp.grad_sample_mode)
    from opacus.optimizers import DPOptimizer

    clip = dp.max_grad_norm if math.isfinite(dp.max_grad_norm) else 1e30  # σ = 0 here: noise std 0 · 1e30 = 0
    opt = DPOptimizer(torch.optim.Adam(model.parameters(), lr=config.lr), noise_multiplier=sigma, max_grad_norm=clip,
                      expected_batch_size=config.batch_size, loss_reduction="mean")
    start, log, (window_sum, window_n) = resume(run, model, ema, opt, device, label="train (DP-SGD)")

    scheduler = make_scheduler()
    a_bar = alphas_cumprod_of(scheduler).to(device=device, dtype=torch.float32)
    T = scheduler.config.num_train_timesteps
    data_x = to_model_space(dataset.images[examples])  # (n, C, H, W) in [-1, 1]: the training examples only
    labels = None if num_classes is None else torch.as_tensor(np.asarray(dataset.labels)[examples], dtype=torch.long)  # (n,)
    K = dp.augmentations
    params = [p for p in model.parameters() if p.requires_grad]
    every = checkpoint_interval(config)
    final_epsilon = functools.cache(lambda: accounted_epsilon(noise_multiplier=sigma, sample_rate=q, steps=config.steps,
                                                              delta=delta, accountant=dp.accountant))  # computed once
    t0, seen = time.perf_counter(), 0
    with progress_bar("train (DP-SGD)", config.steps, unit="step", completed=start) as bar, warnings.catch_warnings():
        # opacus' hooks fire on module outputs (the images need no gradient): expected, not a problem
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for step in range(start, config.steps):
            ex = batch_rows(step, config, dp, n, q)  # rows of data_x (training examples examples[ex])
            rows = np.repeat(ex, K)  # K consecutive rows per example
            g = torch_generator(derive_seed(config.seed, "train-step", step))
            t = torch.randint(0, T, (len(rows),), generator=g)
            eps = torch.randn((len(rows), C, H, W), generator=g)
            flip = torch.rand(len(rows), generator=g) < 0.5
            for group in opt.param_groups:
                group["lr"] = lr_at(step, config)
            opt.zero_grad(set_to_none=True)
            # opacus draws the noise on the gradients' device, where a generator must live (a CPU one is
            # refused for CUDA draws); the noise is seeded per step either way, so a resumed run draws the same
            opt.generator = torch_generator(derive_seed(config.seed, "dp-noise", step), device=params[0].device)
            if len(rows):
                x0 = data_x[rows]
                if config.flip:
                    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
                x0, t, eps = x0.to(device), t.to(device), eps.to(device)
                ab = a_bar[t][:, None, None, None]
                x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
                lab = None if labels is None else labels[rows].to(device)
                pred = gsm(x_t, t, class_labels=lab).sample
                loss = torch.nn.functional.mse_loss(pred.float(), eps)
                loss.backward()
                window_sum += float(loss.item())  # the mean over the window's non-empty batches is logged
                window_n += 1
                if K > 1:
                    average_grad_samples(params, len(ex), K)
            else:  # an empty Poisson batch: the step is pure noise
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            opt.step()
            ema.update(model, step)
            seen += len(ex)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                _check_finite(window_sum, model, done)
                lv = window_sum / window_n if window_n else None  # None: every batch of the window was empty
                window_sum, window_n = 0.0, 0
                if done == config.steps:  # the last line carries the recorded ε (the configured accountant's)
                    final = final_epsilon()
                    e, e_acc = final.value, final.accountant
                else:
                    e, e_acc = progress_epsilon(noise_multiplier=sigma, sample_rate=q, steps=done, delta=delta), "rdp"
                log.append({"step": done, "loss": lv, "lr": lr_at(step, config),
                            "epsilon": _finite(e), "epsilon_accountant": e_acc, "batch": int(len(ex))})
                bar.advance(0, loss=math.nan if lv is None else lv, eps=e)
            bar.advance(1)
            fault_point("train.step")
            if done % every == 0 and done < config.steps:
                _check_finite(window_sum, model, done)  # a checkpoint never holds non-finite weights
                folder.check()
                save_checkpoint(run, done, model, ema, opt, log, (window_sum, window_n))
                fault_point("train.checkpoint")
    elapsed = time.perf_counter() - t0
    gsm._close()

    folder.check()
    final_model = build_unet_untouched_rng(ucfg)
    final_model.load_state_dict({k: v.detach().cpu() for k, v in ema.shadow.items()})
    save_pretrained_atomic(final_model, run / "unet")
    save_pretrained_atomic(scheduler, run / "scheduler")
    write_bytes_atomic(run / "loss_log.jsonl", "".join(json.dumps(r) + "\n" for r in log).encode())
    final = final_epsilon()
    epsilon = final.value
    dp_record = {
        "epsilon": _finite(epsilon), "delta": delta, "noise_multiplier": sigma, "sample_rate": q, "steps": config.steps,
        "max_grad_norm": _finite(dp.max_grad_norm), "accountant": dp.accountant, "accountant_used": final.accountant,
        "fallback_reason": final.fallback_reason, "poisson_sampling": dp.poisson_sampling,
        "augmentations": K, "grad_sample_mode": mode, "n_train": n, "target_epsilon": dp.target_epsilon,
        "note": dp_note(sigma, epsilon, dp.poisson_sampling, q),
        # The batches and the noise are drawn from the run's seed so that a killed run resumes to the same
        # weights. Whoever knows the seed can regenerate the noise, so the guarantee holds against an
        # adversary who sees the released weights, not this folder: the audit studies DP-SGD's effect on
        # memorization; it does not produce models to release as private.
        "noise_secrecy": "noise and batches derive from the recorded seed: keep this folder private, release only the weights",
    }
    write_json_atomic(run / "dp.json", dp_record)
    write_json_atomic(run / "timing.json", {"seconds": elapsed, "images_per_second": seen / max(elapsed, 1e-9),
                                            "steps_this_session": config.steps - start, "device": str(device)})
    finals = [r["loss"] for r in log if r.get("loss") is not None]
    write_result(run / "result.json", "train", settings, {"seed": config.seed}, steps=config.steps,
                 n_parameters=count_parameters(final_model), n_train=len(idx), n_stream=n,
                 training_digests=training_digests(dataset, idx),
                 final_loss=finals[-1] if finals else None, dp=dp_record)
    drop_checkpoints(run)
    caveat = "" if dp.poisson_sampling else " (accounted as if Poisson-sampled; the batches were not)"
    if final.fallback_reason:
        caveat += f" (RDP bound: {final.fallback_reason})"
    copies = f" ({n} with copies, each an example)" if n != len(idx) else ""
    stage_line(f"train (DP-SGD): {config.steps} steps on {len(idx)} images{copies}, epsilon {epsilon:.3g} at delta {delta:.2g}{caveat} "
               f"(sigma {sigma:.3g}, C {dp.max_grad_norm}, q {q:.3g}) -> {run}")
    return run


def dp_trainer(dp: DPConfig) -> Callable[..., Path]:
    """A trainer called as :func:`diffaudit.models.training.train` is (``trainer(dataset, config, out_dir,
    **options)``) that trains with DP-SGD under ``dp`` (:func:`train_dp`): how ``diffaudit shadows`` trains
    the shadows of a DP-SGD target (:func:`diffaudit.attacks.membership.shadows.train_shadows`'s ``trainer``).
    Picklable, so shadow worker processes take it."""
    return functools.partial(_train_dp_with, dp=dp)


def _train_dp_with(dataset: ImageDataset, config: TrainConfig, out_dir: str | Path, *, dp: DPConfig, **options: Any) -> Path:
    """:func:`train_dp` with ``dp`` as a keyword (top level, so :func:`dp_trainer`'s partial pickles)."""
    return train_dp(dataset, config, dp, out_dir, **options)


# The settings flags are absent from the namespace unless given (argparse.SUPPRESS; the switch: False), so a
# flag the user gave is told apart from one left out, even one given with its default value; DPConfig
# supplies the defaults.
_DP_SETTING_FLAGS = {"dp_delta": "--dp-delta", "dp_max_grad_norm": "--dp-max-grad-norm", "dp_no_poisson": "--dp-no-poisson",
                     "dp_accountant": "--dp-accountant", "dp_augmentations": "--dp-augmentations",
                     "dp_grad_sample_mode": "--dp-grad-sample-mode"}


#: Entry of a run's ``dp`` settings (:class:`DPConfig`'s fields) -> the flag that sets it, for a refusal to resume;
#: ``poisson_sampling`` (``--dp-no-poisson`` says the opposite) and ``delta`` (derived unless ``--dp-delta`` is given)
#: are named by their key.
DP_SETTING_NAMES = {"noise_multiplier": "--dp-noise", "target_epsilon": "--dp-epsilon",
                    **{dest.removeprefix("dp_"): flag for dest, flag in _DP_SETTING_FLAGS.items()
                       if dest not in ("dp_delta", "dp_no_poisson")}}


def add_dp_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dp-*`` flags (for ``diffaudit train``): ``--dp-noise`` or ``--dp-epsilon`` switches DP-SGD on;
    the other ``--dp-*`` flags without one of them are an error (:func:`dp_config_from_args`)."""
    d = DPConfig()
    g = parser.add_argument_group("DP-SGD (opacus); the other --dp-* flags need --dp-noise or --dp-epsilon")
    g.add_argument("--dp-noise", type=float, default=None, help="DP-SGD noise multiplier sigma (turns DP-SGD on)")
    g.add_argument("--dp-epsilon", type=float, default=None, help="target epsilon after --steps (turns DP-SGD on; sigma solved)")
    g.add_argument("--dp-delta", type=float, default=argparse.SUPPRESS, help="delta (default 1/(10 N))")
    g.add_argument("--dp-max-grad-norm", type=float, default=argparse.SUPPRESS,
                   help=f"per-example clipping norm C (default {d.max_grad_norm:g}; inf: none, only with --dp-noise 0)")
    g.add_argument("--dp-no-poisson", action="store_true",
                   help="fixed-size batches of distinct examples (per-epoch permutations) instead of Poisson sampling")
    g.add_argument("--dp-accountant", choices=ACCOUNTANTS, default=argparse.SUPPRESS, help=f"privacy accountant (default {d.accountant})")
    g.add_argument("--dp-augmentations", type=int, default=argparse.SUPPRESS,
                   help=f"(t, noise) draws per example per step, averaged before clipping (default {d.augmentations})")
    g.add_argument("--dp-grad-sample-mode", choices=GRAD_SAMPLE_MODES, default=argparse.SUPPRESS,
                   help=f"opacus per-sample gradient mode (default {d.grad_sample_mode})")


def dp_flags_like(record: Any) -> list[str] | None:
    """The ``--dp-*`` flags that train a model with the DP-SGD of the run whose ``train_config.json`` holds
    ``record`` (its ``dp``): the noise multiplier it trained with (``noise_multiplier_used``: solved for its
    --dp-epsilon, so a model on another number of examples adds the same noise per step, though its epsilon
    differs), its clipping norm, batching, augmentations, per-sample gradient mode and accountant. How
    ``audit --model`` trains the shadows of a DP-SGD target. None when ``record`` holds no usable noise
    multiplier (not a DP-SGD run's, or one this version cannot read)."""
    if not isinstance(record, dict):
        return None
    sigma = record.get("noise_multiplier_used", record.get("noise_multiplier"))
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < 1e4:
        return None
    d = DPConfig()
    clip = record.get("max_grad_norm", d.max_grad_norm)
    flags = ["--dp-noise", repr(float(sigma)),
             "--dp-max-grad-norm", "inf" if clip is None else repr(float(clip))]  # recorded None: no clipping
    if record.get("poisson_sampling") is False:
        flags.append("--dp-no-poisson")
    for key, flag in (("augmentations", "--dp-augmentations"), ("grad_sample_mode", "--dp-grad-sample-mode"),
                      ("accountant", "--dp-accountant")):
        if key in record and record[key] != getattr(d, key):
            flags += [flag, str(record[key])]
    return flags


def dp_config_from_args(args: argparse.Namespace) -> DPConfig | None:
    """The :class:`DPConfig` of ``add_dp_arguments`` flags, or None when DP-SGD is off.

    Raises :class:`DiffauditError` when a ``--dp-*`` setting is given without ``--dp-noise`` or
    ``--dp-epsilon`` (it would otherwise train a non-private model without a word).
    """
    given = [flag for name, flag in _DP_SETTING_FLAGS.items()
             if getattr(args, name, None) is not None and getattr(args, name) is not False]  # 0 counts as given
    if getattr(args, "dp_noise", None) is None and getattr(args, "dp_epsilon", None) is None:
        if given:
            raise DiffauditError(f"{', '.join(given)} given without --dp-noise or --dp-epsilon: DP-SGD is off, so "
                                 f"{'it' if len(given) == 1 else 'they'} would be ignored and the model trained without "
                                 "privacy. Add --dp-noise SIGMA or --dp-epsilon EPS to train with DP-SGD, "
                                 "or drop the --dp-* flags")
        return None
    d = DPConfig()

    def pick(name: str, default):
        value = getattr(args, name, None)
        return default if value is None else value

    cfg = DPConfig(noise_multiplier=args.dp_noise, target_epsilon=args.dp_epsilon, delta=getattr(args, "dp_delta", None),
                   max_grad_norm=pick("dp_max_grad_norm", d.max_grad_norm),
                   poisson_sampling=not getattr(args, "dp_no_poisson", False),
                   accountant=pick("dp_accountant", d.accountant), augmentations=pick("dp_augmentations", d.augmentations),
                   grad_sample_mode=pick("dp_grad_sample_mode", d.grad_sample_mode))
    cfg.validate()
    return cfg
