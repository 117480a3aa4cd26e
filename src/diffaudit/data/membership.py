"""Membership matrices: which examples each shadow model trains on (the LiRA design).

LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles"; used by Carlini
et al. 2023, Section 5.1) trains M shadow models, each on a random half of the data, so that every
example is IN the training set of some models and OUT of the others, and fits per-example IN/OUT
loss distributions. ``matrix[i, k]`` is True when example i is IN the training set of model k.

Construction (balanced per example, as in the LiRA reference code): for every example (row) draw M
uniform numbers and mark IN the M/2 models with the smallest ones, i.e. a uniformly random set of
exactly M/2 models. Every row therefore has exactly M/2 IN; every column (model) holds each
example independently with probability 1/2, so about N/2 examples (a binomial count, N/2 +- sqrt(N)/2
typically). The uniform numbers come from one generator seeded with
``derive_seed(seed, "membership", M)`` and are drawn row by row, so the matrix for N examples is
the first N rows of the matrix for any larger N (same seed and M).

File format (``.npz``, never pickled): ``membership`` bool (N, M), ``keys`` unicode (N,) (the
dataset's ids, row order), ``seed`` int64 scalar, ``format_version`` int64 scalar.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import open_npz, save_npz_atomic
from diffaudit.core.npz_arrays import read_npz_array
from diffaudit.core.seeds import derive_seed, numpy_rng

#: The most shadow models a membership matrix plans: the paper trains 16, LiRA's own study up to 256;
#: 10^11 columns asked for terabytes.
MAX_MODELS = 4096

FORMAT_VERSION = 1
_INT64 = np.iinfo(np.int64)


def make_membership(n_examples: int, n_models: int = 16, seed: int = 0) -> np.ndarray:
    """A seeded membership matrix: bool (n_examples, n_models), every row IN for exactly n_models / 2.

    Args:
        n_examples: N >= 1.
        n_models: M, even, >= 2 (the paper: 16).
        seed: any integer; the same (seed, M) gives the same rows.

    Raises:
        DiffauditError: N < 1, or M odd or < 2.
    """
    for name, v in (("n_examples", n_examples), ("n_models", n_models), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DiffauditError(f"{name} must be an integer; got {v!r}")
    if n_examples < 1:
        raise DiffauditError(f"a membership matrix needs at least one example; got n_examples={n_examples}")
    if n_models < 2 or n_models % 2 or n_models > MAX_MODELS:
        raise DiffauditError(
            f"the number of models must be even, at least 2 (each example is IN for exactly half of them) and at most "
            f"{MAX_MODELS:,}; got {n_models}"
        )
    rng = numpy_rng(derive_seed(int(seed), "membership", int(n_models)))
    u = rng.random((int(n_examples), int(n_models)))
    chosen = np.argsort(u, axis=1, kind="stable")[:, : n_models // 2]
    matrix = np.zeros((int(n_examples), int(n_models)), dtype=bool)
    np.put_along_axis(matrix, chosen, True, axis=1)
    return matrix


def target_split(n_examples: int, n_train: int, seed: int = 0) -> np.ndarray:
    """A two-column matrix for one target model: column 0 holds ``n_train`` seeded random examples
    (the target's training set), column 1 the rest (never trained; they are the non-members).

    Every row is IN for exactly one of the two columns, so it is a valid membership matrix.
    """
    if not 1 <= n_train < n_examples:
        raise DiffauditError(f"the training-set size must lie in [1, {n_examples - 1}] (some examples must stay unseen); got {n_train}")
    chosen = numpy_rng(derive_seed(int(seed), "target-split", int(n_examples))).choice(n_examples, n_train, replace=False)
    matrix = np.zeros((n_examples, 2), dtype=bool)
    matrix[:, 1] = True
    matrix[chosen, 0], matrix[chosen, 1] = True, False
    return matrix


def smallest_column(matrix: np.ndarray) -> tuple[int, int]:
    """(k, n): the column of a membership matrix, bool (N, M), with the fewest examples IN, and how many (the
    first such column where several tie): the training set a batch size must fit, under DP-SGD."""
    sizes = np.asarray(matrix, dtype=bool).sum(axis=0)
    k = int(np.argmin(sizes))
    return k, int(sizes[k])


@dataclass(frozen=True)
class Membership:
    """A membership matrix with the ids of its rows.

    Attributes:
        matrix: bool (N, M); ``matrix[i, k]`` = example i is IN model k's training set.
        keys: N example ids (the dataset's keys, in row order).
        seed: the seed that made it.
    """

    matrix: np.ndarray
    keys: list[str]
    seed: int

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_examples(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_models(self) -> int:
        return int(self.matrix.shape[1])

    def validate(self, where: str = "membership matrix") -> None:
        """Check shape, dtype, ids and the half-IN rows; raises :class:`DiffauditError` naming the problem."""
        m = self.matrix
        if not isinstance(m, np.ndarray) or m.dtype != np.bool_ or m.ndim != 2:
            raise DiffauditError(f"{where}: the matrix must be a bool array (N examples, M models); "
                                 f"got {getattr(m, 'dtype', type(m))} {getattr(m, 'shape', '')}")
        n, k = m.shape
        if k < 2 or k % 2:
            raise DiffauditError(f"{where}: {k} models; the number of models must be even and at least 2")
        if len(self.keys) != n:
            raise DiffauditError(f"{where}: {len(self.keys)} keys for {n} rows")
        if len(set(self.keys)) != n:
            raise DiffauditError(f"{where}: the keys are not unique")
        counts = m.sum(axis=1)
        bad = np.flatnonzero(counts != k // 2)
        if bad.size:
            i = int(bad[0])
            raise DiffauditError(
                f"{where}: example {self.keys[i]!r} (row {i}) is IN for {int(counts[i])} of {k} models; "
                f"every example must be IN for exactly {k // 2}"
            )
        if not (_INT64.min <= int(self.seed) <= _INT64.max):
            raise DiffauditError(f"{where}: seed {self.seed} does not fit in 64 bits")

    def column_indices(self, k: int) -> np.ndarray:
        """Dataset positions (int64, increasing) of the examples IN model ``k``'s training set."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.n_models:
            raise DiffauditError(f"model index {k!r} is out of range: the membership matrix has {self.n_models} models (0..{self.n_models - 1})")
        return np.flatnonzero(self.matrix[:, int(k)]).astype(np.int64)

    def in_models(self, i: int) -> np.ndarray:
        """Model indices (int64, increasing) whose training set holds example ``i``."""
        return np.flatnonzero(self.matrix[int(i)]).astype(np.int64)

    def check_keys(self, keys: Sequence[str], where: str = "membership matrix", dataset: str = "the dataset") -> None:
        """Raise :class:`DiffauditError` unless ``keys`` equal this matrix's keys, in order (naming the first difference)."""
        keys = list(keys)
        if len(keys) != self.n_examples:
            raise DiffauditError(
                f"{where} has {self.n_examples} examples but {dataset} has {len(keys)} "
                f"({'more' if len(keys) > self.n_examples else 'fewer'} by {abs(len(keys) - self.n_examples)}); "
                "make the matrix from the same dataset and loader options (subset, skip-bad)"
            )
        for i, (a, b) in enumerate(zip(self.keys, keys)):
            if a != b:
                raise DiffauditError(
                    f"{where} does not match {dataset}: example {i} is {a!r} in the matrix but {b!r} in the dataset; "
                    "make the matrix from the same dataset and loader options"
                )


def save_membership(path: str | os.PathLike, matrix: np.ndarray, keys: Sequence[str], seed: int) -> Path:
    """Validate and write the membership file atomically (``.npz``, see the module doc); returns its path."""
    mem = Membership(matrix=np.asarray(matrix), keys=[str(k) for k in keys], seed=int(seed))
    key_array = np.array(mem.keys, dtype=str) if mem.keys else np.zeros(0, dtype="<U1")
    return save_npz_atomic(
        path,
        membership=mem.matrix,
        keys=key_array,
        seed=np.array(mem.seed, dtype=np.int64),
        format_version=np.array(FORMAT_VERSION, dtype=np.int64),
    )


def load_membership(path: str | os.PathLike, dataset=None) -> Membership:
    """Read a membership file; with ``dataset`` (an :class:`ImageDataset`), check its keys match.

    Raises:
        DiffauditError: a missing or unreadable file, a missing or malformed array, rows not half IN, or a
            dataset whose size or keys differ (naming the size difference or the first differing key).
    """
    path = Path(path)
    npz = open_npz(path, kind="membership file", expected="a membership file (an .npz with `membership`, `keys`, `seed`)",
                   missing=f"membership file {path} does not exist (make one with `diffaudit membership`)")
    arrays = {}
    with npz:
        for name in ("membership", "keys", "seed", "format_version"):
            if name not in npz.files:
                if name == "format_version":  # files written before versions were recorded
                    continue
                raise DiffauditError(f"{path}: not a membership file: no `{name}` array (it holds {', '.join(npz.files)})")
            try:
                arrays[name] = read_npz_array(npz, path, name)  # declared size checked before allocating
            except ValueError as exc:
                raise DiffauditError(f"{path}: array `{name}` cannot be read without unpickling ({exc}); refused") from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DiffauditError(f"{path}: array `{name}` is damaged or truncated ({exc})") from None
    raw_version = arrays.get("format_version", np.array(FORMAT_VERSION))
    if raw_version.shape != () or raw_version.dtype.kind not in "iu":
        raise DiffauditError(f"{path}: `format_version` must be an integer scalar; got {raw_version.dtype} {raw_version.shape}")
    version = int(raw_version)
    if version > FORMAT_VERSION:
        raise DiffauditError(f"{path}: membership format version {version} is newer than this diffaudit reads ({FORMAT_VERSION})")
    keys, seed = arrays["keys"], arrays["seed"]
    if keys.dtype.kind != "U" or keys.ndim != 1:
        raise DiffauditError(f"{path}: `keys` must be a 1-d unicode array; got {keys.dtype} {keys.shape}")
    if seed.shape != () or seed.dtype.kind not in "iu":
        raise DiffauditError(f"{path}: `seed` must be an integer scalar; got {seed.dtype} {seed.shape}")
    mem = _build(path, arrays["membership"], [str(k) for k in keys.tolist()], int(seed))
    if dataset is not None:
        mem.check_keys(dataset.keys, where=f"membership file {path}",
                       dataset=f"dataset {getattr(dataset, 'source', '') or 'given'}")
    return mem


def _build(path: Path, matrix: np.ndarray, keys: list[str], seed: int) -> Membership:
    try:
        return Membership(matrix=matrix, keys=keys, seed=seed)
    except DiffauditError as exc:
        raise DiffauditError(f"{path}: {str(exc).removeprefix('membership matrix: ')}") from None
