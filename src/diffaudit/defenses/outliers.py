"""Outliers in embedding space and their exposure to membership inference.

The paper observes that outlier images are more exposed than typical ones (Section 5: privacy
risk is not uniform; DP-style worst cases sit in the tails). Per image, the outlier score is its
mean embedding distance to its k nearest other images (distance = 1 − similarity of the
embedder: cosine distance, or Hamming distance / bits), k = 1,000 by default and capped at N − 1.
Larger = more of an outlier. Its Spearman rank correlation with a membership-inference score
(larger = more likely member, the project-wide direction) is positive when outliers are more
exposed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import faiss
import numpy as np
from scipy.stats import spearmanr

from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.dedup import embed_all
from diffaudit.defenses.embedders import Embedder

DEFAULT_K = 1000


def knn_mean_distance(embeddings: np.ndarray, *, metric: str, dim: int, k: int = DEFAULT_K, batch_size: int = 4096) -> np.ndarray:
    """Mean distance of each row to its k nearest other rows (exact faiss search): float64 (N,).

    Args:
        embeddings: float32 unit vectors (N, D) for ``cosine``, packed uint8 bits (N, dim/8) for ``hamming``.
        k: neighbours averaged; capped at N − 1.
    """
    n = len(embeddings)
    if n < 2:
        raise DiffauditError("outlier scores need at least 2 images")
    if k < 1:
        raise DiffauditError(f"k must be at least 1; got {k}")
    k = min(int(k), n - 1)
    if metric == "cosine":
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexFlatIP(x.shape[1])
    elif metric == "hamming":
        x = np.ascontiguousarray(embeddings, dtype=np.uint8)
        index = faiss.IndexBinaryFlat(dim)
    else:
        raise DiffauditError(f"unknown metric {metric!r}")
    index.add(x)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, batch_size):
        q = x[s:s + batch_size]
        score, nb = index.search(q, k + 1)
        dist = 1.0 - score.astype(np.float64) if metric == "cosine" else score.astype(np.float64) / dim
        self_hit = nb == np.arange(s, s + len(q))[:, None]
        # drop the image itself (not necessarily first when exact duplicates tie); else the farthest
        drop = np.where(self_hit.any(1), self_hit.argmax(1), k)
        keep = np.ones_like(self_hit)
        keep[np.arange(len(q)), drop] = False
        out[s:s + len(q)] = dist[keep].reshape(len(q), k).mean(1)
    return out


def outlier_scores(images: np.ndarray, embedder: Embedder, *, k: int = DEFAULT_K, batch_size: int = 4096) -> np.ndarray:
    """Outlier score of every image (uint8 (N, H, W, C)): mean distance to its k nearest neighbours."""
    emb = embed_all(embedder, images, batch_size=batch_size)
    return knn_mean_distance(emb, metric=embedder.metric, dim=embedder.dim, k=k, batch_size=batch_size)


@dataclass
class OutlierCorrelation:
    """Spearman correlation between outlier scores and a membership-inference score.

    Attributes:
        rho: Spearman's rank correlation in [-1, 1] (> 0: outliers score as more likely members).
        pvalue: two-sided p-value of rho = 0.
        n: examples used.
    """

    rho: float
    pvalue: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def outlier_mia_correlation(outlier: np.ndarray, mia_score: np.ndarray) -> OutlierCorrelation:
    """Spearman correlation of ``outlier`` (N,) with ``mia_score`` (N,) (larger = more likely member).

    Raises:
        DiffauditError: arrays of different lengths, fewer than 3 examples, or non-finite values (naming the array).
    """
    a, b = np.asarray(outlier, np.float64), np.asarray(mia_score, np.float64)
    for name, v in (("outlier scores", a), ("membership scores", b)):
        if v.ndim != 1:
            raise DiffauditError(f"{name}: expected one value per example (N,); got shape {v.shape}")
        if not np.isfinite(v).all():
            raise DiffauditError(f"{name}: {int((~np.isfinite(v)).sum())} non-finite values")
    if len(a) != len(b):
        raise DiffauditError(f"outlier scores ({len(a)}) and membership scores ({len(b)}) differ in length")
    if len(a) < 3:
        raise DiffauditError("a correlation needs at least 3 examples")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise DiffauditError("a constant score has no rank correlation")
    res = spearmanr(a, b)
    return OutlierCorrelation(rho=float(res.statistic), pvalue=float(res.pvalue), n=len(a))


def outlier_exposure(images: np.ndarray, mia_score: np.ndarray, *, embedder: Embedder | None = None,
                     k: int = DEFAULT_K, n_bins: int = 5, rows: np.ndarray | None = None) -> dict:
    """What the report shows: are outliers more exposed to membership inference?

    Args:
        images: uint8 (N, H, W, C), the examples the MIA scored (members and non-members alike).
        mia_score: (N,) membership score of each, larger = more likely member.
        embedder: default the ``pixel`` embedder (no shift views: alignment does not matter here).
        k: neighbours of the outlier score (capped at N − 1).
        n_bins: outlier-score quantile bins for the per-bin mean MIA score.
        rows: when given, ``mia_score`` belongs to ``images[rows]`` only (e.g. the members): outlier
            scores are still measured against all ``images``.

    Returns:
        ``{"k", "n_images", "embedder", "spearman": {rho, pvalue, n}, "bins": [{outlier_lo, outlier_hi, n,
        mean_mia_score}]}``; ``n_images``: the images the outlier scores were measured against (``k`` =
        ``n_images`` − 1: every other image).
    """
    from diffaudit.defenses.embedders import get_embedder

    emb = embedder or get_embedder("pixel", max_shift=0)
    out = outlier_scores(np.asarray(images), emb, k=k)
    n_all = len(out)
    if rows is not None:
        out = out[np.asarray(rows, dtype=np.int64)]
    corr = outlier_mia_correlation(out, mia_score)
    score = np.asarray(mia_score, np.float64)
    edges = np.quantile(out, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, out, side="right") - 1, 0, n_bins - 1)
    bins = [{"outlier_lo": float(edges[b]), "outlier_hi": float(edges[b + 1]), "n": int((which == b).sum()),
             "mean_mia_score": float(score[which == b].mean()) if (which == b).any() else None} for b in range(n_bins)]
    return {"k": min(int(k), n_all - 1), "n_images": n_all, "embedder": emb.settings(), "spearman": corr.to_dict(),
            "bins": bins}
