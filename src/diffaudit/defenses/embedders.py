"""Image embedders for near-duplicate search (paper Section 4.2.1, step 1: "embed every training
image and find near-duplicate groups").

An embedder maps uint8 images (B, H, W, C), C in {1, 3}, to one vector per image, and defines a
*similarity* in [0, 1] (1 = identical) on those vectors; two images are near-duplicates when their
similarity is at least the embedder's threshold. Three embedders are registered:

| name    | vector                                          | similarity             | default threshold  |
|---------|-------------------------------------------------|------------------------|--------------------|
| `pixel` | 8x8 luma (mean-centred) + 4x4 chroma, area-     | cosine (inner product) | 0.97               |
|         | downsampled, L2-normalised, float32 (97,);      |                        |                    |
|         | 2 px shift views                                |                        |                    |
| `phash` | 64-bit DCT perceptual hash, packed uint8 (8,);  | 1 − Hamming / 64       | 0.906 (≤ 6 bits)   |
|         | 2 px shift views                                |                        |                    |
| `clip`  | CLIP image embedding, L2-normalised (512,)      | cosine                 | 0.95 (uncalibrated)|

The `pixel` and `phash` thresholds are calibrated on duplicates planted in real CIFAR-10 images
(see :mod:`diffaudit.defenses.calibration`, whose docstring holds the measured table); the paper
itself removed CIFAR-10 near-duplicates at imagededup CNN similarity > 0.85, a different embedding
whose scale does not transfer. The `clip` default was not calibrated here (no CLIP weights could be
loaded offline); calibrate it with :func:`diffaudit.defenses.calibration.calibrate` before relying on it.

Vectors of ``metric == "cosine"`` embedders are float32 and unit-norm (similarity = inner product);
vectors of ``metric == "hamming"`` embedders are packed bits (uint8, 8 bits per byte).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F

from diffaudit.core.errors import DiffauditError
from diffaudit.models.quiet import quiet_loading

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L" mode
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32)  # JPEG YCbCr


def check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Validate uint8 (B, H, W, C), C in {1, 3}; returns it as an ndarray."""
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise DiffauditError(f"{name}: expected uint8 images (B, H, W, C) with C in (1, 3); got {a.dtype} {a.shape}")
    return a


def to_gray(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, 1, H, W) luma in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if x.shape[-1] == 3:
        x = x @ torch.from_numpy(_LUMA)
    else:
        x = x[..., 0]
    return x[:, None]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size): area averaging when shrinking, bilinear when growing."""
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-2] >= size and x.shape[-1] >= size:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def shift_images(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate uint8 (B, H, W, C) by (dx, dy) pixels (right/down positive), repeating edge pixels."""
    h, w = images.shape[1:3]
    p = max(abs(dx), abs(dy))
    if p == 0:
        return images
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[:, p - dy:p - dy + h, p - dx:p - dx + w])


