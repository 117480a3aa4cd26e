"""Verification: which generations reproduce a training image (paper §3, Definitions 1-2, and §5.1).

For every generation x̂, its n nearest training images (exact ℓ2, :mod:`diffaudit.distances.knn`) and:

- rule ``l2``: (ℓ2, δ)-extraction (paper Definition 1), extracted when ℓ2(x̂, x) ≤ δ = 0.15 with x the
  nearest training image;
- rule ``ratio``: the neighbourhood-normalised distance ℓ(x̂, x; S) = ℓ2(x̂, x) / (α · mean_{y∈S} ℓ2(x̂, y))
  ≤ 1, α = 0.5, S the n = min(50, N_train) nearest (paper §5.1; the default for unconditional models).

Counting (paper §5.1: "count each training image once"): generations are visited in order and each
training image is credited to its first extracting generation only. Duplicated training images are
collapsed so that a duplicate is not counted twice. **Rule**: two training images are duplicates
when their ℓ2 is ≤ ``dup_delta`` (0.1, the eidetic δ). A generation's matched training image x counts
as the credited image c when ℓ2(x, c) ≤ ``dup_delta`` for some c credited before (the earliest such
c); otherwise x is credited itself. The relation is not chained: two matched images more than
``dup_delta`` apart both count, whatever training images lie between them (chaining merged distinct
images through any image between them). The count follows the generations' order, as the paper's
"first generation" rule does: for matched images with a–b and b–c within ``dup_delta`` but a–c
not, b matched first counts one image, a (then c) first counts two. The eidetic k of a matched image x (Definition 2) is the number of training images
within ``eidetic_delta`` = 0.1 of x, x itself included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from diffaudit.attacks.extraction.crops import crop_aligned_l2
from diffaudit.attacks.extraction.graph import check_threshold
from diffaudit.core.errors import DiffauditError
from diffaudit.data.transforms import resize_to_cover
from diffaudit.distances.knn import KnnResult, knn_search
from diffaudit.distances.normalized import DEFAULT_ALPHA, DEFAULT_NEIGHBORS, nearest_ratio, neighborhood_size
from diffaudit.distances.radius import radius_neighbors

RULES = ("l2", "ratio")
#: δ of (ℓ2, δ)-extraction (paper §3, Definition 1; §4.1, verification).
DEFAULT_DELTA = 0.15
#: δ of eidetic memorization and of the training-duplicate rule (paper §3, Definition 2).
DEFAULT_EIDETIC_DELTA = 0.1


def auto_rule(kind: str | None, captions: Sequence[str] | None) -> tuple[str, str]:
    """The paper's verification rule for these generations, and why it was chosen.

    ``l2`` ((ℓ2, δ)-extraction, §4) for a Stable Diffusion pipeline's; ``ratio`` (the normalised
    distance, §5.1) for a pixel-space model's, class-conditional ones included, where plain ℓ2 ≤ 0.15
    accepts smooth unrelated images. ``kind`` is what a sample store records (``pixel`` or
    ``stable-diffusion``); without it (a folder, an .npz), generations without prompts or whose prompts
    are all class indices (``0``, ``7``...) take ``ratio``, those with text prompts ``l2``.
    """
    if kind == "stable-diffusion":
        return "l2", "generations of a Stable Diffusion pipeline"
    if kind == "pixel":
        return "ratio", "generations of a pixel-space model"
    if captions is None:
        return "ratio", "generations without prompts"
    if all(c.isdigit() for c in captions):
        return "ratio", "generations whose prompts are class indices"
    return "l2", "generations with text prompts"


@dataclass
class VerifySettings:
    """Rule and thresholds; :meth:`validate` names the offending option."""

    rule: str = "ratio"
    delta: float = DEFAULT_DELTA
    alpha: float = DEFAULT_ALPHA
    n_neighbors: int = DEFAULT_NEIGHBORS
    eidetic_delta: float = DEFAULT_EIDETIC_DELTA
    dup_delta: float = DEFAULT_EIDETIC_DELTA

    def validate(self) -> "VerifySettings":
        if self.rule not in RULES:
            raise DiffauditError(f"--rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        check_threshold(self.delta, "--delta")
        check_threshold(self.eidetic_delta, "--eidetic-delta")
        check_threshold(self.dup_delta, "--dup-delta")
        if not (np.isfinite(self.alpha) and 0 < self.alpha <= 10):
            raise DiffauditError(f"--alpha must be in (0, 10], got {self.alpha}")
        if int(self.n_neighbors) < 1 or int(self.n_neighbors) > 1000:
            raise DiffauditError(f"--n-neighbors must be in [1, 1000], got {self.n_neighbors}")
        if self.rule == "ratio" and int(self.n_neighbors) < 2:
            raise DiffauditError(_DEGENERATE_RATIO.format(why="--n-neighbors 1"))
        return self

    def neighbourhood(self, n_train: int, why: str | None = None) -> int:
        """n = min(n_neighbors, N_train); for the ratio rule at least 2, else an error that says ``why``
        n is 1 (default: "a training set of N_train images")."""
        n = neighborhood_size(n_train, self.n_neighbors)
        if self.rule == "ratio" and n < 2:
            raise DiffauditError(_DEGENERATE_RATIO.format(
                why=why or f"a training set of {n_train} image{'' if n_train == 1 else 's'}"))
        return n


_DEGENERATE_RATIO = ("the ratio rule divides the nearest distance by α times the mean of the n nearest; with n = 1 "
                     "({why}) that is 1/α for every generation, so it decides nothing: use --rule l2, or n ≥ 2 "
                     "(at least 2 images searched)")


@dataclass
class Extraction:
    """One extracted training image, credited to its first generation.

    sample / sample_index: that generation's id and its position among the generations verified
    (``diffaudit verify`` records its position in --samples, also with --from-extract); train_id / train_key: the nearest
    training image's index in the training set and its key; l2: ℓ2 in [0, 1] (smaller = closer);
    ratio: normalised distance (≤ 1 = extracted under the ratio rule; None if undefined);
    eidetic_k: training images within eidetic_delta of train_id, itself included;
    n_matching_samples: generations that extracted this training image or a duplicate of it;
    duplicates: the other training ids within dup_delta of train_id (its duplicates in the training set);
    closest_*: of those generations, the one nearest its training image (the strongest evidence: the
    count credits the first, paper §5.1, which may be a looser match): its id, ℓ2, ratio, and the
    training image it matched (train_id itself, or one of its duplicates). Equal to the first's when
    it is the closest.
    """

    sample: str
    sample_index: int
    train_id: int
    train_key: str
    l2: float
    ratio: float | None
    eidetic_k: int
    n_matching_samples: int
    duplicates: list[int]
    closest_sample: str = ""
    closest_l2: float = float("nan")
    closest_ratio: float | None = None
    closest_train_id: int = -1
    closest_train_key: str = ""

    def __post_init__(self) -> None:
        if not self.closest_sample:  # the first generation is the closest until a nearer one is counted
            self.closest_sample, self.closest_l2, self.closest_ratio = self.sample, self.l2, self.ratio
            self.closest_train_id, self.closest_train_key = self.train_id, self.train_key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verification:
    """Outcome of :func:`verify`.

    n_samples, n_train; extracted: one :class:`Extraction` per unique training image (group);
    unique_extracted = len(extracted); n_extracting_samples: generations satisfying the rule;
    per-sample arrays (Q,): nearest ``train_ids``, ``l2``, ``ratio`` (float64, inf where undefined),
    ``is_extracted`` (bool).
    """

    n_samples: int
    n_train: int
    settings: VerifySettings
    neighbors: int
    extracted: list[Extraction]
    n_extracting_samples: int
    train_ids: np.ndarray
    l2: np.ndarray
    ratio: np.ndarray
    is_extracted: np.ndarray

    @property
    def unique_extracted(self) -> int:
        return len(self.extracted)

    def to_dict(self, *, per_sample: bool = False) -> dict[str, Any]:
        """The outcome as JSON-ready values: the counts, the settings and each :class:`Extraction`; with
        ``per_sample`` also the (Q,) arrays as lists, a ratio that is undefined (inf) as None. (`diffaudit
        verify` keeps those arrays in a file of their own.)"""
        out = {"n_samples": int(self.n_samples), "n_train": int(self.n_train), "settings": asdict(self.settings),
               "neighbors": int(self.neighbors), "unique_extracted": self.unique_extracted,
               "n_extracting_samples": int(self.n_extracting_samples), "extracted": [e.to_dict() for e in self.extracted]}
        if per_sample:
            out.update(train_ids=[int(i) for i in self.train_ids], l2=[float(v) for v in self.l2],
                       ratio=[float(v) if np.isfinite(v) else None for v in self.ratio],
                       is_extracted=[bool(v) for v in self.is_extracted])
        return out


def decide(knn: KnnResult, settings: VerifySettings, n_train: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(l2, ratio, extracted) per generation from its sorted kNN distances (paper §3, §5.1)."""
    n = settings.neighbourhood(n_train)
    l2 = knn.distances[:, 0]
    ratio = nearest_ratio(knn.distances, n=n, alpha=settings.alpha)
    ext = (l2 <= settings.delta) if settings.rule == "l2" else (ratio <= 1.0)
    return l2, ratio, ext


