"""Pixels for the report: generations from a sample store, training images from the dataset.

Both sides are looked up by id and may be missing (a moved store, a dataset that cannot be loaded
here): lookups then return None and the report shows the id instead of failing. Images are
embedded as PNG ``data:`` URIs, so the HTML needs nothing outside itself.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError

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
    """An image file re-encoded as a PNG data URI (decoded first, so only pixels are embedded); None when
    it cannot be read or :func:`~diffaudit.data.images.decode_image` refuses it (a format other than the
    few it decodes, such as EPS, which Pillow would hand to Ghostscript; more pixels than its cap)."""
    from diffaudit.data.images import BadImageError, decode_image

    try:
        return image_uri(decode_image(Path(path).read_bytes(), str(path)), max_side=max_side)
    except (OSError, BadImageError):
        return None


class SampleImages:
    """Generations of a ``--samples`` input by id.

    A sample store is read through its own checked reader (:meth:`SampleStore.read_shard`), one
    shard at a time and only when one of its generations is asked for, so the report never shows
    pixels the store itself would refuse (a shard of another run, a sidecar that disagrees with the
    manifest). A refused or unreadable shard's generations come back as None, like a missing id, and
    ``error`` says why (the report shows those generations by id). Any other input goes through
    ``diffaudit.store.read_samples`` (or a plain ``.npz`` reader).

    An input from outside the reported folder (``trusted`` False) is shown only when its own
    :func:`~diffaudit.store.samples_identity` equals ``identity``, the one the result recorded (a store's
    manifest, a file's contents, a folder's pixels): a result folder from elsewhere may name any folder
    on this machine, and without the check the report would embed its pictures as "generations".
    Otherwise every generation comes back as None and ``refusal`` says why. ``verified``: the ids of the
    generations a ``verify --from-extract`` result checked (its ``verified_medoids``), whose identity it
    recorded: an image folder's or shards' identity is then that of those generations, not of all of them.
    """

    def __init__(self, path: Path | str | None, *, trusted: bool = True, identity: Any = None, verified: Any = None):
        self.path = path
        self.refusal: str | None = None
        self._store = None
        self._layout = (0, 0, 0)  # per_prompt, n_total, shard_size of a store's manifest
        self._shards: dict[int, np.ndarray | None] = {}  # shard index -> memory-mapped pixels (None: refused)
        self._refused: dict[int, str] = {}
        self._finished: set[int] = set()  # a store's finished shards, listed once
        self._dataset = None
        if path is None:
            return
        from diffaudit.store import SampleStore

        if not trusted and not (isinstance(identity, str) and identity):
            self.refusal = (f"{path} lies outside the reported folder and the result records no samples_identity to "
                            "check it against (a result folder from elsewhere may name any folder on this machine)")
        elif SampleStore.is_store(path):
            self.refusal = None if trusted else _identity_check(path, identity, None)[0]
            if self.refusal is None:
                self._open_store(path)
        else:
            self._dataset = _try_read_samples(path)
            if not trusted:  # the identity vouches for the verified generations only: the others are never shown
                self.refusal, self._dataset = _identity_check(path, identity, self._dataset, verified)

    @classmethod
    def refused(cls, path: Path, why: str) -> "SampleImages":
        """The generations of ``path``, none of which is shown: every lookup is None and ``refusal`` says ``why``."""
        images = cls(None)
        images.path, images.refusal = path, why
        return images

    def _open_store(self, path: Path) -> None:
        from diffaudit.store import SampleStore

        try:
            store = SampleStore.open(path)
            self._layout = tuple(int(store.manifest[k]) for k in ("per_prompt", "n_total", "shard_size"))
            self._finished = set(store.completed())  # one listing (on an object store, kept for the reads)
        except DiffauditError as exc:  # e.g. a manifest that is not valid JSON: every generation by id
            self._refused[-1] = str(exc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._refused[-1] = (f"{path}/manifest.json does not say how the store is laid out ({type(exc).__name__}: "
                                 f"{exc}); it was edited or damaged")
        else:
            self._store = store

    @property
    def error(self) -> str | None:
        """Why some generations cannot be shown (None when every lookup so far could be read)."""
        if not self._refused:
            return None
        first = next(iter(self._refused.values()))
        more = len(self._refused) - 1
        return first if not more else f"{first} (and {more} more shard{'s' if more > 1 else ''} refused)"

    def __len__(self) -> int:
        if self._dataset is not None:
            return len(self._dataset)
        if self._store is None:
            return 0
        return sum(self._store.plan(k).stop - self._store.plan(k).start for k in self._finished)

    def get(self, gid: Any) -> np.ndarray | None:
        """uint8 (H, W, C) of generation ``gid``, or None when it cannot be found or read."""
        gid = str(gid)
        if self._dataset is not None:
            i = self._dataset_index().get(gid)
            return None if i is None else self._dataset.images[i]
        if self._store is None:
            return None
        where = _locate(gid, *self._layout)
        if where is None:
            return None
        shard, row = where
        images = self._shard(shard)
        return None if images is None else np.asarray(images[row])

    def prompt_of(self, gid: Any) -> str | None:
        """The prompt generation ``gid`` was made from (a store's ``prompts[P]`` for ``p<P>-i<I>``, another
        input's caption), None when it has none or is not found (an unconditional model's generations)."""
        gid = str(gid)
        if self._dataset is not None:
            i = self._dataset_index().get(gid)
            captions = self._dataset.captions
            return None if i is None or captions is None else captions[i]
        if self._store is None or _locate(gid, *self._layout) is None:
            return None
        prompts = self._store.manifest.get("prompts")
        p, _ = _id_parts(gid)
        prompt = prompts[p] if isinstance(prompts, list) and p < len(prompts) else None
        return prompt if isinstance(prompt, str) else None

    def _shard(self, index: int) -> np.ndarray | None:
        """Memory-mapped pixels of finished shard ``index`` through the store's checked reader, once per
        shard; None (and the reason in ``error``) when the store refuses it or it is unfinished."""
        if index not in self._shards:
            self._shards[index] = None
            if index in self._finished:
                try:
                    self._shards[index], _ = self._store.read_shard(index, mmap=True)
                except DiffauditError as exc:
                    self._refused[index] = str(exc)
                except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:  # a malformed manifest or sidecar
                    self._refused[index] = f"{self.path}: shard {index} cannot be read ({type(exc).__name__}: {exc})"
        return self._shards[index]

    def _dataset_index(self) -> dict[str, int]:
        if not hasattr(self, "_ds_index"):
            self._ds_index = self._dataset.index_of()
        return self._ds_index


def _verified_subset(path: Path, dataset: Any, verified: Any) -> Any:
    """What a command that read ``path`` as ``dataset`` computed its samples_identity of: with ``verified``
    (the ``verified_medoids`` of ``verify --from-extract``, which records the identity of the medoids it
    selected, cli.verify) those generations of an image folder or shards, in that order; else ``dataset``.
    A store's or a file's identity does not depend on the generations, so they keep ``dataset``. Raises
    KeyError for a medoid ``dataset`` lacks (another input), and for ``verified`` that is not a list of ids
    or is empty (an empty subset's identity depends on its image shape alone, so anyone could name it)."""
    if dataset is None or verified is None or path.is_file():
        return dataset
    if not isinstance(verified, list) or not verified:  # an empty subset's identity is one of its shape alone
        raise KeyError("the result's verified_medoids are not a list of generation ids")
    index = dataset.index_of()
    return dataset.subset([index[str(m)] for m in verified])


def _identity_check(path: Path | str, recorded: str, dataset: Any, verified: Any = None) -> tuple[str | None, Any]:
    """``(None, shown)`` when ``path`` (read as ``dataset``; None for a store) is the input whose
    samples_identity the result ``recorded``, ``shown`` being the generations that identity is of (its
    ``verified`` ones, see :func:`_verified_subset`); else ``(why its images are not shown, None)``."""
    try:
        from diffaudit.store import samples_identity

        shown = _verified_subset(Path(path), dataset, verified)
        actual = samples_identity(str(path), shown)
    except Exception as exc:  # noqa: BLE001 - an identity that cannot be computed is not the recorded one
        actual = f"unknown ({type(exc).__name__}: {exc})"
    if actual == recorded:
        return None, shown
    return (f"{path} lies outside the reported folder and is not the input the result records (samples_identity "
            f"{actual}, recorded {recorded}): a result folder from elsewhere may name any folder on this machine"), None


def _id_parts(gid: str) -> tuple[int, int]:
    """(prompt, image) of a generation id ``p<prompt>-i<image>`` (one matching ``GENERATION_ID``)."""
    prompt, image = gid[1:].split("-i")
    return int(prompt), int(image)


def _locate(gid: str, per_prompt: int, n_total: int, shard_size: int) -> tuple[int, int] | None:
    """(shard index, row) where a store laid out by its manifest (``per_prompt``, ``n_total``,
    ``shard_size``) plans generation ``gid`` = ``p<prompt>-i<image>`` (ordinal ``prompt * per_prompt +
    image``, as :mod:`diffaudit.store.sample_store` numbers them), or None for an id it does not plan.

    The store's reader refuses a shard whose sidecar ids differ from this plan, so the row of a shard
    it accepts holds exactly ``gid``.
    """
    from diffaudit.store.sample_store import GENERATION_ID

    if not GENERATION_ID.fullmatch(gid) or shard_size < 1:
        return None
    prompt, image = _id_parts(gid)
    ordinal = prompt * per_prompt + image
    if image >= per_prompt or ordinal >= n_total:
        return None
    return divmod(ordinal, shard_size)


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
        self.labels = self.captions = None  # what dataset_digest reads beside pixels and keys

    def __len__(self) -> int:
        return len(self.images)

    def index_of(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def _read_npz(path: Path):
    """``images`` (and ``keys``) of an ``.npz`` as an :class:`_NpzImages`, each array's declared size checked
    before it is allocated (:func:`~diffaudit.core.npz_arrays.read_npz_array`); None when it cannot be read."""
    from diffaudit.core.io import open_npz
    from diffaudit.core.npz_arrays import read_npz_array

    if path.suffix != ".npz" or not path.exists():
        return None
    try:
        with open_npz(path) as z:
            images = np.asarray(read_npz_array(z, path, "images"))
            keys = ([str(k) for k in read_npz_array(z, path, "keys")] if "keys" in z.files
                    else [f"npz:{i}" for i in range(len(images))])
    except (DiffauditError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        return None
    if images.ndim == 3:
        images = images[..., None]
    return _NpzImages(images, keys)


def _dataset_digest(dataset: Any) -> str:
    """:func:`~diffaudit.data.digest.dataset_digest` of ``dataset``; "unknown" when it cannot be computed."""
    try:
        from diffaudit.data.digest import dataset_digest

        return dataset_digest(dataset)
    except Exception as exc:  # noqa: BLE001 - a digest that cannot be computed matches nothing
        return f"unknown ({type(exc).__name__})"


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


def data_digest(settings: dict[str, Any]) -> Any:
    """The :func:`~diffaudit.data.digest.dataset_digest` a command recorded of the data it read:
    ``data_digest`` in its settings, ``data: {"spec": ..., "digest": ...}`` (mia, shadows) or
    ``digests: {"data": ...}`` (inpaint); None when absent."""
    data = settings.get("data")
    if isinstance(data, dict) and data.get("digest") is not None:
        return data["digest"]
    digests = settings.get("digests") if isinstance(settings.get("digests"), dict) else {}
    return settings.get("data_digest", digests.get("data"))


class TrainingImages:
    """Training images by key (preferred) or integer index, from ``load_dataset(spec, **options)``,
    shown only when the data loaded has the ``digest`` the result recorded (``settings.data_digest``).

    A result folder may come from someone else, and its spec may name any folder on this machine (a
    private photo album) and its keys a file there: without the check the report would embed that
    file. The digest (:func:`~diffaudit.data.digest.dataset_digest` of pixels, keys and labels) cannot
    be known without the images, so a result recording the right one was made from these very images.
    ``error`` says why images are unavailable (the report prints it beside the ids); ``changed``: the
    data loaded but is no longer the data the result was made from (rewritten in place since). Loaded
    with ``need_captions=False``, as verify loads its --data: the digest then matches a result made from
    a dataset one of whose images lacks its caption, and is the usual one when every caption is there.
    """

    def __init__(self, spec: Any, options: dict[str, Any], bases: tuple[Path, ...] = (), digest: Any = None):
        self.spec, self.options = spec, options
        self.dataset = None
        self.error: str | None = None
        self.changed = False
        self._index: dict[str, int] = {}
        if not spec:
            self.error = "no dataset recorded in the settings"
            return
        if not isinstance(digest, str) or not digest:
            self.error = (f"the result records no data_digest, so whether {spec!r} holds the images it was made from "
                          "cannot be checked (a result folder from elsewhere may name any folder on this machine)")
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
                # the images are shown, never the captions: a dataset one of whose images lacks its caption loads
                # as verify loaded it (captions left out); with every caption there, the load that needs them
                self.dataset = load_dataset(arg, need_captions=False, **options)
            else:
                self.dataset = _read_npz(Path(arg))
                if self.dataset is None:
                    self.error = f"cannot load {spec!r} here (diffaudit.data.load_dataset is unavailable)"
        except Exception as exc:  # noqa: BLE001 - render ids, say why
            self.error = f"cannot load {spec!r}: {exc}"
            self.dataset = None
        if self.dataset is not None:
            actual = _dataset_digest(self.dataset)
            if actual != digest:
                self.error = (f"the data loaded from {spec!r} is not the data the result was made from (its digest is "
                              f"{actual}, the result records {digest}), so none of its images is shown")
                self.changed = not actual.startswith("unknown")
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
