"""The canary experiment end to end: insert, train, measure exposure, generate, verify.

Stages (each resumable inside ``out``; a finished stage is never redone):

1. ``canaries.json`` (the membership record: every canary's key, index, repeats, source, label; the
   references) and ``canaries.npz`` (inserted canaries and references R, uint8). A record an earlier
   version wrote, with seeded labels where held-out canaries now take the pool's, resumes with them
   (:func:`~diffaudit.defenses.canaries.earlier_record`).
2. ``model/``: a diffaudit run directory from :func:`diffaudit.models.training.train` on the training
   set plus the canaries, each repeated as planned (``model/train_ids.json`` records the repeats). With
   DP-SGD (:func:`diffaudit.defenses.dp_training.train_dp`, its ε in ``model/dp.json``) each copy of
   a canary is a training example of its own: DP-SGD bounds what one example reveals, so the guarantee
   for a canary inserted k times is that of a group of k (up to kε).
3. ``losses.npz``: per-example loss (:func:`diffaudit.models.loss.per_example_loss`, t = 100 by
   default, ``n_draws`` noise draws averaged) of every canary and reference -> exposure.
4. ``samples/chunk-NNNNNN.npy``: ``n_samples`` generations (DDIM, seeds ``generation_seed(seed, 0, i)``),
   verified against the training set with :func:`diffaudit.attacks.extraction.verification.verify`
   (paper §5.1 rule ``ratio`` by default): a canary is extracted when a generation extracts it. The
   references are checked the same way, as if they had been inserted too (the generations verified
   against the training set, the canaries and the references): the baseline of what images never
   trained on get (``extracted``, ``nearest_l2``, the curve's ``repeats: 0`` row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import load_npy, read_json, save_npy_atomic, save_npz_atomic, write_json_atomic
from diffaudit.core.progress import progress_bar, stage_line
from diffaudit.core.seeds import derive_seed, generation_seed, numpy_rng
from diffaudit.data.dataset import ImageDataset
from diffaudit.defenses.canaries import (
    CanaryPlan,
    earlier_record,
    exposure,
    exposure_curve,
    exposure_gaussian,
    insert_canaries,
    max_exposure,
    reference_row,
)
from diffaudit.models.loss import MAX_NOISE_DRAWS

SAMPLE_CHUNK = 1024


@dataclass
class CanaryEval:
    """How canaries are measured after training.

    Attributes:
        timestep: t of the loss (paper: best in [50, 300]; 100 by default).
        n_draws: noise draws averaged per loss (lower variance exposure).
        noise_seed: seed of the loss noise (same for canaries and references).
        n_samples: generations for the extraction check (0 skips it).
        sample_steps: DDIM steps.
        sample_seed: seed of the generations.
        rule: verification rule, ``ratio`` (paper §5.1, unconditional) or ``l2`` (ℓ2 ≤ delta); also what
            calls a ``heldout`` pool image a near-duplicate of a training image (:meth:`copy_rule`).
        delta: δ of the ``l2`` rule, in (0, 1].
        micro_batch: images per sampler call.
    """

    timestep: int = 100
    n_draws: int = 4
    noise_seed: int = 0
    n_samples: int = 256
    sample_steps: int = 20
    sample_seed: int = 0
    rule: str = "ratio"
    delta: float = 0.15
    micro_batch: int = 64

    def validate(self, *, n_train: int | None = None) -> "CanaryEval":
        """Raise :class:`DiffauditError` naming the option that cannot work; returns self.

        Checked before anything is trained (the loss, the sampler and the verification would otherwise
        refuse them only after the model exists): 0 ≤ timestep < T and 1 ≤ sample_steps ≤ T, T the
        schedule training uses (:func:`training_timesteps`); n_draws, micro_batch ≥ 1; n_samples ≥ 0;
        the verification rule and δ (:class:`VerifySettings`); with ``n_train`` (training images with the
        canaries) and generations asked for, that the ``ratio`` rule has a neighbourhood of at least 2.
        """
        T = training_timesteps()
        if not 0 <= self.timestep < T:
            raise DiffauditError(f"--timestep must lie in [0, {T - 1}] (the schedule has T = {T} steps); got {self.timestep}")
        if not 1 <= self.n_draws <= MAX_NOISE_DRAWS:
            raise DiffauditError(f"--n-draws must lie in [1, {MAX_NOISE_DRAWS:,}] (noise draws averaged per loss); got "
                                 f"{self.n_draws}")
        if self.n_samples < 0:
            raise DiffauditError(f"--n-samples must be at least 0 (0: no extraction check); got {self.n_samples}")
        if not 1 <= self.sample_steps <= T:
            raise DiffauditError(f"--sample-steps must lie in [1, {T}]; got {self.sample_steps}")
        if self.micro_batch < 1:
            raise DiffauditError(f"micro_batch must be at least 1; got {self.micro_batch}")
        verify = self.copy_rule()
        if n_train is not None and self.n_samples > 0:
            verify.neighbourhood(n_train)
        return self

    def copy_rule(self):
        """The verification rule (``rule``, ``delta``) as validated :class:`VerifySettings`: what calls a
        generation a copy of a training image, and (:func:`~diffaudit.defenses.canaries.make_canaries`
        ``copy_rule``) a ``heldout`` pool image a near-duplicate of one."""
        from diffaudit.attacks.extraction.verification import VerifySettings

        return VerifySettings(rule=self.rule, delta=self.delta).validate()


def training_timesteps() -> int:
    """T of the noise schedule :func:`diffaudit.models.training.train` gives the canary model."""
    from diffaudit.models.scheduler import make_scheduler

    return int(make_scheduler().config.num_train_timesteps)


def _labels_for(plan: CanaryPlan, record: dict[str, Any], dataset: ImageDataset) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Labels (int64 (n_canaries,), (n_reference,)) the loss conditions on, from the record: the canaries'
    as trained, the references' where recorded (a labelled pool), else drawn with the plan's seed (as
    earlier versions did); (None, None) for data without labels."""
    if dataset.labels is None:
        return None, None
    n_classes = int(dataset.labels.max()) + 1
    can = np.asarray([c["label"] for c in record["canaries"]], dtype=np.int64)
    refs = record["reference"]
    if refs and all("label" in r for r in refs):
        return can, np.asarray([r["label"] for r in refs], dtype=np.int64)
    ref = numpy_rng(derive_seed(plan.seed, "reference-labels")).integers(0, n_classes, size=len(plan.reference_keys))
    return can, ref.astype(np.int64)