def gray_np(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, C) -> float32 (B, 1, H, W) luma in [0, 1] (numpy: no thread pool for small work)."""
    if images.shape[-1] == 3:
        g = images.astype(np.float32) @ (_LUMA / np.float32(255.0))
    else:
        g = images[..., 0].astype(np.float32) / np.float32(255.0)
    return g[:, None]


def area_resize_np(x: np.ndarray, size: int) -> np.ndarray:
    """(B, C, H, W) float -> (B, C, size, size) by area averaging (block means when H, W divide)."""
    b, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if h % size == 0 and w % size == 0:
        return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))
    return resize(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), size).numpy()


class Embedder(ABC):
    """One vector per image and a similarity on them.

    Attributes:
        name: registry name.
        metric: ``"cosine"`` (unit float32 vectors) or ``"hamming"`` (packed uint8 bits).
        dim: vector length (for ``hamming``: the number of bits).
        default_threshold: similarity at or above which two images are near-duplicates.
    """

    name: str = ""
    metric: str = "cosine"
    dim: int = 0
    default_threshold: float = 0.9

    max_shift: int = 0

    @abstractmethod
    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> float32 (B, dim) unit vectors, or uint8 (B, dim // 8) packed bits."""

    def settings(self) -> dict[str, Any]:
        """The options that define the embedding (recorded in results; resume checks them)."""
        return {"name": self.name}

    @property
    def shifts(self) -> list[tuple[int, int]]:
        """The (dx, dy) translations of the query views: (0, 0) first, then one of each ±s pair.

        Half the (2r+1)² translations suffice because searches run in both directions: a view of
        a shifted by s meets b as a view of b shifted by −s would meet a (up to the edge pixels).
        """
        r = int(self.max_shift)
        return [(0, 0)] + [(dx, dy) for dy in range(0, r + 1) for dx in range(-r, r + 1) if dy > 0 or dx > 0]

    def embed_views(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of ``images`` translated by each of :attr:`shifts`: (S, B, ...); view 0 = :meth:`embed`.

        Shift tolerance: the similarity of two images a, b is the largest similarity between a view
        of one and the plain embedding of the other (both directions), so a copy moved by up to
        ``max_shift`` pixels (the paper's re-cropped duplicates) is as close as an aligned one.
        """
        a = check_images(images)
        return np.stack([self.embed(a if s == (0, 0) else shift_images(a, *s)) for s in self.shifts])

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairwise similarity of two embedding batches: (Na, Nb) float64 in [0, 1] (cosine may be < 0)."""
        return pairwise_similarity(a, b, self.metric, self.dim)


def pairwise_similarity(a: np.ndarray, b: np.ndarray, metric: str, dim: int) -> np.ndarray:
    """Brute-force similarity matrix (the reference faiss is tested against)."""
    if metric == "cosine":
        return np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
    if metric == "hamming":
        ba = np.unpackbits(np.asarray(a, np.uint8), axis=1)[:, :dim].astype(np.int32)
        bb = np.unpackbits(np.asarray(b, np.uint8), axis=1)[:, :dim].astype(np.int32)
        ham = ba.sum(1)[:, None] + bb.sum(1)[None, :] - 2 * ba @ bb.T
        return 1.0 - ham / float(dim)
    raise DiffauditError(f"unknown metric {metric!r} (cosine or hamming)")


class PixelEmbedder(Embedder):
    """Down-sampled pixels, mean-centred and L2-normalised; cosine similarity.

    Area down-sampling to ``size`` x ``size`` absorbs JPEG noise and 1-2 px shifts (a 2 px shift at
    32x32 is half a cell at 8x8); subtracting the image's mean luma and dividing by the norm makes
    the vector invariant to brightness offsets and gains (±10 % brightness barely moves it).
    Images with no contrast (constant after down-sampling) map to one extra axis, so all blank
    images are duplicates of each other and of nothing else.

    Colour (``color``):

    - ``"ycc"`` (default): luma (BT.601 Y) at ``size`` x ``size``, mean-centred, and the two chroma
      planes (Cb, Cr, not centred) at half that side, scaled so that a chroma cell weighs as much
      as the luma cells it covers — JPEG's own 4:2:0 layout, so JPEG's chroma loss barely moves
      the vector. Dim size² + 2·(size/2)² + 1 (97 at size 8).
    - ``"rgb"``: the three channels at ``size``, centred on their common mean (dim 3·size² + 1).
    - ``"gray"``: luma only (dim size² + 1); cheapest, but on CIFAR-10 it chains low-contrast
      horizon scenes (ships, planes) into one large false group that colour separates.

    Args:
        size: side of the down-sampled luma (8 or 16 are sensible for 32x32 data).
        color: ``"ycc"``, ``"rgb"`` or ``"gray"``.
        max_shift: translations of up to this many pixels (native resolution) are tolerated
            (query views, see :meth:`Embedder.embed_views`; 2 → 13 views).
    """

    name = "pixel"
    metric = "cosine"
    default_threshold = 0.97
    COLORS = ("ycc", "rgb", "gray")

    def __init__(self, size: int = 8, color: str = "ycc", max_shift: int = 2):
        if size < 2 or (color == "ycc" and size % 2):
            raise DiffauditError(f"pixel embedder: size must be at least 2 (and even for ycc); got {size}")
        if color not in self.COLORS:
            raise DiffauditError(f"pixel embedder: color must be one of {', '.join(self.COLORS)}; got {color!r}")
        if not 0 <= int(max_shift) <= 8:
            raise DiffauditError(f"pixel embedder: max_shift must lie in [0, 8]; got {max_shift}")
        self.size, self.color, self.max_shift = int(size), color, int(max_shift)
        self.dim = {"gray": self.size**2, "rgb": 3 * self.size**2, "ycc": self.size**2 + 2 * (self.size // 2) ** 2}[color] + 1

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "color": self.color, "max_shift": self.max_shift}

    def _pixels(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> float32 (B, 1 or 3, H, W): luma, RGB or (Y, Cb, Cr), in [0, 1] (chroma ±0.5)."""
        a = check_images(images)
        if self.color == "gray":
            return gray_np(a)
        x = np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        if x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
        if self.color == "ycc":
            x = np.einsum("kc,bchw->bkhw", _YCC, x)
        return x

    def _vectors(self, x: np.ndarray) -> np.ndarray:
        if self.color == "ycc":
            y = area_resize_np(x[:, :1], self.size).reshape(len(x), -1).astype(np.float64)
            y -= y.mean(1, keepdims=True)
            c = area_resize_np(x[:, 1:], self.size // 2).reshape(len(x), -1).astype(np.float64) * 2.0
            v = np.concatenate([y, c], axis=1)
        else:
            v = area_resize_np(x, self.size).reshape(len(x), -1).astype(np.float64)
            v -= v.mean(1, keepdims=True)
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        flat = norm[:, 0] < 1e-6  # no contrast: a blank image
        v = np.where(flat[:, None], 0.0, v / np.maximum(norm, 1e-12))
        return np.concatenate([v, flat[:, None]], axis=1).astype(np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._vectors(self._pixels(images))

    def embed_views(self, images: np.ndarray) -> np.ndarray:
        # Same views as the generic version (edge-replicating shifts), with the colour conversion done once.
        x = self._pixels(images)
        r = self.max_shift
        if r == 0:
            return self._vectors(x)[None]
        h, w = x.shape[-2:]
        padded = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
        return np.stack([self._vectors(padded[..., r - dy:r - dy + h, r - dx:r - dx + w]) for dx, dy in self.shifts])


class PHashEmbedder(Embedder):
    """Perceptual hash (DCT): 64 bits; similarity 1 − Hamming distance / 64.

    As in the common ``imagehash.phash``: luma resized to 32x32, 2-D DCT-II (:func:`scipy.fft.dctn`),
    the top-left 8x8 low-frequency block, each coefficient compared with the block's median.
    A plain pHash is not shift-tolerant (a 2 px shift of a 32x32 image flips ~16 bits), hence the
    query views of up to ``max_shift`` pixels (default 2; 0 gives the classic hash alone).
    """

    name = "phash"
    metric = "hamming"
    default_threshold = 1.0 - 6 / 64  # Hamming distance <= 6 of 64 bits, with max_shift 2 (calibration table)

    def __init__(self, hash_size: int = 8, highfreq_factor: int = 4, max_shift: int = 2):
        self.hash_size, self.highfreq_factor = int(hash_size), int(highfreq_factor)
        if not 0 <= int(max_shift) <= 8:
            raise DiffauditError(f"phash: max_shift must lie in [0, 8]; got {max_shift}")
        self.max_shift = int(max_shift)
        if self.hash_size < 2 or (self.hash_size**2) % 8:
            raise DiffauditError(f"phash: hash_size² must be a multiple of 8; got hash_size={hash_size}")
        self.dim = self.hash_size**2

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "hash_size": self.hash_size, "highfreq_factor": self.highfreq_factor,
                "max_shift": self.max_shift}

    def embed(self, images: np.ndarray) -> np.ndarray:
        a = check_images(images)
        n = self.hash_size * self.highfreq_factor
        g = resize(to_gray(a), n)[:, 0].double().numpy()  # (B, n, n)
        dct = scipy.fft.dctn(g, type=2, axes=(1, 2))
        low = dct[:, : self.hash_size, : self.hash_size].reshape(len(a), -1)
        bits = low > np.median(low, axis=1, keepdims=True)
        return np.packbits(bits, axis=1)


DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

#: What ``--clip-model`` must be, for the errors when none can be loaded.
CLIP_FOLDER_HELP = (
    "Pass --clip-model PATH, a local folder with a CLIPVisionModelWithProjection written by save_pretrained "
    "(config.json and model.safetensors, optionally preprocessor_config.json), or a hub name whose files are already "
    "in the Hugging Face cache. diffaudit never downloads a model (it loads with local_files_only=True). The pixel "
    "and phash embedders need no model."
)


def _is_path(name: str) -> bool:
    """Whether ``--clip-model`` names a filesystem path (a folder) rather than a hub name like ``org/model``."""
    return Path(name).exists() or name.startswith((os.sep, ".", "~")) or (os.altsep is not None and os.altsep in name)


def _local_reason(exc: Exception) -> str:
    """The loader's first line, unless it talks about the hub (with local_files_only=True no connection is
    made, but transformers still words a cache miss as "couldn't connect to huggingface.co")."""
    first = (str(exc).splitlines() or [""])[0].strip()
    hub_words = ("huggingface.co", "connect", "repo id", "repo_type", "hub")
    return "" if any(w in first.lower() for w in hub_words) else f" ({first})"


def clip_missing_error(name: str, exc: Exception) -> DiffauditError:
    """The error for a CLIP model that is not available locally: what ``name`` was taken for (a folder
    that does not exist, a folder without a loadable model, or a hub name not in the cache) and what
    ``--clip-model`` must be instead; no hub text that suggests a download was tried."""
    if Path(name).is_dir():
        what = f"the folder {name} holds no CLIP model that loads{_local_reason(exc)}"
    elif _is_path(name):
        what = f"{name} does not exist"
    else:
        what = f"{name!r} is not a local folder, and no copy of it is in the Hugging Face cache"
    return DiffauditError(f"clip embedder: CLIP model not available locally: {what}. {CLIP_FOLDER_HELP}")


@contextmanager
def hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode while the block runs. ``local_files_only=True`` makes transformers
    read only local files, but huggingface_hub still builds request headers for the cache lookup of a
    hub name, and their agent detection fetches a registry from huggingface.co unless offline mode is
    on: with it, loading a CLIP model makes no connection at all."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


#: The ``model_type`` of a config an image embedder loads: a whole CLIP model, or its vision tower.
CLIP_IMAGE_TYPES = ("clip", "clip_vision_model")


def _refuse_other_clip_part(name: str) -> None:
    """Refuse a folder whose ``config.json`` is another model's (a Stable Diffusion pipeline's CLIP text
    encoder, ``clip_text_model``, is the easy mistake): it would load with every weight of the wrong shape."""
    config = Path(name) / "config.json"
    if not config.is_file():
        return
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # the loader says what is wrong with it
    if isinstance(kind, str) and kind not in CLIP_IMAGE_TYPES:
        what = "a CLIP text encoder" if kind == "clip_text_model" else f"a {kind!r} model"
        raise DiffauditError(f"clip embedder: --clip-model {name} holds {what} (config.json model_type {kind!r}), not a "
                             f"CLIP image model. {CLIP_FOLDER_HELP}")


def weights_digest(model, processor) -> str:
    """SHA-256 (16 hex) of a loaded model's weights (every tensor of its state dict, by name) and of its
    processor's configuration: what its embeddings are a function of, wherever it was loaded from."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def upgrade_embedder_record(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """A clip embedder's record from before it held its weights' digest (``model_digest``) read as one made
    with the model ``new`` records: such a folder resumes as it did (its model unchecked, as then)."""
    if (isinstance(old, dict) and isinstance(new, dict) and old.get("name") == "clip" and "model_digest" not in old
            and "model_digest" in new):
        return {**old, "model_digest": new["model_digest"]}
    return old


def load_clip(name: str):
    """(model, processor) of the CLIP folder or cached hub name ``name``, with ``local_files_only=True``
    for both, so that nothing is fetched over the network, and the weights from safetensors only
    (``use_safetensors=True``: a folder holding only a pickled ``pytorch_model.bin`` is refused, never
    unpickled). A folder without ``preprocessor_config.json`` gets CLIP's standard preprocessing at the
    model's image size.

    Raises:
        DiffauditError: the model is not available locally (:func:`clip_missing_error`).
    """
    from transformers import CLIPVisionModelWithProjection

    try:  # the PIL processor: the default one wants torchvision, which is not installed here
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # older transformers: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor

    _refuse_other_clip_part(name)
    try:
        with hub_offline(), quiet_loading():
            model = CLIPVisionModelWithProjection.from_pretrained(name, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: weights of another shape (another model)
        raise clip_missing_error(name, exc) from None
    try:
        with hub_offline(), quiet_loading():
            processor = CLIPImageProcessor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        if not Path(name).is_dir():
            raise clip_missing_error(name, exc) from None
        size = int(model.config.image_size)  # a bare model folder: CLIP's standard preprocessing
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model, processor


class ClipEmbedder(Embedder):
    """CLIP image embeddings (the paper's choice), L2-normalised; cosine similarity.

    Loads ``CLIPVisionModelWithProjection`` and ``CLIPImageProcessor`` from a local directory or,
    given a hub name, from the user's Hugging Face cache only (:func:`load_clip`,
    ``local_files_only=True``: nothing is downloaded, no connection is made). Grayscale images are
    repeated to three channels.

    Args:
        model: a directory holding ``config.json`` + weights (+ ``preprocessor_config.json``), or a
            hub name already in the cache (default ``openai/clip-vit-base-patch32``, 512-d).
        device: where the model runs.
        batch_size: images per forward pass.
    """

    name = "clip"
    metric = "cosine"
    default_threshold = 0.95

    def __init__(self, model: str | os.PathLike = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu", batch_size: int = 256):
        self.model_name = str(model)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.model, self.processor = load_clip(self.model_name)
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.projection_dim)
        self.digest = weights_digest(self.model, self.processor)

    def settings(self) -> dict[str, Any]:
        """Name, model (as given), embedding size, and the digest of the weights and preprocessing: a model
        replaced in place under the same path is another embedder."""
        return {"name": self.name, "model": self.model_name, "dim": self.dim, "model_digest": self.digest}

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        a = check_images(images)
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        out = np.empty((len(a), self.dim), dtype=np.float32)
        for s in range(0, len(a), self.batch_size):
            batch = list(a[s:s + self.batch_size])
            pix = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            e = self.model(pixel_values=pix).image_embeds.float()
            out[s:s + len(batch)] = F.normalize(e, dim=1).cpu().numpy()
        return out


EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "pixel": PixelEmbedder,
    "phash": PHashEmbedder,
    "clip": ClipEmbedder,
}


def get_embedder(name: str, **options: Any) -> Embedder:
    """The embedder registered as ``name``, built with ``options`` (None values are dropped).

    Raises:
        DiffauditError: unknown name (listing the known ones) or bad options.
    """
    if name not in EMBEDDERS:
        raise DiffauditError(f"unknown embedder {name!r}; choose one of: {', '.join(EMBEDDERS)}")
    opts = {k: v for k, v in options.items() if v is not None}
    try:
        return EMBEDDERS[name](**opts)
    except TypeError as exc:
        raise DiffauditError(f"embedder {name!r}: bad option ({exc})") from None

