"""Prompt selection for generate-and-filter (paper Section 4.2.1, step 1).

The paper embedded every LAION training image, found near-duplicate groups and took the captions
of the most duplicated images as prompts (350,000 for Stable Diffusion): memorized images are
overwhelmingly duplicated ones. Here a caption's score is the largest duplicate count among the
images it describes: ``DedupResult.neighbour_count``, an image's direct near-duplicates (the
connected groups of deduplication chain images that each resemble only the next: on the digits, a
group of 38 whose members had 1 to 15 near-duplicates each, against a threshold their farthest
pair missed by far). Captions are ranked by score, then by how many images carry the very same
caption, then by first appearance.

A prompt file holds one prompt per line, UTF-8; whitespace inside a caption (line breaks
included) is collapsed to single spaces so that every caption is exactly one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.identity import text_bytes
from diffaudit.core.io import write_bytes_atomic
from diffaudit.data.dataset import CAPTION_SOURCES


def normalise_caption(caption: str) -> str:
    """One-line form of a caption: whitespace runs (line and paragraph separators too) -> one space."""
    return " ".join(str(caption).split())


@dataclass
class RankedPrompt:
    """A caption and the duplication of its images.

    Attributes:
        prompt: the normalised caption.
        score: the largest duplicate count among its images (larger = more duplicated).
        n_images: images carrying this exact caption.
        indices: their dataset indices, ascending.
    """

    prompt: str
    score: int
    n_images: int
    indices: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "score": self.score, "n_images": self.n_images, "indices": self.indices}


def rank_prompts(captions: list[str] | None, duplicate_count: np.ndarray, *, top: int | None = None,
                 min_score: int = 0) -> list[RankedPrompt]:
    """Captions ranked by the duplicate count of their images, most duplicated first.

    Args:
        captions: N captions (the dataset's); empty captions are skipped.
        duplicate_count: int (N,), e.g. ``DedupResult.neighbour_count`` (direct near-duplicates).
        top: keep the first ``top`` prompts (None: all).
        min_score: drop captions whose score is below this (1 keeps duplicated images only).

    Raises:
        DiffauditError: no captions, or lengths that differ.
    """
    if captions is None:
        raise DiffauditError(f"the dataset has no captions: prompt selection needs a captioned dataset ({CAPTION_SOURCES})")
    counts = np.asarray(duplicate_count)
    if counts.ndim != 1 or len(counts) != len(captions):
        raise DiffauditError(f"duplicate_count has shape {counts.shape} but the dataset has {len(captions)} captions")
    if top is not None and top < 1:
        raise DiffauditError(f"--top must be at least 1; got {top}")
    by_text: dict[str, list[int]] = {}
    for i, c in enumerate(captions):
        text = normalise_caption(c)
        if text:
            by_text.setdefault(text, []).append(i)
    ranked = [RankedPrompt(t, int(counts[idx].max()), len(idx), idx) for t, idx in by_text.items()]
    ranked = [r for r in ranked if r.score >= min_score]
    ranked.sort(key=lambda r: (-r.score, -r.n_images, r.indices[0]))
    return ranked if top is None else ranked[:top]


def write_prompt_file(path: str | os.PathLike, prompts: list[RankedPrompt] | list[str]) -> Path:
    """One prompt per line, UTF-8, for ``diffaudit sample --prompts FILE --per-prompt 500``."""
    lines = [normalise_caption(p.prompt if isinstance(p, RankedPrompt) else p) for p in prompts]
    if not lines:
        raise DiffauditError(f"{path}: no prompt to write (no caption passed the selection)")
    return write_bytes_atomic(path, text_bytes("\n".join(lines) + "\n"))
