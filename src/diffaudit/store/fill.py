"""Fill a sample store from an image source, shard by shard (resumable).

Progress is told as images are made, not only when a shard is finished: a source that takes an
``on_images`` keyword (:class:`~diffaudit.sampling.sources.PixelSource` and
``StableDiffusionSource`` do) reports each micro-batch, any other source each call. What is written,
and when a shard counts as finished (its sidecar, written last and atomically), do not change.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np

from diffaudit.core.faults import fault_point
from diffaudit.core.progress import Timer, progress_bar, stage_line
from diffaudit.store.sample_store import SampleStore

Source = Callable[[Sequence[int], Sequence["str | None"]], np.ndarray]
OnImages = Callable[[int], None]


def _takes_on_images(source: Source) -> bool:
    """Whether ``source`` accepts an ``on_images`` callback (reports progress within a call)."""
    try:
        return "on_images" in inspect.signature(source).parameters
    except (TypeError, ValueError):  # a callable without a readable signature
        return False


def _generate(source: Source, seeds: Sequence[int], prompts: Sequence[str | None], on_images: OnImages | None) -> np.ndarray:
    """One source call; ``on_images`` hears of every image made, within the call where the source can
    say so, else once the call returns (so the count is whole either way)."""
    if on_images is None:
        return source(seeds, prompts)
    told = 0

    def tell(n: int) -> None:
        nonlocal told
        told += n
        on_images(n)

    images = source(seeds, prompts, on_images=tell) if _takes_on_images(source) else source(seeds, prompts)
    if len(images) > told:
        on_images(len(images) - told)
    return images


def fill_shard(store: SampleStore, index: int, source: Source, *, batch_size: int | None = None,
               on_images: OnImages | None = None) -> int:
    """Generate and write shard ``index``; returns how many images it wrote (0: it was finished already, or was
    finished by another writer while these were made).

    ``batch_size`` images go to the source per call; pixels do not depend on it (fixed micro-batches).
    ``on_images(n)``: told of images as they are made (progress), before the shard is written; the
    shard counts as finished only once it is written whole.
    """
    if store.is_complete(index):
        return 0
    req = store.shard_request(index)
    step = batch_size or len(req["seeds"])
    images = np.concatenate([_generate(source, req["seeds"][a:a + step], req["prompts"][a:a + step], on_images)
                             for a in range(0, len(req["seeds"]), step)])
    if not store.write_shard(index, images, unless_finished=True):
        return 0  # finished meanwhile by another command on the same object store (the same seeds)
    fault_point("sample.shard")
    return len(images)


def fill_store(store: SampleStore, source: Source, *, shards: Sequence[int] | None = None, batch_size: int | None = None) -> int:
    """Generate every unfinished shard (or the given ones); returns how many images were made.

    The progress bar moves as images are made (per micro-batch where the source reports it), so a
    slow model shows its rate and ETA long before the first shard is finished."""
    todo = store.pending() if shards is None else [k for k in shards if not store.is_complete(k)]
    made = 0
    total = int(store.manifest["n_total"])
    done_before = total - sum(store.plan(k).stop - store.plan(k).start for k in store.pending())
    with Timer() as tm, progress_bar("sample", total, unit="img", completed=done_before) as bar:
        for k in todo:
            made += fill_shard(store, k, source, batch_size=batch_size, on_images=bar.advance)
    if made:
        stage_line(f"sample: {made} images in {tm.seconds:.1f}s ({made / max(tm.seconds, 1e-9):.1f} img/s) -> {store.name}")
    return made
