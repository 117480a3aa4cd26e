"""ℓ2 of a generation against a larger training image under every crop alignment (paper §4.1,
verification: Stable Diffusion was trained on random square crops, so a memorized
generation may match any window of its source image).

For a generation g (h, w, C) and a training image t (H ≥ h, W ≥ w, C), the ℓ2 of g against the
window at offset (y, x) is sqrt(mean((t[y:y+h, x:x+w] − g)²)). All (H − h + 1)(W − w + 1) offsets
are evaluated at once: Σ(t − g)² = Σ_window t² − 2·corr(t, g) + Σg², with the window sums of t² by
an integral image and the correlation by one float64 ``conv2d`` (exact for 0..255 integers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffaudit.core.errors import DiffauditError
from diffaudit.distances.images import as_tensor


def crop_aligned_l2(generation: Any, training: Any, *, device: str | torch.device = "cpu") -> tuple[float, tuple[int, int]]:
    """Smallest ℓ2 (RMS on [0, 1] pixels) of ``generation`` over all windows of ``training``.

    generation: uint8 (h, w, C); training: uint8 (H, W, C) with H ≥ h, W ≥ w and the same C.
    Returns ``(l2, (y, x))``: the distance in [0, 1] and the window's top-left offset (the first in
    row-major order among exact ties).
    """
    g = as_tensor(generation, name="generation")[0]
    t = as_tensor(training, name="training image")[0]
    if g.dtype != torch.uint8 or t.dtype != torch.uint8:
        raise DiffauditError("crop alignment needs uint8 images")
    h, w, c = g.shape
    H, W, C = t.shape
    if C != c:
        raise DiffauditError(f"generation has {c} channels, training image {C}")
    if H < h or W < w:
        raise DiffauditError(f"training image ({H}x{W}) is smaller than the generation ({h}x{w}): no crop alignment fits")
    dev = torch.device(device)
    gf = g.to(dev, torch.float64).permute(2, 0, 1)  # (C, h, w)
    tf = t.to(dev, torch.float64).permute(2, 0, 1)  # (C, H, W)
    corr = F.conv2d(tf.unsqueeze(0), gf.unsqueeze(0))[0, 0]  # (H-h+1, W-w+1)
    sq = (tf * tf).sum(0)
    ii = F.pad(sq.cumsum(0).cumsum(1), (1, 0, 1, 0))  # integral image
    win = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    ssd = (win - 2.0 * corr + (gf * gf).sum()).clamp_(min=0.0)
    flat = int(torch.argmin(ssd.flatten()))
    y, x = divmod(flat, ssd.shape[1])
    l2 = float(np.sqrt(float(ssd[y, x]) / (h * w * c * 255.0 * 255.0)))
    return l2, (int(y), int(x))