def count_unique(
    sample_ids: Sequence[str],
    train_ids: np.ndarray,
    l2: np.ndarray,
    ratio: np.ndarray,
    extracted: np.ndarray,
    train_images: Any,
    train_keys: Sequence[str],
    settings: VerifySettings,
    *,
    device: Any = "auto",
) -> list[Extraction]:
    """Credit each training image to its first extracting generation, a duplicate of an image
    credited before counting as that image (module rule, not chained), and keep the closest of the
    generations counted for it (``closest_*``)."""
    hits = np.flatnonzero(extracted)
    if len(hits) == 0:
        return []
    matched = np.unique(train_ids[hits])
    radius = max(settings.eidetic_delta, settings.dup_delta)
    neigh = radius_neighbors(train_images[matched], train_images, radius, device=device)
    eidetic: dict[int, int] = {}
    near: dict[int, set[int]] = {}  # matched image -> the training images within dup_delta of it, itself included
    for j, (idx, dist) in zip(matched.tolist(), neigh):
        eidetic[j] = int((dist <= settings.eidetic_delta).sum())
        near[j] = set(idx[dist <= settings.dup_delta].tolist()) | {j}
    order: dict[int, int] = {}  # credited image -> its rank in crediting order
    counts_as: dict[int, int] = {}  # matched image -> the credited image it counts as
    first: dict[int, Extraction] = {}
    for i in hits.tolist():
        j = int(train_ids[i])
        if j not in counts_as:
            earlier = near[j].intersection(order)
            counts_as[j] = min(earlier, key=order.__getitem__) if earlier else j
        c = counts_as[j]
        r = float(ratio[i])
        if c in first:
            e = first[c]
            e.n_matching_samples += 1
            if float(l2[i]) < e.closest_l2:
                e.closest_sample, e.closest_l2, e.closest_ratio = str(sample_ids[i]), float(l2[i]), r if np.isfinite(r) else None
                e.closest_train_id, e.closest_train_key = j, str(train_keys[j])
            continue
        order[c] = len(order)
        first[c] = Extraction(
            sample=str(sample_ids[i]), sample_index=int(i), train_id=j, train_key=str(train_keys[j]),
            l2=float(l2[i]), ratio=r if np.isfinite(r) else None, eidetic_k=eidetic[j], n_matching_samples=1,
            duplicates=sorted(near[j] - {j}),
        )
    return sorted(first.values(), key=lambda e: e.sample_index)


