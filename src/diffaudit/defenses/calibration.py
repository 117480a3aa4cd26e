"""Planted near-duplicates and threshold calibration for the embedders.

:func:`plant_duplicates` makes, from real images, the near-duplicates a web-scale training set
holds (paper Section 4.2.1; Figure 4 shows re-encoded, shifted and re-lit copies): an exact copy, a
JPEG re-encode at quality 50, a shift by 1 and 2 pixels (edge pixels repeated), and brightness
×0.9 and ×1.1. :func:`calibrate` measures, per embedder, the similarity of every planted pair
and the similarity of every original to its nearest *other* original, and the recall and false-
positive rate at a threshold.

Measured on real CIFAR-10 (``cifar10-train-000000.tar``, 5,000 originals: ``load_dataset(shard,
subset=5000, subset_seed=0)``; 1,000 of them planted with each transformation, ``seed=0``). Recall =
planted pairs at or above the threshold; "distinct ≥ th" = originals whose nearest *other* original
reaches the threshold — an upper bound on false positives, since CIFAR-10 itself holds true
near-duplicates (e.g. the many white Audi photos; the paper removed 5,275 images at 0.85).

| embedder (defaults in bold)       | th        | exact | jpeg50 | shift1 | shift2 | bright −10% | bright +10% | distinct ≥ th |
|-----------------------------------|-----------|-------|--------|--------|--------|-------------|-------------|---------------|
| **pixel** ycc 8, max_shift 2      | 0.95      | 1.000 | 1.000  | 1.000  | 0.997  | 1.000       | 1.000       | 1.44 %        |
| **pixel** ycc 8, max_shift 2      | 0.96      | 1.000 | 1.000  | 1.000  | 0.995  | 1.000       | 1.000       | 0.74 %        |
| **pixel** ycc 8, max_shift 2      | **0.97**  | 1.000 | 1.000  | 1.000  | 0.988  | 1.000       | 1.000       | 0.44 %        |
| **pixel** ycc 8, max_shift 2      | 0.98      | 1.000 | 1.000  | 0.999  | 0.979  | 1.000       | 1.000       | 0.24 %        |
| pixel rgb 8, max_shift 2          | 0.97      | 1.000 | 0.997  | 1.000  | 0.988  | 1.000       | 1.000       | 0.46 %        |
| pixel gray 8, max_shift 2         | 0.97      | 1.000 | 1.000  | 1.000  | 0.986  | 1.000       | 1.000       | 0.50 %        |
| pixel ycc 8, max_shift 0          | 0.95      | 1.000 | 1.000  | 0.784  | 0.148  | 1.000       | 1.000       | 0.62 %        |
| pixel ycc 8, max_shift 0          | 0.97      | 1.000 | 1.000  | 0.499  | 0.044  | 1.000       | 1.000       | 0.16 %        |
| **phash** max_shift 2             | 0.9375    | 1.000 | 0.990  | 0.989  | 0.888  | 1.000       | 0.998       | 0.30 %        |
| **phash** max_shift 2             | **0.906** | 1.000 | 1.000  | 0.998  | 0.946  | 1.000       | 1.000       | 0.96 %        |
| **phash** max_shift 2             | 0.875     | 1.000 | 1.000  | 1.000  | 0.979  | 1.000       | 1.000       | 2.78 %        |
| phash max_shift 0 (classic)       | 0.906     | 1.000 | 1.000  | 0.324  | 0.001  | 1.000       | 0.999       | 0.12 %        |
| phash max_shift 0 (classic)       | 0.859     | 1.000 | 1.000  | 0.576  | 0.016  | 1.000       | 1.000       | 0.38 %        |

Nearest-other similarity of distinct originals (pixel ycc, shift views): median 0.79, 99th
percentile 0.956, 99.9th 0.989; planted shift-2 copies: 1st percentile 0.970. Without shift views a
2-pixel shift is not a near-duplicate for any pixel or hash embedding (recall ≤ 15 %), hence the
views. Colour: gray chains low-contrast horizon scenes on full CIFAR-10 into one false group of
329 images (ships, planes); ycc and rgb split it, and ycc keeps JPEG's colour loss harmless (rgb
misses 0.3 % of JPEG copies) at half rgb's search cost (97 vs 193 dimensions).

Full CIFAR-10 training set (50,000 images, ``diffaudit dedup --data cifar10``, flat index, CPU):

| embedder, threshold          | groups | images in groups | removed by --dedup | largest groups | time  |
|------------------------------|--------|------------------|--------------------|----------------|-------|
| pixel ycc 8, shift 2, 0.97   | 569    | 1,414            | 759                | 75, 69, 32, 17 | 270 s |
| pixel gray 8, shift 2, 0.97  | 578    | 1,673            | 886                | 329, 69, 32, 18| 472 s |
| phash, shift 2, 0.906        | 875    | 2,429            | 1,254              | 309, 71, 36, 33| 93 s  |

Pairs are overwhelmingly true near-duplicates (re-crops of one photo); the 69- and 32-image
groups are the white Audi photo series CIFAR-10 is known for. "Removed" is the greedy keep list's
count (each image kept unless an already-kept image is its near-duplicate), recomputed from those
runs' saved edges; cutting each group to its first member removed 845, 1,095 and 1,554. Chains of
near-duplicates (groups are connected components) are the failure mode of the groups: the largest ycc group (75) joins small dark objects on a plain blue sky (birds and planes),
gray's 329 joins horizon scenes, phash's 309 joins small objects on flat backgrounds — 64 bits
say little about a 32x32 image. The paper's count (5,275 at imagededup CNN similarity > 0.85) is
for a looser, semantic notion of duplicate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import numpy_rng
from diffaudit.defenses.embedders import Embedder, shift_images

TRANSFORMS = ("exact", "jpeg50", "shift1", "shift2", "bright-10", "bright+10")


def jpeg_reencode(image: np.ndarray, quality: int = 50) -> np.ndarray:
    """uint8 (H, W, C) -> the same image after a JPEG round trip at ``quality``."""
    mode = "L" if image.shape[-1] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode))
    return out[..., None] if mode == "L" else out


def shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate uint8 (H, W, C) by (dx, dy) pixels (right/down positive), repeating the edge pixels."""
    return shift_images(image[None], dx, dy)[0]


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiply pixel values by ``factor`` (clipped to [0, 255], rounded)."""
    return np.clip(np.round(image.astype(np.float64) * factor), 0, 255).astype(np.uint8)


def transform(image: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """Apply the planted transformation ``name`` (one of :data:`TRANSFORMS`); shifts draw a direction."""
    if name == "exact":
        return image.copy()
    if name == "jpeg50":
        return jpeg_reencode(image, 50)
    if name in ("shift1", "shift2"):
        k = int(name[-1])
        dx, dy = [(k, 0), (-k, 0), (0, k), (0, -k), (k, k), (-k, -k)][int(rng.integers(6))]
        return shift(image, dx, dy)
    if name == "bright-10":
        return brightness(image, 0.9)
    if name == "bright+10":
        return brightness(image, 1.1)
    raise DiffauditError(f"unknown planted transformation {name!r}; choose from {', '.join(TRANSFORMS)}")


@dataclass
class Planted:
    """A dataset with planted duplicates.

    Attributes:
        images: uint8 (N + P, H, W, C): the N originals first, then the P planted copies.
        pairs: int64 (P, 2): (original index, copy index) into ``images``.
        kinds: the transformation of each planted pair (P,).
    """

    images: np.ndarray
    pairs: np.ndarray
    kinds: list[str] = field(default_factory=list)


def plant_duplicates(images: np.ndarray, n_per_transform: int, *, seed: int = 0,
                     transforms: tuple[str, ...] = TRANSFORMS) -> Planted:
    """Append, for each transformation, ``n_per_transform`` transformed copies of distinct originals.

    The originals of each transformation are a seeded random choice (without replacement) from
    ``images``; copies are appended after the originals.
    """
    images = np.asarray(images)
    n = len(images)
    if n_per_transform > n:
        raise DiffauditError(f"cannot plant {n_per_transform} copies per transformation in {n} images")
    rng = numpy_rng(seed)
    copies, pairs, kinds = [], [], []
    for name in transforms:
        for i in rng.choice(n, size=n_per_transform, replace=False):
            copies.append(transform(images[i], name, rng))
            pairs.append((int(i), n + len(pairs)))
            kinds.append(name)
    all_images = np.concatenate([images, np.stack(copies)]) if copies else images.copy()
    return Planted(all_images, np.asarray(pairs, dtype=np.int64).reshape(-1, 2), kinds)


def view_similarity_matrix(views: np.ndarray, embedder: Embedder, *, block: int = 2048) -> np.ndarray:
    """Symmetric similarity of every pair under the embedder's shift tolerance: float32 (N, N).

    ``views`` (S, N, ...) from :meth:`Embedder.embed_views`; entry (i, j) is the largest similarity
    of any view of i against j's plain embedding or of any view of j against i's.
    """
    n = views.shape[1]
    m = np.full((n, n), -np.inf, dtype=np.float32)
    for v in views:
        for s in range(0, n, block):
            np.maximum(m[s:s + block], embedder.similarity(v[s:s + block], views[0]).astype(np.float32), out=m[s:s + block])
    return np.maximum(m, m.T)


def calibrate(embedder: Embedder, images: np.ndarray, *, n_per_transform: int = 200, seed: int = 0,
              thresholds: tuple[float, ...] | None = None) -> dict:
    """Similarities of planted pairs and of distinct nearest neighbours, and rates at thresholds.

    Returns a dict: per transformation ``min``/``p1``/``median`` similarity of the planted pairs;
    ``distinct`` quantiles (``p50``, ``p99``, ``p999``, ``max``) of each original's nearest-other
    similarity; for each threshold the ``recall`` per transformation (pairs at or above it) and the
    ``distinct_fpr`` (share of originals whose nearest other original is at or above it, an upper
    bound on false positives: real CIFAR-10 holds true near-duplicates too). Memory O(N²) with
    N = len(images) (use at most ~10,000 originals).
    """
    planted = plant_duplicates(images, n_per_transform, seed=seed)
    n = len(images)
    views = np.concatenate([embedder.embed_views(planted.images[s:s + 2048]) for s in range(0, len(planted.images), 2048)], axis=1)
    pair_sim = np.empty(len(planted.pairs))
    for p, (a, b) in enumerate(planted.pairs):
        pair_sim[p] = max(float(embedder.similarity(views[:, a], views[0, b:b + 1]).max()),
                          float(embedder.similarity(views[:, b], views[0, a:a + 1]).max()))
    kinds = np.asarray(planted.kinds)
    sim = view_similarity_matrix(views[:, :n], embedder)
    np.fill_diagonal(sim, -np.inf)
    nn = sim.max(1).astype(np.float64)
    del sim
    out: dict = {"embedder": embedder.settings(), "n_originals": n, "n_per_transform": n_per_transform, "planted": {}, "distinct": {
        "p50": float(np.quantile(nn, 0.5)), "p99": float(np.quantile(nn, 0.99)),
        "p999": float(np.quantile(nn, 0.999)), "max": float(nn.max())}}
    for k in TRANSFORMS:
        s = pair_sim[kinds == k]
        if len(s):
            out["planted"][k] = {"min": float(s.min()), "p1": float(np.quantile(s, 0.01)), "median": float(np.median(s))}
    out["at"] = {}
    for t in thresholds or (embedder.default_threshold,):
        out["at"][f"{t:.4g}"] = {
            "recall": {k: float((pair_sim[kinds == k] >= t).mean()) for k in TRANSFORMS if (kinds == k).any()},
            "distinct_fpr": float((nn >= t).mean()),
        }
    return out
