"""Canaries: planted training examples with known duplication, and their exposure.

The paper inserts uniform-noise images into CIFAR-10 1 to 64 times and measures how exposed each
is (Section 7; exposure as in Carlini et al. 2019, "The Secret Sharer"): a built-in calibration of
every attack, with ground truth for "memorization vs number of duplicates".

- :func:`make_canaries`: candidates of one kind — ``noise`` (uint8 uniform noise, each image from
  its own seed) or ``heldout`` (real images from a pool the model never sees; a drawn candidate that
  is a training image — same key from the same source, or identical pixels — is refused, see
  :func:`training_members`) — split into the inserted canaries (``per_repeat`` per repeat count) and
  the never-inserted references.
- :func:`insert_canaries`: the training set with the canaries appended once each, and the
  ``repeats`` map {index: times} for :func:`diffaudit.models.training.train`.
- :func:`exposure`: exposure = log2 |R| − log2 rank (Secret Sharer, Definition 4), R the candidate
  space: the canary and the n never-inserted references, so |R| = n + 1 and rank = 1 + #{references
  with L(r) < L(c)} (ties half) lies in [1, |R|]. L is the per-example loss at t = 100 (lower = more
  memorized). Exposure lies in [0, log2(n + 1)] (:func:`max_exposure`): 0 when every reference has a
  lower loss, log2(n + 1) when the canary's loss is below every reference's.
  :func:`exposure_gaussian` extrapolates beyond log2 |R| with a normal fit of the reference losses
  (−log2 Φ((L(c) − μ_R) / σ_R), Secret Sharer §4.3 "approximating exposure"; needs n ≥ 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from scipy.stats import norm

from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed, numpy_rng
from diffaudit.data.dataset import ImageDataset
from diffaudit.data.digest import DIGEST_ROWS

CANARY_KINDS = ("noise", "heldout")
DEFAULT_REPEATS = (1, 2, 4, 8, 16, 32, 64)
#: The fewest references: :func:`exposure_gaussian` fits a mean and a standard deviation to them.
MIN_REFERENCE = 2


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
                  n_reference: int = 64, seed: int = 0, pool: ImageDataset | None = None,
                  training: ImageDataset | None = None) -> CanaryPlan:
    """Draw ``len(repeats) * per_repeat`` canaries and ``n_reference`` references of ``kind``.

    Args:
        kind: ``noise`` or ``heldout`` (needs ``pool``, images of ``image_shape`` the model never trains on,
            and ``training``).
        image_shape: (H, W, C) of the training images.
        repeats: insertion counts; each gets ``per_repeat`` canaries.
        n_reference: never-inserted references, at least :data:`MIN_REFERENCE` (exposure resolution: at
            most log2(n_reference + 1) bits).
        seed: every draw derives from it (noise image j from ``derive_seed(seed, "canary-noise", j)``;
            the pool choice from ``derive_seed(seed, "canary-pool")``).
        training: the training set (``heldout``): a drawn candidate that is one of its images is refused
            (:func:`check_unseen`), since exposure measured against training members is biased to 0.

    Raises :class:`DiffauditError` for settings that cannot give an exposure, before anything is trained.
    """
    reps = _check_repeats(repeats)
    if per_repeat < 1:
        raise DiffauditError(f"--per-repeat must be at least 1; got {per_repeat}")
    if n_reference < MIN_REFERENCE:
        raise DiffauditError(f"--n-reference must be at least {MIN_REFERENCE} (the Gaussian exposure fits a mean and a "
                             f"standard deviation to the reference losses); got {n_reference}")
    n_can = len(reps) * per_repeat
    total = n_can + n_reference
    shape = tuple(int(s) for s in image_shape)
    plan_repeats = [r for r in reps for _ in range(per_repeat)]
    if kind == "noise":
        seeds = [derive_seed(seed, "canary-noise", j) for j in range(total)]
        imgs = np.stack([noise_image(s, shape) for s in seeds])
        sources = [f"seed:{s}" for s in seeds]
    elif kind == "heldout":
        if training is None:
            raise DiffauditError("heldout canaries need the training set (training=) to check that no drawn pool image "
                                 "is a training image")
        imgs, sources = _draw_from_pool(pool, shape, n_can, n_reference, seed)
    else:
        raise DiffauditError(f"unknown canary kind {kind!r}; choose one of {', '.join(CANARY_KINDS)}")
    keys = [f"canary/{kind}/{j:04d}" for j in range(total)]
    plan = CanaryPlan(kind=kind, images=np.ascontiguousarray(imgs[:n_can]), repeats=plan_repeats, keys=keys[:n_can],
                      reference=np.ascontiguousarray(imgs[n_can:]), reference_keys=keys[n_can:], sources=sources[:n_can],
                      reference_sources=sources[n_can:], seed=seed)
    if kind == "heldout":
        check_unseen(plan, training, same_source=pool.source == training.source)
    return plan


def _draw_from_pool(pool: ImageDataset | None, shape: tuple[int, int, int], n_can: int, n_reference: int,
                    seed: int) -> tuple[np.ndarray, list[str]]:
    """``n_can + n_reference`` distinct pool images (uint8 (n, H, W, C)) and their pool keys, drawn with ``seed``."""
    total = n_can + n_reference
    if pool is None:
        raise DiffauditError("heldout canaries need a pool of images the model never sees (--canary-pool, e.g. cifar10-test)")
    if pool.image_shape != shape:
        raise DiffauditError(f"--canary-pool images are {pool.image_shape} (H, W, C) but training images are {shape}; "
                             "load both at the same size (--image-size, --mode)")
    if len(pool) < total:
        raise DiffauditError(f"--canary-pool holds {len(pool)} images; {total} are needed ({n_can} canaries + {n_reference} references)")
    pick = numpy_rng(derive_seed(seed, "canary-pool")).choice(len(pool), size=total, replace=False)
    return np.asarray(pool.images[pick]), [pool.keys[i] for i in pick]


def _row_digests(images) -> Iterator[bytes]:
    """SHA-1 of each image's uint8 pixels, in order, reading :data:`DIGEST_ROWS` images at a time (bounded
    memory, also for a memory-mapped ShardedImages)."""
    for lo in range(0, len(images), DIGEST_ROWS):
        block = np.ascontiguousarray(images[lo:lo + DIGEST_ROWS], dtype=np.uint8)
        for row in block:
            yield hashlib.sha1(row.tobytes(), usedforsecurity=False).digest()


def training_members(images: np.ndarray, sources: list[str], training: ImageDataset, *, same_source: bool) -> list[int]:
    """Positions (sorted) of the candidate ``images`` (uint8 (n, H, W, C)) that are training images.

    A candidate is a training image when its pixels equal one of ``training``'s (SHA-1 of the uint8 rows;
    the training set is streamed once, only the candidates' digests are held), or, with ``same_source``
    (the pool was loaded from the training data's own spec, where a key names one example whatever the
    options), when its pool key ``sources[j]`` is a training key.
    """
    if tuple(images.shape[1:]) != tuple(training.image_shape):
        raise DiffauditError(f"the candidates are {tuple(images.shape[1:])} (H, W, C) but the training images are "
                             f"{training.image_shape}")
    members = set()
    if same_source:
        keys = set(training.keys)
        members.update(j for j, src in enumerate(sources) if src in keys)
    wanted: dict[bytes, list[int]] = {}
    for j, d in enumerate(_row_digests(images)):
        wanted.setdefault(d, []).append(j)
    for d in _row_digests(training.images):
        members.update(wanted.get(d, ()))
    return sorted(members)


def check_unseen(plan: CanaryPlan, training: ImageDataset, *, same_source: bool) -> None:
    """Raise :class:`DiffauditError` when a canary or reference of ``plan`` is a training image
    (:func:`training_members`): a "never-inserted" reference that is a member, or a canary inserted on top
    of its own training copy, biases exposure towards 0 (the count and the first pool key are named)."""
    images = np.concatenate([plan.images, plan.reference])
    sources = plan.sources + plan.reference_sources
    members = training_members(images, sources, training, same_source=same_source)
    if members:
        n_can = len(plan.images)
        in_can = sum(j < n_can for j in members)
        raise DiffauditError(
            f"--canary-pool overlaps the training data: {len(members)} of the {len(images)} drawn candidates "
            f"({in_can} of {n_can} canaries, {len(members) - in_can} of {len(plan.reference)} never-inserted references) "
            f"are training images (same key or identical pixels; first: {sources[members[0]]!r}), so their exposure "
            "would be measured against members. Use a pool disjoint from --data (e.g. cifar10-test for cifar10)")


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


def max_exposure(n_reference: int) -> float:
    """log2 |R| = log2(n_reference + 1): the largest rank exposure, R being the canary and its references."""
    return float(np.log2(n_reference + 1))


def exposure(canary_loss: np.ndarray, reference_loss: np.ndarray) -> np.ndarray:
    """Rank exposure of each canary: log2 |R| − log2 rank (Secret Sharer, Definition 4); float64 (n_canaries,).

    Losses: lower = more memorized. ``reference_loss`` are the losses of the n never-inserted references;
    the candidate space R is those plus the canary itself, so |R| = n + 1 and rank = 1 + #{L(r) < L(c)}
    (+ half the ties) lies in [1, n + 1]: exposure lies in [0, :func:`max_exposure` (n)], larger = more
    memorized.
    """
    c, r = np.asarray(canary_loss, np.float64), np.asarray(reference_loss, np.float64)
    if r.ndim != 1 or len(r) == 0:
        raise DiffauditError("exposure needs at least one reference loss")
    if not (np.isfinite(c).all() and np.isfinite(r).all()):
        raise DiffauditError("exposure: non-finite losses (diverged model?)")
    rank = 1.0 + (r[None, :] < c[:, None]).sum(1) + 0.5 * (r[None, :] == c[:, None]).sum(1)
    return max_exposure(len(r)) - np.log2(rank)


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
