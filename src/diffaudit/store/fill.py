"""Fill a sample store from an image source, shard by shard (resumable)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from diffaudit.core.faults import fault_point
from diffaudit.core.progress import Timer, progress_bar, stage_line
from diffaudit.store.sample_store import SampleStore

Source = Callable[[Sequence[int], Sequence["str | None"]], np.ndarray]


def fill_shard(store: SampleStore, index: int, source: Source, *, batch_size: int | None = None) -> None:
    """Generate and write shard ``index`` (no-op when already finished).

    ``batch_size`` images go to the source per call; pixels do not depend on it (fixed micro-batches).
    """
    if store.is_complete(index):
        return
    req = store.shard_request(index)
    step = batch_size or len(req["seeds"])
    images = np.concatenate([source(req["seeds"][a:a + step], req["prompts"][a:a + step])
                             for a in range(0, len(req["seeds"]), step)])
    store.write_shard(index, images)
    fault_point("sample.shard")


def fill_store(store: SampleStore, source: Source, *, shards: Sequence[int] | None = None, batch_size: int | None = None) -> int:
    """Generate every unfinished shard (or the given ones); returns how many images were made."""
    todo = store.pending() if shards is None else [k for k in shards if not store.is_complete(k)]
    made = 0
    total = int(store.manifest["n_total"])
    done_before = total - sum(store.plan(k).stop - store.plan(k).start for k in store.pending())
    with Timer() as tm, progress_bar("sample", total, unit="img", completed=done_before) as bar:
        for k in todo:
            fill_shard(store, k, source, batch_size=batch_size)
            n = store.plan(k).stop - store.plan(k).start
            made += n
            bar.advance(n)
    if made:
        stage_line(f"sample: {made} images in {tm.seconds:.1f}s ({made / max(tm.seconds, 1e-9):.1f} img/s) -> {store.path}")
    return made