def _membership(dataset: ImageDataset, plan: CanaryPlan, out: Path) -> tuple[ImageDataset, dict[int, int], dict[str, Any]]:
    """:func:`insert_canaries`, and the record saved in ``out`` (written when there is none): the same
    record, or one an earlier version wrote for this plan (:func:`earlier_record`: seeded labels where
    held-out canaries now take the pool's), which resumes as it was trained. Raises
    :class:`DiffauditError` for a record of other canaries."""
    combined, repeats, record = insert_canaries(dataset, plan)
    path = out / "canaries.json"
    if not path.exists():
        save_npz_atomic(out / "canaries.npz", canaries=plan.images, reference=plan.reference,
                        keys=np.asarray(plan.keys, dtype=str), reference_keys=np.asarray(plan.reference_keys, dtype=str))
        write_json_atomic(path, record)
        return combined, repeats, record
    saved = read_json(path)
    if saved == record:
        return combined, repeats, record
    older = earlier_record(dataset, plan)
    if saved == older[2]:
        stage_line(f"canaries: {path} predates held-out canaries taking the pool's labels; resuming with the seeded "
                   "labels it was started with (--fresh trains with the pool's labels)")
        return older
    raise DiffauditError(f"{path} records other canaries; use --fresh to start over")


def _losses(run: Path, plan: CanaryPlan, labels: tuple, ev: CanaryEval, out: Path, device) -> tuple[np.ndarray, np.ndarray]:
    path = out / "losses.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["canary"], z["reference"]
    from diffaudit.models.denoiser import load_denoiser
    from diffaudit.models.loss import per_example_loss

    den = load_denoiser(run, device=device)
    images = np.concatenate([plan.images, plan.reference])
    lab = None if labels[0] is None else np.concatenate(labels)
    loss = per_example_loss(den, images, timesteps=(ev.timestep,), n_draws=ev.n_draws, noise_seed=ev.noise_seed,
                            labels=lab, indices=np.arange(len(images)))
    mean = loss[:, 0, :].mean(1)
    can, ref = mean[:len(plan.images)], mean[len(plan.images):]
    save_npz_atomic(path, canary=can, reference=ref, timestep=np.int64(ev.timestep), n_draws=np.int64(ev.n_draws))
    return can, ref


