"""Device selection: ``--device auto`` takes CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from diffaudit.core.errors import DiffauditError


def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DiffauditError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev
