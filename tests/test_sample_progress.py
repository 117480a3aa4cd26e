"""``sample``'s progress moves as images are made within a shard (per micro-batch, or per source call
for a source that cannot report within a call), not only when a whole shard is written; what is
written and when a shard counts as finished do not change."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.store import SampleStore, fill_store
from diffaudit.store import fill as fill_module
from helpers import make_tiny_model_dir


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    import torch

    from diffaudit.sampling.sources import open_source

    model = make_tiny_model_dir(tmp_path_factory.mktemp("model"))
    return open_source(model, device=torch.device("cpu"), steps=2, micro_batch=8)


def _store(path, source, n=40, shard_size=40):
    return SampleStore.create(path, settings={"seed": 0, **source.settings()}, prompts=[None], per_prompt=n,
                              image_shape=source.image_shape, shard_size=shard_size)


class _Recorder:
    """Stands in for ``progress_bar``: records each advance and whether shard 0 was finished then."""

    def __init__(self, store):
        self.store, self.steps = store, []

    def __call__(self, *a, **kw):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            yield self

        return bar()

    def advance(self, n=1, **_):
        self.steps.append((n, self.store.is_complete(0)))


def test_progress_advances_per_micro_batch_within_a_shard(source, tmp_path, monkeypatch):
    store = _store(tmp_path / "s", source)
    rec = _Recorder(store)
    monkeypatch.setattr(fill_module, "progress_bar", rec)
    assert fill_store(store, source) == 40
    # one shard of 40 images, micro-batch 8: five advances, all before the shard was written
    assert rec.steps == [(8, False)] * 5
    assert store.pending() == []
    # pixels as one whole-shard call of the generator makes them
    from diffaudit.sampling.generate import generate_images

    want = generate_images(source.denoiser, store.shard_request(0)["seeds"], steps=2, micro_batch=8)
    assert np.array_equal(store.read_shard(0)[0], want)


def test_a_source_without_on_images_advances_per_call(source, tmp_path, monkeypatch):
    store = _store(tmp_path / "s", source, n=20, shard_size=20)
    rec = _Recorder(store)
    monkeypatch.setattr(fill_module, "progress_bar", rec)

    def plain(seeds, prompts):  # a source with no on_images keyword
        return source(seeds, prompts)

    assert fill_store(store, plain, batch_size=6) == 20
    assert rec.steps == [(6, False), (6, False), (6, False), (2, False)]


def test_progress_lines_show_images_within_a_shard(source, tmp_path, monkeypatch, capsys):
    """Off a terminal, the timed plain lines count images inside the one shard being made."""
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    monkeypatch.delenv("DIFFAUDIT_PROGRESS", raising=False)
    monkeypatch.setenv("DIFFAUDIT_PROGRESS_INTERVAL", "1e-9")
    store = _store(tmp_path / "s", source, n=24, shard_size=24)
    fill_store(store, source)
    err = capsys.readouterr().err
    assert "sample: 8/24" in err and "sample: 16/24" in err and "sample: 24/24" in err
