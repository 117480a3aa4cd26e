"""The per-target image grid of the inpainting attack: original, masked input, best reconstructions.

One PNG row per target (paper Figure 11): the original, the input with its hidden pixels grey,
then the ``top_k`` kept inpaintings in rank order (best score first), each titled with its ℓ2 to the
original. Drawn with a bare matplotlib ``Figure`` (Agg rendering, no pyplot state, no display) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from diffaudit.core.io import write_bytes_atomic
from diffaudit.core.progress import printable

#: Text drawn as it is: a target's key (``$\\undefinedmacro$.png``) is data, never mathtext or LaTeX to parse
#: (an unknown macro would fail the figure, and the target, on every re-run).
_LITERAL = {"parse_math": False, "usetex": False}


def _show(ax, image: np.ndarray, title: str) -> None:
    a = np.asarray(image)
    if a.shape[-1] == 1:
        ax.imshow(a[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(a, interpolation="nearest")
    ax.set_title(title, fontsize=7, **_LITERAL)
    ax.set_xticks([])
    ax.set_yticks([])


def grid_png(original: np.ndarray, mask: np.ndarray, kept: np.ndarray, l2: Sequence[float], *, title: str = "") -> bytes:
    """PNG bytes of one target's grid. original uint8 (H, W, C); mask (H, W), 1 = known; kept uint8 (k, H, W, C)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display needed

    masked = np.array(original, copy=True)
    masked[np.asarray(mask) < 0.5] = 128
    panels = [(original, "original"), (masked, "masked")] + [(k, f"#{i + 1} ℓ2={d:.3f}") for i, (k, d) in enumerate(zip(kept, l2))]
    fig = Figure(figsize=(1.1 * len(panels), 1.45), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (img, name) in zip(axes, panels):
        _show(ax, img, name)
    if title:
        fig.suptitle(printable(title), fontsize=8, **_LITERAL)  # printable: a font refuses lone surrogates
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_grid(path: str | Path, original: np.ndarray, mask: np.ndarray, kept: np.ndarray, l2: Sequence[float], *, title: str = "") -> Path:
    """Write :func:`grid_png` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, grid_png(original, mask, kept, l2, title=title))
