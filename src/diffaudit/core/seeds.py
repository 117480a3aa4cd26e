"""Explicit, derivable seeds. No code in diffaudit touches the global RNG.

Every random draw is keyed by a tuple of parts (run seed, purpose, indices...) hashed with SHA-256,
so any single draw (one generation, one training step, one loss noise) can be reproduced alone.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: int | str) -> int:
    """Seed in [0, 2**63) derived from ``parts`` (ints and strings), stable across platforms."""
    h = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") & _MASK63


def generation_seed(run_seed: int, prompt_index: int, image_index: int) -> int:
    """Seed of generation ``p<prompt_index>-i<image_index>`` of a sampling run."""
    return derive_seed(int(run_seed), "generation", int(prompt_index), int(image_index))


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    """A numpy ``Generator`` (PCG64) seeded with ``seed``."""
    return np.random.default_rng(int(seed))


def randn_per_seed(
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *shape), row i drawn from ``seeds[i]`` alone.

    Drawn on the CPU in float32 and then moved, so the values are identical on every device and
    whatever batch the row sits in.
    """
    out = torch.empty((len(seeds), *shape), dtype=torch.float32)
    for i, s in enumerate(seeds):
        out[i] = torch.randn(tuple(shape), generator=torch_generator(s), dtype=torch.float32)
    return out.to(device=device, dtype=dtype)
