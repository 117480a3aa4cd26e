"""Built-in datasets: ``digits`` (embedded) and ``cifar10`` / ``cifar10-test`` (shards on disk).

``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (UCI), bundled with scikit-learn (no
download). Values 0..16 are scaled to uint8 by ``round(v * 255 / 16)``; grayscale, C = 1; labels
0..9; keys ``digits:<index>``. ``image_size`` upsamples them (bilinear, see
:mod:`diffaudit.data.transforms`).

``cifar10`` (50,000 train images) and ``cifar10-test`` (10,000): WebDataset shards of 32x32 RGB
JPEGs with ``.cls`` labels, read by :mod:`diffaudit.data.shards`; keys like ``cat_0631``. Their
folder is, in order of precedence: the ``cifar_root`` option (``--cifar-root``), the environment
variable ``$DIFFAUDIT_CIFAR10``, or the first ``../shared/data/cifar10`` found relative to the
repository root, the current directory or one of its parents. Shards listed in the folder's
``SHA256SUMS`` are checked against it (once per process per unchanged file).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.data.entries import Listing, array_entries

CIFAR10_ENV = "DIFFAUDIT_CIFAR10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_FILES = {
    "cifar10": [f"cifar10-train-{i:06d}.tar" for i in range(5)],
    "cifar10-test": ["cifar10-test-000000.tar"],
}
BUILTIN_NAMES = ("digits", *CIFAR10_FILES)

_REPO_ROOT = Path(__file__).resolve().parents[3]
_verified: set[tuple[str, int, int]] = set()


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: uint8 (1797, 8, 8, 1) in [0, 255] (``round(v * 255 / 16)``), int64 labels (1797,).

    Read-only arrays (cached for the process).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def list_digits() -> Listing:
    """The 1,797 digits as entries ``digits:<i>``, labels 0..9."""
    images, labels = digits_arrays()
    return Listing(
        entries=array_entries(images, "digits", "digits", labels=labels),
        source="digits",
        has_labels=True,
        class_names=[str(i) for i in range(10)],
    )


def _search_roots() -> list[Path]:
    cwd = Path.cwd()
    # the checkout diffaudit runs from (an installed wheel's "root" is inside its environment: not searched)
    repo = [_REPO_ROOT] if (_REPO_ROOT / "pyproject.toml").is_file() else []
    bases = [*repo, cwd, *cwd.parents]
    out: list[Path] = []
    for base in bases:
        cand = (base / ".." / "shared" / "data" / "cifar10").resolve()
        if cand not in out:
            out.append(cand)
    return out


def find_cifar10_root(cifar_root: str | os.PathLike | None = None, *, name: str = "cifar10") -> Path:
    """The folder holding the CIFAR-10 shards of ``name`` (``cifar10`` or ``cifar10-test``).

    Raises:
        DiffauditError: the given folder lacks the shards, or none was found; the message says how
            to point diffaudit at them.
    """
    files = CIFAR10_FILES[name]
    how = (f"Point diffaudit at the folder holding {files[0]}: --cifar-root DIR (cifar_root=DIR) "
           f"or the environment variable {CIFAR10_ENV}=DIR.")
    explicit = [(cifar_root, "--cifar-root"), (os.environ.get(CIFAR10_ENV) or None, f"${CIFAR10_ENV}")]
    for value, origin in explicit:
        if value:
            root = Path(value).expanduser()
            missing = [f for f in files if not (root / f).is_file()]
            if missing:
                raise DiffauditError(f"{name}: {origin} is {root}, which lacks {', '.join(missing)}. {how}")
            return root
    searched = _search_roots()
    for root in searched:
        if all((root / f).is_file() for f in files):
            return root
    raise DiffauditError(
        f"{name}: the CIFAR-10 shards were not found (looked for {files[0]} in "
        f"{', '.join(str(p) for p in searched[:4])}{' ...' if len(searched) > 4 else ''}). {how}"
    )


def _read_sums(root: Path) -> dict[str, str]:
    sums = root / "SHA256SUMS"
    if not sums.is_file():
        return {}
    out = {}
    for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def verify_checksums(root: Path, files: list[str]) -> None:
    """Check ``files`` in ``root`` against ``root/SHA256SUMS`` (files it does not list are not checked).

    Raises:
        DiffauditError: a shard's SHA-256 differs from the pinned one (naming the shard).
    """
    sums = _read_sums(root)
    for f in files:
        expected = sums.get(f)
        if expected is None:
            continue
        path = root / f
        st = path.stat()
        token = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if token in _verified:
            continue
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != expected:
            raise DiffauditError(
                f"{path}: SHA-256 {h.hexdigest()} differs from {expected} pinned in {root / 'SHA256SUMS'}; "
                "the shard is damaged or replaced: restore it before trusting a run"
            )
        _verified.add(token)


def list_cifar10(name: str, cifar_root: str | os.PathLike | None, *, skip_bad: bool) -> Listing:
    """The CIFAR-10 split ``name`` (``cifar10`` = train, ``cifar10-test``) as entries, labels 0..9."""
    from diffaudit.data.shards import list_shards

    root = find_cifar10_root(cifar_root, name=name)
    files = CIFAR10_FILES[name]
    verify_checksums(root, files)
    listing = list_shards([root / f for f in files], source=name, skip_bad=skip_bad)
    listing.class_names = list(CIFAR10_CLASSES)
    return listing