def _samples(run: Path, ev: CanaryEval, out: Path, device, n_classes: int | None) -> np.ndarray:
    from diffaudit.models.denoiser import load_denoiser
    from diffaudit.sampling.generate import generate_images

    folder = out / "samples"
    parts = []
    den = None
    with progress_bar("canaries: generate", ev.n_samples, unit="img") as bar:
        for c, s in enumerate(range(0, ev.n_samples, SAMPLE_CHUNK)):
            path = folder / f"chunk-{c:06d}.npy"
            if path.exists():
                parts.append(load_npy(path))
            else:
                den = den or load_denoiser(run, device=device)
                idx = range(s, min(ev.n_samples, s + SAMPLE_CHUNK))
                labels = None if n_classes is None else [i % n_classes for i in idx]
                imgs = generate_images(den, [generation_seed(ev.sample_seed, 0, i) for i in idx], steps=ev.sample_steps,
                                       labels=labels, micro_batch=ev.micro_batch)
                save_npy_atomic(path, imgs)
                parts.append(imgs)
            bar.advance(len(parts[-1]))
    return np.concatenate(parts)


@dataclass
class Extracted:
    """What the generations extract.

    Attributes:
        canaries, references: per canary / reference, whether a generation extracts it.
        canary_l2, reference_l2: float64 (n,), each one's ℓ2 to its nearest generation, in [0, 1].
        unique: training images extracted (verification against the training set with the canaries).
    """

    canaries: list[bool]
    references: list[bool]
    canary_l2: np.ndarray
    reference_l2: np.ndarray
    unique: int


def _verified(samples: np.ndarray, images: np.ndarray, keys: list[str], ev: CanaryEval, device) -> tuple[set[str], int]:
    """Keys of the ``images`` (uint8 (N, H, W, C)) that verification against them calls extracted (each
    credited image and its duplicates), and the count of unique extracted images."""
    from diffaudit.attacks.extraction.verification import VerifySettings, verify

    ids = [f"p0-i{i}" for i in range(len(samples))]
    v = verify(samples, ids, images, keys, settings=VerifySettings(rule=ev.rule, delta=ev.delta), device=device)
    hit = set()
    for e in v.extracted:
        hit.add(e.train_key)
        hit.update(keys[int(d)] for d in (getattr(e, "duplicates", None) or []))
    return hit, v.unique_extracted


def _nearest_l2(images: np.ndarray, samples: np.ndarray, device) -> np.ndarray:
    """float64 (len(images),): each image's ℓ2 to its nearest generation."""
    from diffaudit.distances.pairwise import pairwise_l2

    return pairwise_l2(images, samples, device=device).min(dim=1).values.double().cpu().numpy()


def _extraction(samples: np.ndarray, combined: ImageDataset, plan: CanaryPlan, ev: CanaryEval, device) -> Extracted:
    """Canaries: verification against the training set the model was trained on (``combined``).
    References: the same rule, as if they had been inserted too (against ``combined`` and the references),
    so that their extraction and nearest ℓ2 are the baseline of images never trained on."""
    hit, unique = _verified(samples, np.asarray(combined.images), combined.keys, ev, device)
    ref_hit, _ = _verified(samples, np.concatenate([np.asarray(combined.images), plan.reference]),
                           combined.keys + plan.reference_keys, ev, device)
    return Extracted(canaries=[k in hit for k in plan.keys], references=[k in ref_hit for k in plan.reference_keys],
                     canary_l2=_nearest_l2(plan.images, samples, device),
                     reference_l2=_nearest_l2(plan.reference, samples, device), unique=unique)


