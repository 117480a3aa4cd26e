"""Canaries: planted training examples with known duplication, and their exposure.

The paper inserts uniform-noise images into CIFAR-10 1 to 64 times and measures how exposed each
is (Section 7; exposure as in Carlini et al. 2019, "The Secret Sharer"): a built-in calibration of
every attack, with ground truth for "memorization vs number of duplicates".

- :func:`make_canaries`: candidates of one kind — ``noise`` (uint8 uniform noise, each image from
  its own seed) or ``heldout`` (real images from a pool the model never sees) — split into the
  inserted canaries (``per_repeat`` per repeat count) and the never-inserted references R.
- :func:`insert_canaries`: the training set with the canaries appended once each, and the
  ``repeats`` map {index: times} for :func:`diffaudit.models.training.train`.
- :func:`exposure`: exposure = log2 |R| − log2 rank, rank = 1 + #{r ∈ R: L(r) < L(c)} (ties half),
  L the per-example loss at t = 100 (lower = more memorized). Between ≈ 0 (the canary looks like
  any never-seen candidate) and log2 |R| (lower loss than every reference).
  :func:`exposure_gaussian` extrapolates beyond log2 |R| with a normal fit of the reference losses
  (−log2 Φ((L(c) − μ_R) / σ_R), Secret Sharer §4.3 "approximating exposure").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed, numpy_rng
from diffaudit.data.dataset import ImageDataset

CANARY_KINDS = ("noise", "heldout")
DEFAULT_REPEATS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class CanaryPlan:
    """Candidates of one kind, split into inserted canaries and never-inserted references.

    Attributes:
        kind: ``noise`` or ``heldout``.
        images: uint8 (n_canaries, H, W, C), the inserted canaries.
        repeats: times each canary is inserted (n_canaries,).
        keys: the canaries' keys (``canary/<kind>/<j>``), unique in the training set.
        reference: uint8 (n_reference, H, W, C), the candidates never inserted (R).
        reference_keys: their keys.
        sources: where each canary came from (pool key for ``heldout``, seed for ``noise``).
        reference_sources: likewise for the references.
        seed: the seed of every draw.
    """

    kind: str
    images: np.ndarray
    repeats: list[int]
    keys: list[str]
    reference: np.ndarray
    reference_keys: list[str]
    sources: list[str] = field(default_factory=list)
    reference_sources: list[str] = field(default_factory=list)
    seed: int = 0


def _check_repeats(repeats) -> list[int]:
    r = [int(x) for x in repeats]
    if not r or min(r) < 1:
        raise DiffauditError(f"--repeats must be positive integers (e.g. 1,2,4,8,16,32,64); got {list(repeats)}")
    return r


def noise_image(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (H, W, C) uniform noise in [0, 255], drawn from ``seed`` alone."""
    return numpy_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def make_canaries(kind: str, *, image_shape: tuple[int, int, int], repeats=DEFAULT_REPEATS, per_repeat: int = 1,
                  n_reference: int = 64, seed: int = 0, pool: ImageDataset | None = None) -> CanaryPlan:
    """Draw ``len(repeats) * per_repeat`` canaries and ``n_reference`` references of ``kind``.

    Args:
        kind: ``noise`` or ``heldout`` (needs ``pool``, images of ``image_shape`` the model never trains on).
        image_shape: (H, W, C) of the training images.
        repeats: insertion counts; each gets ``per_repeat`` canaries.
        n_reference: size of R (exposure resolution: at most log2 |R| bits).
        seed: every draw derives from it (noise image j from ``derive_seed(seed, "canary-noise", j)``;
            the pool choice from ``derive_seed(seed, "canary-pool")``).
    """
    reps = _check_repeats(repeats)
    if per_repeat < 1 or n_reference < 1:
        raise DiffauditError("--per-repeat and --n-reference must be at least 1")
    n_can = len(reps) * per_repeat
    total = n_can + n_reference
    shape = tuple(int(s) for s in image_shape)
    plan_repeats = [r for r in reps for _ in range(per_repeat)]
    if kind == "noise":
        seeds = [derive_seed(seed, "canary-noise", j) for j in range(total)]
        imgs = np.stack([noise_image(s, shape) for s in seeds])
        sources = [f"seed:{s}" for s in seeds]
    elif kind == "heldout":
        if pool is None:
            raise DiffauditError("heldout canaries need a pool of images the model never sees (--canary-pool, e.g. cifar10-test)")
        if pool.image_shape != shape:
            raise DiffauditError(f"--canary-pool images are {pool.image_shape} (H, W, C) but training images are {shape}; "
                                 "load both at the same size (--image-size, --mode)")
        if len(pool) < total:
            raise DiffauditError(f"--canary-pool holds {len(pool)} images; {total} are needed ({n_can} canaries + {n_reference} references)")
        pick = numpy_rng(derive_seed(seed, "canary-pool")).choice(len(pool), size=total, replace=False)
        imgs = pool.images[pick]
        sources = [pool.keys[i] for i in pick]
    else:
        raise DiffauditError(f"unknown canary kind {kind!r}; choose one of {', '.join(CANARY_KINDS)}")
    keys = [f"canary/{kind}/{j:04d}" for j in range(total)]
    return CanaryPlan(kind=kind, images=np.ascontiguousarray(imgs[:n_can]), repeats=plan_repeats, keys=keys[:n_can],
                      reference=np.ascontiguousarray(imgs[n_can:]), reference_keys=keys[n_can:], sources=sources[:n_can],
                      reference_sources=sources[n_can:], seed=seed)