def verify(
    samples: Any,
    sample_ids: Sequence[str],
    train_images: Any,
    train_keys: Sequence[str],
    *,
    settings: VerifySettings | None = None,
    knn: KnnResult | None = None,
    backend: str = "torch",
    device: Any = "auto",
    compute: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> Verification:
    """Verify generations against a training set (module docstring).

    samples: uint8 (Q, H, W, C) (or a block source, see :func:`~diffaudit.distances.knn.knn_search`);
    train_images: uint8 (N, H, W, C), random access; ``knn``: a precomputed search of the samples
    against the training set with k ≥ n (else it is computed here).
    """
    s = (settings or VerifySettings()).validate()
    train = np.asarray(train_images.images if hasattr(train_images, "images") else train_images)
    n_train = len(train)
    if len(train_keys) != n_train:
        raise DiffauditError(f"{n_train} training images but {len(train_keys)} keys")
    n = s.neighbourhood(n_train)
    if knn is None:
        knn = knn_search(samples, train, n, backend=backend, device=device, compute=compute, progress=progress)
    if knn.distances.shape[1] < n:
        raise DiffauditError(f"the neighbour search holds {knn.distances.shape[1]} neighbours per sample, {n} are needed")
    if len(sample_ids) != len(knn.indices):
        raise DiffauditError(f"{len(knn.indices)} samples searched but {len(sample_ids)} sample ids")
    l2, ratio, ext = decide(knn, s, n_train)
    return verify_decided(sample_ids, knn.indices[:, 0], l2, ratio, ext, train, train_keys, settings=s, device=device)


def verify_decided(
    sample_ids: Sequence[str],
    train_ids: np.ndarray,
    l2: np.ndarray,
    ratio: np.ndarray,
    extracted: np.ndarray,
    train_images: Any,
    train_keys: Sequence[str],
    *,
    settings: VerifySettings,
    device: Any = "auto",
) -> Verification:
    """:func:`verify` from per-generation decisions already made by :func:`decide` (so a caller that
    searches in chunks keeps (Q,) arrays, never the (Q, n) neighbour lists): nearest ``train_ids``,
    ``l2``, ``ratio`` and ``extracted``, each (Q,)."""
    train = train_images.images if hasattr(train_images, "images") else train_images  # never read whole
    if not len(sample_ids) == len(train_ids) == len(l2) == len(ratio) == len(extracted):
        raise DiffauditError(f"{len(sample_ids)} sample ids but {len(train_ids)} decisions")
    n = neighborhood_size(len(train), settings.n_neighbors)
    found = count_unique(sample_ids, train_ids, l2, ratio, extracted, train, train_keys, settings, device=device)
    return Verification(len(sample_ids), len(train), settings, n, found, int(extracted.sum()), train_ids, l2, ratio, extracted)



def by_member(v: Verification, member: np.ndarray, n_members: int, sample_ids: Sequence[str], train_images: Any,
              train_keys: Sequence[str], *, device: Any = "auto") -> list[dict[str, int]]:
    """The pooled verification ``v`` of several models' generations (a pool of sample stores, paper §5.1: 2^16
    generations from each of 16 models) told per model: ``member`` (Q,) int in [0, ``n_members``), the store of
    each generation verified, in ``sample_ids``' order.

    Returns one dict per member: ``n_samples``; ``n_extracting_samples``; ``unique_extracted``, the training
    images that member's generations extract alone (counted as :func:`count_unique` counts the pool, so a
    model's own count); ``first_credited``, the pooled count's images first extracted by that member (these sum
    to ``v.unique_extracted``; the alone counts sum to at least it, an image extracted by two models counting
    in each)."""
    member = np.asarray(member)
    if member.shape != (v.n_samples,) or (len(member) and (member.min() < 0 or member.max() >= n_members)):
        raise DiffauditError(f"member must be ({v.n_samples},) integers in [0, {n_members}), got {member.shape}")
    credited = np.bincount(member[[e.sample_index for e in v.extracted]].astype(np.int64), minlength=n_members)
    out = []
    for k in range(n_members):
        rows = np.flatnonzero(member == k)
        alone = count_unique([sample_ids[i] for i in rows], v.train_ids[rows], v.l2[rows], v.ratio[rows],
                             v.is_extracted[rows], train_images, train_keys, v.settings, device=device)
        out.append({"member": k, "n_samples": int(len(rows)), "n_extracting_samples": int(v.is_extracted[rows].sum()),
                    "unique_extracted": len(alone), "first_credited": int(credited[k])})
    return out


#: How training resized an image before its random square crop (``check_prompt_map``'s ``resize``).
MAP_RESIZES = ("shorter-side", "none")


def check_prompt_map(
    images: np.ndarray,
    sample_ids: Sequence[str],
    captions: Sequence[str],
    prompt_map: dict[str, list[int]],
    train_images: Any,
    train_keys: Sequence[str],
    *,
    delta: float = DEFAULT_DELTA,
    select: Sequence[int] | None = None,
    resize: str = "shorter-side",
) -> list[dict[str, Any]]:
    """Check generations against their own prompt's training image(s) under every crop alignment.

    Paper §4.1 (verification): Stable Diffusion was trained on
    random square crops of images whose shorter side was first resized to the training resolution,
    so a memorized generation reproduces a window of the *resized* image. ``resize``:
    ``"shorter-side"`` (default) passes each training image through
    :func:`~diffaudit.data.transforms.resize_to_cover` to the generation's (h, w) before sliding the
    generation over it; ``"none"`` slides it over the image as stored.

    images: uint8 (Q, h, w, C) generations (or anything whose ``[i]`` is one); prompt_map: prompt ->
    training indices (the images that caption came from); train_images: anything indexable by those
    indices giving uint8 (H, W, C), sizes may differ (an array, or a
    :class:`~diffaudit.data.native.NativeImages`); ``select``: sample positions to check (default all).
    For each checked sample of a mapped prompt: the best training image and window. Returns dicts
    {prompt, sample, train_id, train_key, l2, offset, extracted}: l2 in [0, 1], offset the window's
    top-left (y, x) in the (resized) training image, extracted: ℓ2 ≤ δ (paper §4.1, verification).
    Each training image is read (and resized) once per run of consecutive generations of a prompt.
    """
    check_threshold(delta, "--delta")
    if resize not in MAP_RESIZES:
        raise DiffauditError(f"--map-resize must be one of {', '.join(MAP_RESIZES)}, got {resize!r}")
    out = []
    positions = range(len(sample_ids)) if select is None else select
    prepared: dict[tuple[int, int, int], np.ndarray] = {}  # (train id, h, w) -> training image, for this prompt
    last = None
    for i in positions:
        prompt = captions[i]
        targets = prompt_map.get(prompt)
        if not targets:
            continue
        if prompt != last:
            prepared, last = {}, prompt
        gen = np.asarray(images[i])
        h, w = gen.shape[:2]
        best = None
        for j in targets:
            if (j, h, w) not in prepared:
                t = np.asarray(train_images[j])
                prepared[(j, h, w)] = resize_to_cover(t, h, w) if resize == "shorter-side" else t
            d, off = crop_aligned_l2(gen, prepared[(j, h, w)])
            if best is None or d < best[0]:
                best = (d, off, j)
        d, off, j = best
        out.append({"prompt": prompt, "sample": str(sample_ids[i]), "train_id": int(j), "train_key": str(train_keys[j]),
                    "l2": d, "offset": list(off), "extracted": bool(d <= delta)})
    return out