def run_canary_experiment(dataset: ImageDataset, plan: CanaryPlan, config, out: str | Path, *, evaluation: CanaryEval,
                          device="cpu", data_record: dict[str, Any] | None = None,
                          upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None, dp=None) -> dict[str, Any]:
    """Insert ``plan``'s canaries into ``dataset``, train with ``config`` (a ``TrainConfig``) and measure.

    ``upgrade``: how the model's run folder (``out/model``) reads settings an earlier version recorded
    (:meth:`~diffaudit.models.training.RunPlan.open`). ``dp``: a
    :class:`~diffaudit.defenses.dp_training.DPConfig` to train with DP-SGD (each copy of a canary an
    example of its own), or None; the result then carries ``dp`` (the run's ``dp.json``: ε, δ, σ, ...).

    Returns the result fields: ``canaries`` (one {key, kind, repeats, loss, exposure,
    exposure_gaussian, extracted, nearest_l2} per canary), ``references`` (one {key, kind, repeats: 0,
    loss, extracted, nearest_l2} per never-inserted reference: the extraction baseline), ``curve`` (per
    repeat count, led by the references' ``repeats: 0`` row), the reference-loss summary (std with
    ddof = 1, as the Gaussian exposure), ``model`` (the run directory) and counts (``n_extracted``,
    ``n_reference_extracted``: None without generations).
    """
    from diffaudit.models.training import train

    out = Path(out)
    evaluation.validate(n_train=len(dataset) + len(plan.keys))
    combined, repeats, record = _membership(dataset, plan, out)
    record_data = {**(data_record or {"source": dataset.source}), "canaries": "canaries.json"}
    if dp is None:
        run = train(combined, config, out / "model", device=device, repeats=repeats, data_record=record_data,
                    upgrade=upgrade)
    else:
        from diffaudit.defenses.dp_training import train_dp

        run = train_dp(combined, config, dp, out / "model", device=device, repeats=repeats, data_record=record_data,
                       upgrade=upgrade)
    labels = _labels_for(plan, record, dataset) if config.class_conditional else (None, None)
    can_loss, ref_loss = _losses(run, plan, labels, evaluation, out, device)
    exp = exposure(can_loss, ref_loss)
    exp_g = exposure_gaussian(can_loss, ref_loss)
    ex = None
    if evaluation.n_samples > 0:
        n_classes = int(dataset.labels.max()) + 1 if (config.class_conditional and dataset.labels is not None) else None
        samples = _samples(run, evaluation, out, device, n_classes)
        ex = _extraction(samples, combined, plan, evaluation, device)
    extracted = [None] * len(plan.keys) if ex is None else ex.canaries
    ref_extracted = [None] * len(plan.reference_keys) if ex is None else ex.references
    found = ("extraction not tested (no generations)" if ex is None else
             f"{sum(ex.canaries)} of {len(extracted)} canaries extracted, {sum(ex.references)} of {len(ref_extracted)} "
             "never-inserted references")
    ceiling = max_exposure(len(ref_loss))
    top = int(np.isclose(exp, ceiling).sum())  # rank 1, a loss below every reference's: at least the ceiling
    of = f"{top} at the ceiling of {ceiling:.2f}" if top else f"of at most {ceiling:.2f}"
    stage_line(f"canaries: mean exposure {'≥ ' if top else ''}{exp.mean():.2f} bits ({of}); {found}")
    rows = [{"key": k, "kind": plan.kind, "repeats": int(r), "index": record["canaries"][j]["index"],
             "loss": float(can_loss[j]), "exposure": float(exp[j]), "exposure_gaussian": float(exp_g[j]),
             "extracted": extracted[j], "nearest_l2": None if ex is None else float(ex.canary_l2[j])}
            for j, (k, r) in enumerate(zip(plan.keys, plan.repeats))]
    refs = [{"key": k, "kind": plan.kind, "repeats": 0, "loss": float(ref_loss[j]), "extracted": ref_extracted[j],
             "nearest_l2": None if ex is None else float(ex.reference_l2[j])} for j, k in enumerate(plan.reference_keys)]
    curve = [reference_row(len(plan.reference_keys), None if ex is None else ex.references,
                           None if ex is None else ex.reference_l2)]
    curve += exposure_curve(plan.repeats, exp, None if ex is None else ex.canaries, None if ex is None else ex.canary_l2)
    return {
        "kind": plan.kind,
        "model": str(run),
        "n_train": len(dataset),
        "n_canaries": len(plan.keys),
        "n_reference": len(plan.reference_keys),
        "max_exposure": max_exposure(len(ref_loss)),
        "reference_loss": {"mean": float(ref_loss.mean()), "std": float(ref_loss.std(ddof=1)), "min": float(ref_loss.min())},
        "evaluation": asdict(evaluation),
        "n_extracted": None if ex is None else sum(ex.canaries),
        "n_reference_extracted": None if ex is None else sum(ex.references),
        "unique_extracted_training_images": None if ex is None else ex.unique,
        "canaries": rows,
        "references": refs,
        "curve": curve,
        "membership_file": "canaries.json",
        **({} if dp is None else {"dp": read_json(run / "dp.json")}),
    }
