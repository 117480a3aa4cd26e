"""Pixels for the report: generations from a sample store, training images from the dataset.

Both sides are looked up by id and may be missing (a moved store, a dataset that cannot be loaded
here): lookups then return None and the report shows the id instead of failing. Images are
embedded as PNG ``data:`` URIs, so the HTML needs nothing outside itself.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import load_npy

# Loader options recorded in settings (cli.common.data_options) that load_dataset accepts.
DATA_OPTIONS = ("image_size", "center_crop", "subset", "subset_seed", "mode", "skip_bad", "cifar_root")


def png_bytes(image: np.ndarray, *, max_side: int = 256) -> bytes:
    """uint8 (H, W, C) or (H, W), C in {1, 3, 4} -> PNG bytes, downscaled to at most ``max_side``."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    img = Image.fromarray(a)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_uri(image: np.ndarray | None, *, max_side: int = 256) -> str | None:
    return None if image is None else data_uri(png_bytes(image, max_side=max_side))


def png_file_uri(path: Path, *, max_side: int = 1024) -> str | None:
    """A PNG/JPEG file re-encoded as a PNG data URI (decoded first, so only pixels are embedded)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")
            return image_uri(np.asarray(img), max_side=max_side)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class SampleImages:
    """Generations of a sample store by id (``manifest.json`` + ``shards/shard-NNNNNN.{npy,json}``).

    The shard sidecars are read once for their ``ids``; pixels are memory-mapped per shard on
    demand. Any other ``--samples`` input goes through ``diffaudit.store.read_samples`` when that
    is available.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._where: dict[str, tuple[Path, int]] = {}
        self._arrays: dict[Path, np.ndarray] = {}
        self._dataset = None
        if path is None:
            return
        if path.is_dir() and (path / "manifest.json").exists():
            self._index_store(path)
        else:
            self._dataset = _try_read_samples(path)

    def _index_store(self, path: Path) -> None:
        sidecars = sorted((path / "shards").glob("shard-*.json")) or sorted(path.glob("shard-*.json"))
        for side in sidecars:
            npy = side.with_suffix(".npy")
            if not npy.exists():
                continue
            try:
                ids = json.loads(side.read_text(encoding="utf-8")).get("ids", [])
            except (OSError, ValueError, AttributeError):
                continue
            for row, gid in enumerate(ids):
                self._where.setdefault(str(gid), (npy, row))

    def __len__(self) -> int:
        return len(self._where) if self._dataset is None else len(self._dataset)

    def get(self, gid: Any) -> np.ndarray | None:
        """uint8 (H, W, C) of generation ``gid``, or None when it cannot be found."""
        gid = str(gid)
        if self._dataset is not None:
            i = self._dataset_index().get(gid)
            return None if i is None else self._dataset.images[i]
        hit = self._where.get(gid)
        if hit is None:
            return None
        npy, row = hit
        try:
            arr = self._arrays.get(npy)
            if arr is None:
                arr = self._arrays[npy] = load_npy(npy, mmap=True)
            return np.asarray(arr[row])
        except (DiffauditError, OSError, ValueError, IndexError):
            return None

    def _dataset_index(self) -> dict[str, int]:
        if not hasattr(self, "_ds_index"):
            self._ds_index = self._dataset.index_of()
        return self._ds_index


def _try_read_samples(path: Path):
    try:
        from diffaudit.store import read_samples  # type: ignore[attr-defined]
    except ImportError:
        return _read_npz(path)
    try:
        return read_samples(str(path))
    except Exception:  # noqa: BLE001 - the report shows ids when pixels cannot be read
        return _read_npz(path)


class _NpzImages:
    """Minimal stand-in for an ImageDataset read from an ``.npz`` (keys ``npz:<index>``)."""

    def __init__(self, images: np.ndarray, keys: list[str]):
        self.images, self.keys = images, keys

    def __len__(self) -> int:
        return len(self.images)

    def index_of(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def _read_npz(path: Path):
    if path.suffix != ".npz" or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images = np.asarray(z["images"])
            keys = [str(k) for k in z["keys"]] if "keys" in z.files else [f"npz:{i}" for i in range(len(images))]
    except (OSError, ValueError, KeyError):
        return None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        return None
    if images.ndim == 3:
        images = images[..., None]
    return _NpzImages(images, keys)


def data_spec(settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(spec, loader options) of the dataset a command read, from its recorded settings.

    Accepts ``data: "spec"`` with the options flat in the settings or under ``data_options``,
    ``data: {"spec": ..., **options}`` and ``data: {"spec": ..., "options": {...}}`` (mia, shadows,
    inpaint).
    """
    data = settings.get("data")
    opts: dict[str, Any] = {}
    if isinstance(data, dict):
        spec = data.get("spec", data.get("path", data.get("data")))
        source = {**data, **data["options"]} if isinstance(data.get("options"), dict) else data
    else:
        spec = data
        source = settings.get("data_options") if isinstance(settings.get("data_options"), dict) else settings
    for k in DATA_OPTIONS:
        if k in source and source[k] is not None:
            opts[k] = source[k]
    return spec, opts


class TrainingImages:
    """Training images by key (preferred) or integer index, from ``load_dataset(spec, **options)``.

    ``error`` says why images are unavailable (the report prints it beside the ids).
    """

    def __init__(self, spec: Any, options: dict[str, Any], bases: tuple[Path, ...] = ()):
        self.spec, self.options = spec, options
        self.dataset = None
        self.error: str | None = None
        self._index: dict[str, int] = {}
        if not spec:
            self.error = "no dataset recorded in the settings"
            return
        from diffaudit.report.results import resolve_path

        local = resolve_path(spec, *bases)
        arg = str(local) if local is not None else str(spec)
        try:
            from diffaudit.data import load_dataset  # type: ignore[attr-defined]
        except ImportError:
            load_dataset = None
        try:
            if load_dataset is not None:
                self.dataset = load_dataset(arg, **options)
            else:
                self.dataset = _read_npz(Path(arg))
                if self.dataset is None:
                    self.error = f"cannot load {spec!r} here (diffaudit.data.load_dataset is unavailable)"
        except Exception as exc:  # noqa: BLE001 - render ids, say why
            self.error = f"cannot load {spec!r}: {exc}"
            self.dataset = None
        if self.dataset is not None:
            self._index = self.dataset.index_of()

    def get(self, key: Any = None, index: Any = None) -> np.ndarray | None:
        """uint8 (H, W, C) of the example with ``key`` (else ``index``), or None."""
        if self.dataset is None:
            return None
        if key is not None:
            # A key the dataset lacks means another dataset: its index would name another image.
            i = self._index.get(str(key))
        elif isinstance(index, (int, np.integer)) and 0 <= int(index) < len(self.dataset):
            i = int(index)
        else:
            i = None
        return None if i is None else np.asarray(self.dataset.images[i])
