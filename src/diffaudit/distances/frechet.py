"""Fréchet distance between two Gaussians fitted to feature vectors (FID, Heusel et al. 2017).

    FID = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})

diffaudit does not ship or download an Inception network: the features (e.g. Inception-v3 pool3,
2048-d) are computed elsewhere and passed in, so any generator's samples (paper Table 1 compares
memorization at equal FID) can be compared without running untrusted model code here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import linalg

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import open_npz
from diffaudit.core.npz_arrays import read_npz_array


def gaussian_stats(features: np.ndarray, *, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) (unbiased) of float features (N ≥ 2, d)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise DiffauditError(f"{name}: need a (N ≥ 2, d) feature matrix, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise DiffauditError(f"{name}: features contain NaN or infinite values")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """FID between N(μ_a, Σ_a) and N(μ_b, Σ_b); ≥ 0, smaller = closer distributions."""
    mu_a, mu_b = np.atleast_1d(mu_a).astype(np.float64), np.atleast_1d(mu_b).astype(np.float64)
    sa, sb = np.atleast_2d(sigma_a).astype(np.float64), np.atleast_2d(sigma_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or sa.shape != sb.shape or sa.shape != (mu_a.size, mu_a.size):
        raise DiffauditError(f"FID statistics have mismatched shapes: {mu_a.shape}, {sa.shape}, {mu_b.shape}, {sb.shape}")
    covmean, _ = linalg.sqrtm(sa @ sb, disp=False)
    if not np.isfinite(covmean).all():
        # singular product: offset the diagonals (as the reference implementation does)
        eps = 1e-6 * np.eye(sa.shape[0])
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(0.0, diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(covmean)))


def fid_from_file(path: str | Path) -> float:
    """FID from an ``.npz`` holding either feature matrices ``samples`` and ``reference`` (N, d),
    or statistics ``mu_samples``, ``sigma_samples``, ``mu_reference``, ``sigma_reference``."""
    p = Path(path)
    flag = f"--fid-features {p}"
    data = _read_features(p, flag)
    if {"samples", "reference"} <= data.keys():
        ma, sa = gaussian_stats(data["samples"], name=f"{flag}: samples")
        mb, sb = gaussian_stats(data["reference"], name=f"{flag}: reference")
    elif {"mu_samples", "sigma_samples", "mu_reference", "sigma_reference"} <= data.keys():
        ma, sa, mb, sb = data["mu_samples"], data["sigma_samples"], data["mu_reference"], data["sigma_reference"]
    else:
        raise DiffauditError(
            f"{flag}: expected arrays `samples` and `reference` (features) or "
            f"`mu_samples`, `sigma_samples`, `mu_reference`, `sigma_reference`; found {sorted(data)}"
        )
    try:
        return frechet_distance(ma, sa, mb, sb)
    except DiffauditError as exc:
        raise DiffauditError(f"{flag}: {exc}") from None


def _read_features(p: Path, flag: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``p``; a missing file, a folder or a file that is no readable ``.npz``
    without pickles is a one-line :class:`DiffauditError` starting with ``flag``."""
    try:
        npz = open_npz(p, kind=".npz file", expected="an .npz with feature matrices `samples` and `reference`",
                       missing=f"{p}: file does not exist")
    except DiffauditError as exc:  # open_npz names the file (a folder, missing, not an .npz): the flag goes first
        raise DiffauditError(f"--fid-features {exc}") from None
    try:
        with npz as z:
            return {k: read_npz_array(z, flag, k) for k in z.files}  # sizes checked first
    except (ValueError, OSError) as exc:
        raise DiffauditError(f"{flag}: not a readable .npz without pickles ({exc})") from None
