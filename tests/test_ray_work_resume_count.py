"""`extract --ray` / `verify --ray` resumed over spans an interrupted run finished: the progress total and the
closing line counted every pending chunk's rows, the finished spans too (the bar ended at 87%, and the line said
16,000 queries computed where 13,952 were). Ray is stood in for by an in-process pool, so this runs without it."""

from __future__ import annotations

import numpy as np
import torch

import diffaudit.core.ray_pool as ray_pool
from diffaudit.cli.ray_work import ImagesRecipe, knn_on_ray
from diffaudit.store import samples_identity


def _in_process(stop_after: int | None, seen: dict):
    """A ``run_parts`` that fills the pending parts here, one worker, recording the total it was told; it stops
    (KeyboardInterrupt, as Ctrl-C would) after ``stop_after`` parts."""
    def run_parts(address, factory, args, pending, *, total=None, **_):
        seen["total"] = total
        worker = factory(*args, 1)  # threads: one
        for i, part in enumerate(pending()):
            if stop_after is not None and i == stop_after:
                raise KeyboardInterrupt
            worker.fill(part)
        return 1
    return run_parts


def test_a_resumed_search_counts_only_the_queries_it_computes(tmp_path, monkeypatch, capsys):
    import diffaudit.attacks.extraction.knn_cache as knn_cache

    monkeypatch.setattr(knn_cache, "CHUNK_BYTES", 20 * 8 * 8)  # 20 queries a chunk
    monkeypatch.setattr("diffaudit.cli.ray_work.SPAN_ROWS", 5)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "gens.npz", images=images)
    from diffaudit.attacks.extraction.inputs import read_generations

    spec = str(tmp_path / "gens.npz")
    recipe = ImagesRecipe("generations", spec, samples_identity(spec, read_generations(spec)))
    seen: dict = {}
    monkeypatch.setattr(ray_pool, "run_parts", _in_process(3, seen))
    try:
        knn_on_ray("local", images, recipe, None, 4, tmp_path / "knn", device=torch.device("cpu"), backend="torch",
                   label="extract: nearest generations", exclude_self=True)
    except KeyboardInterrupt:
        pass
    assert seen["total"] == 40
    capsys.readouterr()
    monkeypatch.setattr(ray_pool, "run_parts", _in_process(None, seen))
    knn_on_ray("local", images, recipe, None, 4, tmp_path / "knn", device=torch.device("cpu"), backend="torch",
               label="extract: nearest generations", exclude_self=True)
    assert seen["total"] == 25  # 3 spans of 5 were finished
    err = capsys.readouterr().err
    assert "neighbours of 25 queries computed on Ray (1 worker, " in err and "s); 15 finished earlier, kept" in err
