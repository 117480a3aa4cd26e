"""``model_digest``: a short fingerprint of a model folder's weights and configs.

Recorded wherever results must not outlive the weights they came from: the loss cache's folder
names, ``mia``'s result, a sample store's settings (a resume after the weights changed is refused).

A model trained outside diffaudit is given its training set by a ``train_ids.json`` written into its
folder (:data:`TRAIN_IDS`; :func:`members_digest` records it where a result depends on it). Which images
a model trained on shapes a membership attack's labels, not what the model generates: ``members=False``
leaves that file out, so a sample store survives it being written after the generations (as README's
text-to-image workflow does before ``mia``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: The training-set record beside a model's weights (``diffaudit.models.run_record`` reads it).
TRAIN_IDS = "train_ids.json"


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


def model_digest(run_dir: str | Path, *, members: bool = True) -> str:
    """SHA-256 (16 hex) of a model folder's weights (``*.safetensors``) and configs (``*.json``; a
    pipeline's ``*.txt`` too: its tokenizer's merges). ``members=False``: without the folder's own
    ``train_ids.json`` (what a generation depends on: the weights alone); True also digests it where
    it lies among the files read (a pipeline's or a bare UNet folder's top level)."""
    root = Path(run_dir)
    if (root / "model_index.json").exists():  # a pipeline: every component (VAE, text encoder, UNet, ...)
        files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".json", ".txt") and p.is_file())
    else:
        unet = root / "unet" if (root / "unet").is_dir() else root
        files = sorted(unet.glob("*.safetensors")) + sorted(unet.glob("*.json"))
        sched = root / "scheduler" / "scheduler_config.json"
        if sched.exists():
            files.append(sched)
    if not members:
        files = [p for p in files if p != root / TRAIN_IDS]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        _hash_file(h, p)
    return h.hexdigest()[:16]


def members_digest(run_dir: str | Path) -> str | None:
    """SHA-256 (16 hex) of a model folder's own ``train_ids.json`` (:data:`TRAIN_IDS`: the training set it
    names, which decides a membership attack's members and an audit's), None where the folder has none.
    Recorded beside :func:`model_digest`, which a run folder's weights and configs alone make: a
    ``train_ids.json`` corrected in place is another training set, so finished results are not reused."""
    path = Path(run_dir) / TRAIN_IDS
    if not path.is_file():
        return None
    h = hashlib.sha256()
    _hash_file(h, path)
    return h.hexdigest()[:16]
