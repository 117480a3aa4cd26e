"""Canaries: planted training examples with known duplication, and their exposure.

The paper inserts uniform-noise images into CIFAR-10 1 to 64 times and measures how exposed each
is (Section 7; exposure as in Carlini et al. 2019, "The Secret Sharer"): a built-in calibration of
every attack, with ground truth for "memorization vs number of duplicates".

- :func:`make_canaries`: candidates of one kind — ``noise`` (uint8 uniform noise, each image from
  its own seed) or ``heldout`` (real images from a pool the model never sees, with the pool's labels
  when it has them; a drawn candidate that is a training image — same key from the same source,
  identical pixels, or a near-duplicate that the verification rule calls a copy of its nearest training
  image, :func:`find_training_copies` — or a copy of a candidate kept before it (a pool that holds an
  image twice) is left out and replaced, and a pool that is mostly training images is refused) — split
  into the inserted canaries (``per_repeat`` per repeat count) and the never-inserted references.
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

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from diffaudit.attacks.extraction.verification import VerifySettings, decide
from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed, numpy_rng
from diffaudit.data.dataset import ImageDataset
from diffaudit.distances.knn import knn_search
from diffaudit.distances.normalized import nearest_ratio
from diffaudit.distances.pairwise import pairwise_l2

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
        skipped: ``heldout``: the drawn pool images left out, in the order drawn (others were drawn in
            their place): training images or near-duplicates of one, ``{"source", "copy": "exact"|"near",
            "l2", "ratio", "nearest"}`` (the nearest training key), and copies of a candidate kept before
            them (the pool holds the image twice, or a near-duplicate of it), ``{"source", "copy", "l2",
            "ratio", "duplicate_of"}`` (that candidate's pool key).
        labels: ``heldout`` from a pool with labels: the canaries' pool labels (int, (n_canaries,));
            None: :func:`insert_canaries` draws them with ``seed`` (noise, or a pool without labels).
        reference_labels: likewise for the references (None: drawn with ``seed`` where needed).
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
    skipped: list[dict[str, Any]] = field(default_factory=list)
    labels: list[int] | None = None
    reference_labels: list[int] | None = None


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
                  training: ImageDataset | None = None, copy_rule: VerifySettings | None = None,
                  device: Any = "cpu", class_conditional: bool = True) -> CanaryPlan:
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
        training: the training set (``heldout``): a drawn candidate that is one of its images, or a
            near-duplicate of one, is left out and another pool image drawn in its place
            (:func:`_draw_unseen`), since exposure measured against training members is biased to 0;
            a draw that is mostly training images (a pool that is the training data) is refused. So is a
            candidate that copies one kept before it (canaries and references are pairwise distinct).
            With labels on both, the pool's labels must be classes of the training set when the model is
            ``class_conditional`` (:func:`_pool_labels`); for an unconditional model they are not checked.
        copy_rule: when a ``heldout`` candidate is a near-duplicate of a training image, or of another
            candidate: the verification rule that calls a generation a copy (:class:`VerifySettings`;
            default: the ``ratio`` rule of paper §5.1, or ``l2`` with δ = 0.15); see
            :func:`find_training_copies`.
        device: where the nearest-neighbour search of that check runs.

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
    skipped: list[dict[str, Any]] = []
    labels: list[int] | None = None
    if kind == "noise":
        seeds = [derive_seed(seed, "canary-noise", j) for j in range(total)]
        imgs = np.stack([noise_image(s, shape) for s in seeds])
        sources = [f"seed:{s}" for s in seeds]
    elif kind == "heldout":
        if training is None:
            raise DiffauditError("heldout canaries need the training set (training=) to check that no drawn pool image "
                                 "is a training image")
        kept, skipped = _draw_unseen(pool, shape, n_can, n_reference, seed, training, copy_rule=copy_rule, device=device)
        imgs, sources = np.asarray(pool.images[kept]), [pool.keys[i] for i in kept]
        labels = _pool_labels(pool, kept, training, check=class_conditional)
    else:
        raise DiffauditError(f"unknown canary kind {kind!r}; choose one of {', '.join(CANARY_KINDS)}")
    keys = [f"canary/{kind}/{j:04d}" for j in range(total)]
    plan = CanaryPlan(kind=kind, images=np.ascontiguousarray(imgs[:n_can]), repeats=plan_repeats, keys=keys[:n_can],
                      reference=np.ascontiguousarray(imgs[n_can:]), reference_keys=keys[n_can:], sources=sources[:n_can],
                      reference_sources=sources[n_can:], seed=seed, skipped=skipped,
                      labels=None if labels is None else labels[:n_can],
                      reference_labels=None if labels is None else labels[n_can:])
    return plan


def _pool_labels(pool: ImageDataset, kept: list[int], training: ImageDataset, *, check: bool = True) -> list[int] | None:
    """The pool's labels of the ``kept`` candidates (held-out images train as their own class), or None
    for a pool without labels. With ``check`` (a class-conditional model), raises :class:`DiffauditError`
    when the training set has labels and the pool's are not its classes (other class names, or a label
    past its largest class); without, such labels are left to the seeded draw (None), as an
    unconditional model never reads them."""
    if pool.labels is None:
        return None
    labels = [int(x) for x in np.asarray(pool.labels)[kept]]
    if training.labels is None:
        return labels
    names, pool_names = getattr(training, "class_names", None), getattr(pool, "class_names", None)
    n_classes = int(training.labels.max()) + 1
    if names is not None and pool_names is not None and list(names) != list(pool_names):
        why = (f"--canary-pool's classes {list(pool_names)[:5]}... are not --data's {list(names)[:5]}...: its labels "
               "would train held-out canaries as other classes; use a pool of the same classes (e.g. cifar10-test "
               "for cifar10)")
    elif labels and (min(labels) < 0 or max(labels) >= n_classes):
        why = (f"--canary-pool labels reach {min(labels)}..{max(labels)} but --data has classes 0..{n_classes - 1}; "
               "use a pool of the same classes")
    else:
        return labels
    if check:
        raise DiffauditError(why)
    return None


def _draw_unseen(pool: ImageDataset | None, shape: tuple[int, int, int], n_can: int, n_reference: int, seed: int,
                 training: ImageDataset, *, copy_rule: VerifySettings | None,
                 device: Any) -> tuple[list[int], list[dict[str, Any]]]:
    """Pool indices of ``n_can + n_reference`` pool images that are not training images and not copies of
    each other, in order (the first ``n_can`` the canaries), and the drawn images left out
    (see ``CanaryPlan.skipped``).

    The first draw is :func:`_draw_from_pool`'s (so a pool without copies gives the candidates it always
    gave). A drawn image is left out when it is a training image (:func:`find_training_copies`) or a copy
    of a candidate kept before it (:func:`_copy_of_kept`: identical pixels, or what the same rule calls a
    near-duplicate); it is replaced by the next unused pool image in an order seeded by ``seed``, checked
    the same way, until enough are found. Raises :class:`DiffauditError` when more than half of the first
    draw are training images (the pool overlaps the training data: it is the wrong pool), or when the
    pool runs out of distinct images.
    """
    total = n_can + n_reference
    pick = _draw_from_pool(pool, shape, n_can, n_reference, seed)
    same_source = pool.source == training.source
    kept: list[int] = []
    skipped: list[dict[str, Any]] = []
    unused = iter(numpy_rng(derive_seed(seed, "canary-pool-replacements")).permutation(
        np.setdiff1d(np.arange(len(pool)), pick)).tolist())
    batch = [int(i) for i in pick]
    while batch:
        keys = [pool.keys[i] for i in batch]
        found = find_training_copies(np.asarray(pool.images[batch]), keys, training, same_source=same_source,
                                     copy_rule=copy_rule, device=device)
        copies = set(found.members)
        if not kept and not skipped and 2 * len(copies) > len(batch):
            raise DiffauditError(_overlap_message(found, keys, training, n_can))
        skipped += [{"source": keys[j], "copy": "exact" if j in found.exact else "near",
                     "l2": float(found.l2[j]), "ratio": float(found.ratio[j]),
                     "nearest": training.keys[int(found.nearest[j])]} for j in sorted(copies)]
        fresh = [j for j in range(len(batch)) if j not in copies]
        columns = kept + [batch[j] for j in fresh]  # the kept candidates, then this batch's fresh ones
        l2 = _l2_dists(np.asarray(pool.images[[batch[j] for j in fresh]]), np.asarray(pool.images[columns]), device)
        accepted = list(range(len(kept)))  # columns kept so far
        for row, j in enumerate(fresh):
            dup = _copy_of_kept(found.distances[j], l2[row, accepted], found.rule, len(training))
            if dup is None:
                accepted.append(len(kept) + row)
                continue
            col, copy, dist, ratio = dup
            skipped.append({"source": keys[j], "copy": copy, "l2": dist, "ratio": ratio,
                            "duplicate_of": pool.keys[columns[accepted[col]]]})
        kept += [batch[fresh[c - len(kept)]] for c in accepted[len(kept):]]
        batch = [i for _, i in zip(range(total - len(kept)), unused)]
    if len(kept) < total:
        n_dup = sum("duplicate_of" in s for s in skipped)
        raise DiffauditError(f"--canary-pool holds too few images that are not training images or near-duplicates of one, "
                             f"nor copies of each other: {len(kept)} of the {total} needed ({n_can} canaries + {n_reference} "
                             f"references); {len(skipped) - n_dup} were left out as copies of training images and {n_dup} "
                             f"as copies of another drawn pool image (the pool holds them twice, or near-duplicates). "
                             f"Use a larger pool disjoint from --data, without repeated images, or fewer --n-reference")
    return kept, skipped


def _l2_dists(a: np.ndarray, b: np.ndarray, device: Any) -> np.ndarray:
    """ℓ2 (RMS on [0, 1] pixels, exact: 0 only for identical pixels) of every pair of uint8 images
    a (n, H, W, C) and b (m, H, W, C); float64 (n, m). Candidates only (tens to thousands)."""
    if len(a) == 0:
        return np.zeros((0, len(b)))
    return pairwise_l2(np.ascontiguousarray(a), np.ascontiguousarray(b), device=device).double().cpu().numpy()


def _copy_of_kept(train_dist: np.ndarray, kept_l2: np.ndarray, rule: VerifySettings,
                  n_train: int) -> tuple[int, str, float, float] | None:
    """Whether a candidate copies one of the candidates kept before it, by the rule that calls a generation
    a copy of a training image, as if those candidates were training images (they are: canaries are
    inserted, and the references stand for images that could have been).

    Args:
        train_dist: float64 (k,), ascending ℓ2 to its k nearest training images (``PoolOverlap.distances``).
        kept_l2: float64 (m,), exact ℓ2 to the m kept candidates, in order (0: identical pixels).
        rule: the copy rule; n_train: training images (the neighbourhood is that of training ∪ kept).

    Returns (position among the kept, ``"exact"`` | ``"near"``, ℓ2, ratio) of the candidate it copies
    (identical pixels, else the nearest one, when it is nearer than every training image and the rule
    calls it a copy: ℓ2 ≤ δ, or ratio ≤ 1 over the merged neighbourhood), or None.
    """
    if len(kept_l2) == 0:
        return None
    d_kept = np.asarray(kept_l2, np.float64)
    col = int(np.argmin(d_kept))
    merged = np.sort(np.concatenate([np.asarray(train_dist, np.float64), d_kept]))
    n = rule.neighbourhood(n_train + len(d_kept))
    ratio = float(nearest_ratio(merged[None, :n], n=n, alpha=rule.alpha)[0]) if merged[:n].mean() > 0 else 0.0
    if d_kept[col] == 0:
        return col, "exact", 0.0, ratio
    if merged[0] < d_kept[col]:  # a training image is nearer: not a copy of a candidate (nor of it, as checked)
        return None
    copied = d_kept[col] <= rule.delta if rule.rule == "l2" else ratio <= 1.0
    return (col, "near", float(d_kept[col]), ratio) if copied else None


def _draw_from_pool(pool: ImageDataset | None, shape: tuple[int, int, int], n_can: int, n_reference: int,
                    seed: int) -> np.ndarray:
    """Indices of ``n_can + n_reference`` distinct pool images, drawn with ``seed``."""
    total = n_can + n_reference
    if pool is None:
        raise DiffauditError("heldout canaries need a pool of images the model never sees (--canary-pool, e.g. cifar10-test)")
    if pool.image_shape != shape:
        raise DiffauditError(f"--canary-pool images are {pool.image_shape} (H, W, C) but training images are {shape}; "
                             "load both at the same size (--image-size, --mode)")
    if len(pool) < total:
        raise DiffauditError(f"--canary-pool holds {len(pool)} images; {total} are needed ({n_can} canaries + {n_reference} references)")
    return numpy_rng(derive_seed(seed, "canary-pool")).choice(len(pool), size=total, replace=False)


@dataclass
class PoolOverlap:
    """Which candidates are training images, and how close each is to the training set.

    Attributes:
        exact: positions (sorted) of the candidates with a training image's key (same source) or pixels.
        near: positions (sorted) of the other candidates the copy rule calls copies of their nearest
            training image (near-duplicates: re-encoded, shifted, noisy...).
        l2: float64 (n,), ℓ2 (RMS on [0, 1] pixels) to the nearest training image, in [0, 1]; 0 = same pixels.
        ratio: float64 (n,), the normalised distance ℓ2 / (α · mean ℓ2 to the n nearest) (paper §5.1), ≥ 0.
        nearest: int64 (n,), index of each candidate's nearest training image.
        rule: the copy rule that decided ``near``.
        distances: float64 (n, k), ascending ℓ2 to each candidate's k nearest training images (k the
            rule's neighbourhood), or None.
    """

    exact: list[int]
    near: list[int]
    l2: np.ndarray
    ratio: np.ndarray
    nearest: np.ndarray
    rule: VerifySettings
    distances: np.ndarray | None = None

    @property
    def members(self) -> list[int]:
        """Positions (sorted) of every candidate that is a training image, exact or near."""
        return sorted(set(self.exact) | set(self.near))

    def closest_near(self) -> int | None:
        """The near-duplicate most clearly a copy (smallest ℓ2 under rule ``l2``, smallest ratio under
        ``ratio``), or None when there is none."""
        if not self.near:
            return None
        score = self.l2 if self.rule.rule == "l2" else self.ratio
        return min(self.near, key=lambda j: (score[j], j))


def describe_rule(rule: VerifySettings, n_train: int) -> str:
    """The copy rule in words, with its threshold and the option that sets it (for error messages)."""
    if rule.rule == "l2":
        return f"l2 to the nearest training image <= delta = {rule.delta:g} (--rule l2 --delta {rule.delta:g})"
    n = rule.neighbourhood(n_train)
    return (f"l2 to the nearest training image <= alpha = {rule.alpha:g} times the mean l2 to its {n} nearest, "
            "i.e. ratio <= 1 (--rule ratio, paper Sec. 5.1)")


def find_training_copies(images: np.ndarray, sources: list[str], training: ImageDataset, *, same_source: bool,
                         copy_rule: VerifySettings | None = None, device: Any = "cpu") -> PoolOverlap:
    """Which candidate ``images`` (uint8 (n, H, W, C)) are training images, exact copies or near-duplicates.

    Every candidate's n nearest training images (n = min(``copy_rule.n_neighbors``, N − 1), exact ℓ2,
    :func:`diffaudit.distances.knn.knn_search`: the training set is streamed in blocks, or held prepared
    when it fits the search's cache, so memory stays bounded for a large set) give:

    - exact copies: ℓ2 = 0 to the nearest (the exact integer distance, so identical uint8 pixels), or,
      with ``same_source`` (the pool was loaded from the training data's own spec, where a key names
      one example whatever the options), a pool key ``sources[j]`` that is a training key;
    - near-duplicates: the others that ``copy_rule`` calls a copy of their nearest training image,
      the very decision verification makes for a generation (:func:`~diffaudit.attacks.extraction.
      verification.decide`): rule ``ratio`` (the default, paper §5.1; what ``verify`` applies to
      unconditional images) when ℓ2 ≤ α · mean ℓ2 to the n nearest, rule ``l2`` when ℓ2 ≤ δ (0.15).

    On CIFAR-10 (test images against the 50,000 training images) the ratio rule calls about 1 % copies,
    the same photographs re-encoded or shifted; ℓ2 ≤ 0.15 would call a third of them copies, since
    smooth 32x32 images of another scene often lie that close.
    """
    if tuple(images.shape[1:]) != tuple(training.image_shape):
        raise DiffauditError(f"the candidates are {tuple(images.shape[1:])} (H, W, C) but the training images are "
                             f"{training.image_shape}")
    rule = (copy_rule or VerifySettings()).validate()
    n_train = len(training)
    knn = knn_search(np.ascontiguousarray(images, dtype=np.uint8), training.images, rule.neighbourhood(n_train),
                     device=device)
    l2, ratio, copied = decide(knn, rule, n_train)
    exact = set(np.flatnonzero(knn.sq[:, 0] == 0).tolist())
    if same_source:
        keys = set(training.keys)
        exact.update(j for j, src in enumerate(sources) if src in keys)
    near = [j for j in np.flatnonzero(copied).tolist() if j not in exact]
    return PoolOverlap(exact=sorted(exact), near=near, l2=np.asarray(l2, np.float64), ratio=np.asarray(ratio, np.float64),
                       nearest=knn.indices[:, 0].astype(np.int64), rule=rule,
                       distances=np.asarray(knn.distances, np.float64))


def training_members(images: np.ndarray, sources: list[str], training: ImageDataset, *, same_source: bool,
                     copy_rule: VerifySettings | None = None, device: Any = "cpu") -> list[int]:
    """Positions (sorted) of the candidate ``images`` (uint8 (n, H, W, C)) that are training images:
    exact copies or near-duplicates, :attr:`PoolOverlap.members` of :func:`find_training_copies`."""
    return find_training_copies(images, sources, training, same_source=same_source, copy_rule=copy_rule,
                                device=device).members


#: A first draw of fewer candidates than this says little about the share of a pool the copy rule calls
#: near-duplicates: the refusal of a pool of near-duplicates alone says so, and that more --n-reference draws more.
SMALL_DRAW = 20


def _overlap_message(found: PoolOverlap, sources: list[str], training: ImageDataset, n_can: int) -> str:
    """Why a first draw (its first ``n_can`` the canaries, the rest references) that is mostly training
    images is refused: the counts of exact copies and near-duplicates, the rule and threshold, the closest
    near-duplicate and the first pool key.

    With exact copies the pool holds training images: use another. Without any, only the copy rule calls
    the candidates training images, and the pool may hold none: either it holds altered copies of them
    (re-encoded, resized, noisy), or the rule calls distinct images copies (small or smooth images, few
    training images); the message says both, and how to set the rule (:func:`_loose_rule_advice`).
    """
    members = found.members
    n, in_can = len(sources), sum(j < n_can for j in members)
    references = count_words(n - n_can, "never-inserted reference", "never-inserted references")
    drawn = (f"{len(members)} of the {n} drawn candidates ({in_can} of {count_words(n_can, 'canary', 'canaries')}, "
             f"{len(members) - in_can} of {references})")
    called = "it a copy" if len(found.near) == 1 else "them copies"
    counts = (f"{count_words(len(found.exact), 'exact copy', 'exact copies')} (same key or identical pixels) and "
              f"{count_words(len(found.near), 'near-duplicate', 'near-duplicates')} (the verification rule calls "
              f"{called}: {describe_rule(found.rule, len(training))}){_closest(found, sources, training)}; first: "
              f"{sources[members[0]]!r}")
    if not found.exact:
        return (f"--canary-pool images are too near the training data by the copy rule, though none of those drawn is a "
                f"training image: {drawn} are near-duplicates of one: {counts}. Either the pool holds altered copies of "
                "training images (re-encoded, resized, noisy: compare the closest pair), and a pool disjoint from --data "
                f"is needed, or the rule calls distinct images copies: {_loose_rule_advice(found, training, n)}")
    text = (f"--canary-pool overlaps the training data: {drawn} are training images: {counts}. Their exposure would be "
            "measured against members. Use a pool disjoint from --data (e.g. cifar10-test for cifar10)")
    if 2 * len(found.exact) <= n:  # the exact copies alone would not have refused it
        text += (f". The exact copies alone are not most of the draw: the near-duplicates decide it; if they are "
                 f"distinct images, {_loose_rule_advice(found, training, n)}")
    return text


def _loose_rule_advice(found: PoolOverlap, training: ImageDataset, n_drawn: int) -> str:
    """What to do when the copy rule may call distinct pool images copies of training images: why it can
    (the ratio rule on few training images; any rule on small or smooth images), the option that sets it
    (``--rule l2 --delta`` below the near-duplicates' ℓ2, which also decides what verification calls an
    extracted canary) and, for a first draw under :data:`SMALL_DRAW`, that a larger one tells better."""
    h, w = training.image_shape[:2]
    l2 = found.l2[found.near]
    span = f"{l2.min():.4f}" if len(l2) == 1 or l2.min() == l2.max() else f"{l2.min():.4f} to {l2.max():.4f}"
    if found.rule.rule == "ratio":
        why = (f"the ratio rule calls a candidate a copy when its nearest training image is nearer than alpha = "
               f"{found.rule.alpha:g} times the mean of its {found.rule.neighbourhood(len(training))} nearest, and among "
               f"{len(training):,} training images of {h}x{w} px distinct images of a common kind can be that near")
        fix = "pass --rule l2 --delta D"
    else:
        why = f"distinct images of {h}x{w} px can lie within --delta {found.rule.delta:g} of each other"
        fix = "pass a smaller --delta D"
    small = (f"; this refusal rests on the first {n_drawn} candidates drawn (canaries + --n-reference): a larger "
             "--n-reference draws more of the pool, and tells it from the training data better"
             if n_drawn < SMALL_DRAW else "")
    return (f"{why}; then {fix}, D below the near-duplicates' l2 ({span}); the rule also decides which generations "
            f"extract a canary{small}")


def count_words(n: int, one: str, many: str) -> str:
    """"1 exact copy", "3 exact copies"."""
    return f"{n} {one if n == 1 else many}"


def _closest(found: PoolOverlap, sources: list[str], training: ImageDataset) -> str:
    """"; closest near-duplicate: KEY, l2 D (ratio R) from training image KEY", or "" without one."""
    j = found.closest_near()
    if j is None:
        return ""
    return (f"; closest near-duplicate: {sources[j]!r}, l2 {found.l2[j]:.4f} (ratio {found.ratio[j]:.3f}) from "
            f"training image {training.keys[int(found.nearest[j])]!r}")


def insert_canaries(dataset: ImageDataset, plan: CanaryPlan) -> tuple[ImageDataset, dict[int, int], dict[str, Any]]:
    """Append each canary once to ``dataset``; returns (combined, repeats {index: times}, record).

    ``repeats`` makes :func:`diffaudit.models.training.train` put canary i ``plan.repeats[i]`` times in
    the training stream. Labels (class-conditional data) of canaries are the pool's (``plan.labels``,
    held-out canaries from a labelled pool), else drawn with the plan's seed; captions are
    ``"canary <key>"``. The record (saved as ``canaries.json``) lists every canary (key, index, repeats,
    source, label), every reference (key, source, and its pool label when it has one, which is what the
    loss conditions on; without one the loss draws it with the seed, as earlier versions did), and, when
    there were any, the pool images left out as training images, near-duplicates of one or copies of
    each other (``skipped_pool_images``: ``CanaryPlan.skipped``).
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
        if plan.labels is not None:  # held-out images train as their own class
            can_labels = [int(x) for x in plan.labels]
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
    if dataset.labels is not None and plan.reference_labels is not None:  # else as earlier versions wrote it (resume)
        for ref, lab in zip(record["reference"], plan.reference_labels):
            ref["label"] = int(lab)
    if plan.skipped:  # only then: the record of a run that skipped nothing is what earlier versions wrote (resume)
        record["skipped_pool_images"] = plan.skipped
    return combined, repeats, record