def insert_canaries(dataset: ImageDataset, plan: CanaryPlan) -> tuple[ImageDataset, dict[int, int], dict[str, Any]]:
    """Append each canary once to ``dataset``; returns (combined, repeats {index: times}, record).

    ``repeats`` makes :func:`diffaudit.models.training.train` put canary i ``plan.repeats[i]`` times in
    the training stream. Labels (class-conditional data) of canaries are drawn with the plan's seed;
    captions are ``"canary <key>"``. The record (saved as ``canaries.json``) lists every canary
    (key, index, repeats, source, label) and every reference (key, source).
    """
    if dataset.image_shape != plan.images.shape[1:]:
        raise DiffauditError(f"canaries are {plan.images.shape[1:]} but the dataset's images are {dataset.image_shape}")
    clash = set(plan.keys) & set(dataset.keys)
    if clash:
        raise DiffauditError(f"the dataset already has keys named like canaries ({sorted(clash)[0]!r})")
    n0, k = len(dataset), len(plan.keys)
    labels = None
    can_labels: list[int | None] = [None] * k
    if dataset.labels is not None:
        n_classes = int(dataset.labels.max()) + 1
        can_labels = numpy_rng(derive_seed(plan.seed, "canary-labels")).integers(0, n_classes, size=k).tolist()
        labels = np.concatenate([dataset.labels, np.asarray(can_labels, dtype=np.int64)])
    captions = None if dataset.captions is None else list(dataset.captions) + [f"canary {key}" for key in plan.keys]
    combined = ImageDataset(images=np.concatenate([dataset.images, plan.images]), keys=list(dataset.keys) + plan.keys,
                            labels=labels, captions=captions, source=f"{dataset.source}+canaries",
                            class_names=getattr(dataset, "class_names", None))
    repeats = {n0 + j: int(r) for j, r in enumerate(plan.repeats)}
    record = {
        "kind": plan.kind, "seed": plan.seed, "n_dataset": n0, "repeats_list": sorted(set(plan.repeats)),
        "canaries": [{"key": key, "index": n0 + j, "repeats": int(plan.repeats[j]), "source": plan.sources[j],
                      "label": can_labels[j]} for j, key in enumerate(plan.keys)],
        "reference": [{"key": key, "source": src} for key, src in zip(plan.reference_keys, plan.reference_sources)],
    }
    return combined, repeats, record


def exposure(canary_loss: np.ndarray, reference_loss: np.ndarray) -> np.ndarray:
    """Rank exposure of each canary: log2 |R| − log2 rank (module docstring); float64 (n_canaries,).

    Losses: lower = more memorized. ``reference_loss`` are the losses of the never-inserted R.
    """
    c, r = np.asarray(canary_loss, np.float64), np.asarray(reference_loss, np.float64)
    if r.ndim != 1 or len(r) == 0:
        raise DiffauditError("exposure needs at least one reference loss")
    if not (np.isfinite(c).all() and np.isfinite(r).all()):
        raise DiffauditError("exposure: non-finite losses (diverged model?)")
    rank = 1.0 + (r[None, :] < c[:, None]).sum(1) + 0.5 * (r[None, :] == c[:, None]).sum(1)
    return np.log2(len(r)) - np.log2(rank)


def exposure_gaussian(canary_loss: np.ndarray, reference_loss: np.ndarray) -> np.ndarray:
    """Extrapolated exposure −log2 Φ((L(c) − μ_R) / σ_R) (normal fit of R; can exceed log2 |R|)."""
    c, r = np.asarray(canary_loss, np.float64), np.asarray(reference_loss, np.float64)
    if len(r) < 2:
        raise DiffauditError("the Gaussian exposure needs at least two reference losses")
    sd = r.std(ddof=1)
    if sd <= 0:
        raise DiffauditError("the reference losses are all equal; the Gaussian exposure is undefined")
    return -norm.logcdf((c - r.mean()) / sd) / np.log(2.0)


def exposure_curve(repeats: list[int], exposures: np.ndarray, extracted: list[bool] | None = None) -> list[dict[str, Any]]:
    """Per repeat count: n canaries, mean / min / max exposure, and how many were extracted."""
    reps = np.asarray(repeats)
    exp = np.asarray(exposures, np.float64)
    out = []
    for r in sorted(set(int(x) for x in reps)):
        m = reps == r
        row = {"repeats": r, "n": int(m.sum()), "mean_exposure": float(exp[m].mean()),
               "min_exposure": float(exp[m].min()), "max_exposure": float(exp[m].max())}
        if extracted is not None:
            row["n_extracted"] = int(np.asarray(extracted, bool)[m].sum())
        out.append(row)
    return out
