"""Seeded subsets: which N of a source's examples a ``subset=N`` load keeps."""

from __future__ import annotations

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed, numpy_rng


def choose_subset(n_total: int, n: int, seed: int, source: str = "dataset") -> np.ndarray:
    """Positions of a seeded random subset of ``n`` of ``n_total`` examples.

    Drawn without replacement by ``numpy_rng(derive_seed(seed, "data-subset")).choice`` and then
    sorted, so the subset keeps the source's order and the same (n_total, n, seed) always gives the
    same positions.

    Returns:
        int64 array (n,), strictly increasing, values in [0, n_total).

    Raises:
        DiffauditError: ``n`` is not in [1, n_total].
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DiffauditError(f"--subset must be a positive number of examples; got {n!r}")
    if n > n_total:
        raise DiffauditError(f"--subset {n} asks for more examples than {source} has ({n_total}); leave "
                             "--subset out to use all of them")
    rng = numpy_rng(derive_seed(int(seed), "data-subset"))
    return np.sort(rng.choice(n_total, size=int(n), replace=False)).astype(np.int64)
