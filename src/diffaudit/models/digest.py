"""``model_digest``: a short fingerprint of a model folder's weights and configs.

Recorded wherever results must not outlive the weights they came from: the loss cache's folder
names, ``mia``'s result, a sample store's settings (a resume after the weights changed is refused).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


def model_digest(run_dir: str | Path) -> str:
    """SHA-256 (16 hex) of a model folder's weights (``*.safetensors``) and configs (``*.json``)."""
    root = Path(run_dir)
    if (root / "model_index.json").exists():  # a pipeline: every component (VAE, text encoder, UNet, ...)
        files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".json", ".txt") and p.is_file())
    else:
        unet = root / "unet" if (root / "unet").is_dir() else root
        files = sorted(unet.glob("*.safetensors")) + sorted(unet.glob("*.json"))
        sched = root / "scheduler" / "scheduler_config.json"
        if sched.exists():
            files.append(sched)
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        _hash_file(h, p)
    return h.hexdigest()[:16]