def earlier_record(dataset: ImageDataset, plan: CanaryPlan) -> tuple[ImageDataset, dict[int, int], dict[str, Any]]:
    """:func:`insert_canaries` as versions before held-out canaries took the pool's labels did it: every
    label drawn with the seed (the references' too, at loss time). A run those versions started resumes
    with the labels its model was trained with (its ``canaries.json`` is this record)."""
    from dataclasses import replace

    return insert_canaries(dataset, replace(plan, labels=None, reference_labels=None))


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


def exposure_curve(repeats: list[int], exposures: np.ndarray, extracted: list[bool] | None = None,
                   nearest_l2: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per repeat count: n canaries, mean / min / max exposure, how many were extracted and, with
    ``nearest_l2`` (float64 (n_canaries,), each canary's ℓ2 to its nearest generation), the smallest and
    the median of those."""
    reps = np.asarray(repeats)
    exp = np.asarray(exposures, np.float64)
    out = []
    for r in sorted(set(int(x) for x in reps)):
        m = reps == r
        row = {"repeats": r, "n": int(m.sum()), "mean_exposure": float(exp[m].mean()),
               "min_exposure": float(exp[m].min()), "max_exposure": float(exp[m].max())}
        out.append(_extraction_fields(row, m, extracted, nearest_l2))
    return out


def reference_row(n_reference: int, extracted: list[bool] | None = None,
                  nearest_l2: np.ndarray | None = None) -> dict[str, Any]:
    """The curve's ``repeats: 0`` row: the never-inserted references, the baseline of extraction (how many
    generations copy, and how near they come to, images never trained on). References have no exposure
    (they define it): its exposure fields are None. ``extracted``, ``nearest_l2``: per reference, as for
    the canaries in :func:`exposure_curve`."""
    row = {"repeats": 0, "n": int(n_reference), "mean_exposure": None, "min_exposure": None, "max_exposure": None}
    return _extraction_fields(row, np.ones(n_reference, bool), extracted, nearest_l2)


def _extraction_fields(row: dict[str, Any], m: np.ndarray, extracted: list[bool] | None,
                       nearest_l2: np.ndarray | None) -> dict[str, Any]:
    """``row`` with ``n_extracted`` of the items selected by the mask ``m`` (when ``extracted`` is given)
    and ``min_nearest_l2`` / ``median_nearest_l2`` (when ``nearest_l2`` is given)."""
    if extracted is not None:
        row["n_extracted"] = int(np.asarray(extracted, bool)[m].sum())
    if nearest_l2 is not None:
        d = np.asarray(nearest_l2, np.float64)[m]
        row["min_nearest_l2"], row["median_nearest_l2"] = float(d.min()), float(np.median(d))
    return row
