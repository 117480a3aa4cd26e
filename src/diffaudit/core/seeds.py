"""Explicit, derivable seeds. No code in diffaudit touches the global RNG.

Every random draw is keyed by a tuple of parts (run seed, purpose, indices...) hashed with SHA-256,
so any single draw (one generation, one training step, one loss noise) can be reproduced alone.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch

from diffaudit.core.errors import DiffauditError

_MASK63 = (1 << 63) - 1
_M32 = 0xFFFFFFFF


def derive_seed(*parts: int | str) -> int:
    """Seed in [0, 2**63) derived from ``parts`` (ints and strings), stable across platforms.

    numpy integers and strings count as the Python values they hold (numpy 2 would otherwise hash
    ``repr(np.int64(3))`` = ``"np.int64(3)"``, a seed other than that of 3).
    """
    parts = tuple(p.item() if isinstance(p, (np.integer, np.str_)) else p for p in parts)
    h = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") & _MASK63


def generation_seed(run_seed: int, prompt_index: int, image_index: int) -> int:
    """Seed of generation ``p<prompt_index>-i<image_index>`` of a sampling run."""
    return derive_seed(int(run_seed), "generation", int(prompt_index), int(image_index))


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default the CPU) seeded with ``seed``. Draws with it must be
    made on that device; the same seed gives other numbers on another device type."""
    value = int(seed)
    if not 0 <= value < 1 << 64:  # torch's range: beyond it "Overflow when unpacking long long"
        raise DiffauditError(f"a seed must be an integer in [0, 2^64); got {seed}")
    g = torch.Generator(device=device)
    g.manual_seed(value)
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


# Counter-based noise: computed on the device, so millions of independently keyed rows cost one
# kernel instead of one CPU generator each (losses over 50k examples x 20 draws, inpaintings).

def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (16-bit split of c)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' "lowbias32") on int64 tensors holding [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_randn(keys: torch.Tensor, counter: int, shape: Sequence[int], *, device=None) -> torch.Tensor:
    """Standard normal noise (B, *shape), float32; row b depends only on (keys[b], counter).

    Args:
        keys: int64 (B,) in [0, 2^63) (seeds from :func:`~diffaudit.core.seeds.derive_seed`).
        counter: int in [0, 2^32): which draw of the row's stream (schedule position and purpose).
        shape: per-row shape, e.g. (C, H, W).
        device: where to compute (default: the keys' device).

    Integer hashing gives two 24-bit uniforms per element, turned Gaussian by Box-Muller
    (|z| ≤ 5.9). Not cryptographic; statistically fine for sampling noise.

    A row's stream is keyed by a 32-bit hash of (key, counter), so among B rows two share a whole
    stream with probability about B²/2^33 (about 0.25 for the losses of 50,000 examples; some 128
    pairs among 2^20 generations sampled with η > 0). Such a pair gets the same noise at that
    counter and stays a valid draw each; no result of the paper's methods depends on two rows'
    noise being distinct. Widening the key would change every stream, and with it every recorded
    loss and inpainting, so it is kept.
    """
    keys = torch.as_tensor(keys, dtype=torch.int64, device=device)
    dev = keys.device
    if not 0 <= int(counter) <= _M32:
        raise ValueError(f"counter must lie in [0, 2^32); got {counter}")
    n = math.prod(int(s) for s in shape)
    c = _mix32(torch.tensor([int(counter)], dtype=torch.int64, device=dev))
    row = _mix32((keys & _M32) ^ _mix32(((keys >> 32) & _M32) ^ c))  # (B,)
    idx = _mix32((torch.arange(2 * n, dtype=torch.int64, device=dev) + 0x9E3779B9) & _M32)  # (2n,)
    h = _mix32(row[:, None] ^ idx[None, :]) >> 8  # (B, 2n) in [0, 2^24)
    u = h.to(torch.float32) * (2.0 ** -24) + 2.0 ** -25  # uniform in (0, 1)
    u1, u2 = u[:, :n], u[:, n:]
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.reshape(len(keys), *shape)
