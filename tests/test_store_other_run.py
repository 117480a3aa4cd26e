"""A sample store never counts another run's shards as its own.

Shards can outlive the files that say how they were made (a ``--fresh`` of an earlier version
killed while deleting, a lost manifest, a copied shard): a new store beside them is refused, and a
shard whose sidecar does not match the manifest is refused when read.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.store import SampleStore

OLD = {"seed": 0, "steps": 3}
NEW = {"seed": 1, "steps": 50}


def _create(root, settings, **kw):
    return SampleStore.create(root, settings=settings, prompts=kw.pop("prompts", [None]), per_prompt=32,
                              image_shape=(8, 8, 1), shard_size=16, **kw)


def _old_store(root):
    old = _create(root, OLD)
    for k in range(2):
        old.write_shard(k, np.full((16, 8, 8, 1), 7, np.uint8))
    return old


@pytest.mark.parametrize("lost", [("settings.json", "manifest.json"), ("settings.json",), ("manifest.json",)])
def test_shards_left_without_their_settings_or_manifest_are_refused(tmp_path, lost):
    root = tmp_path / "s"
    _old_store(root)
    for name in lost:
        (root / name).unlink()
    for settings in (NEW, OLD):  # the old settings too: with a file lost, nobody can tell
        with pytest.raises(DiffauditError, match=r"left from an interrupted or other run.*(Delete|choose another --out)"
                                                 r"|holds work made with other settings"):  # a kept settings.json says so
            _create(root, settings)
    assert sorted(p.name for p in (root / "shards").iterdir())[:2] == ["shard-000000.json", "shard-000000.npy"]
    if "settings.json" not in lost:  # a folder diffaudit made: --fresh starts over, as the message says
        assert _create(root, NEW, fresh=True).completed() == []


def test_shards_without_a_settings_file_are_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "s"
    _old_store(root)
    (root / "settings.json").unlink()
    (root / "manifest.json").unlink()
    with pytest.raises(DiffauditError, match=r"holds shards/shard-000000.json but no settings.json.*yourself"):
        _create(root, NEW)
    assert not (root / "settings.json").exists() and not (root / "manifest.json").exists()


def _sidecar(root, k):
    return root / "shards" / f"shard-{k:06d}.json"


@pytest.mark.parametrize("field, value, what", [
    ("sampler", {"seed": 0, "steps": 50}, "sampler settings"),
    ("sampler", None, "sampler settings"),
    ("ids", [f"p0-i{i + 1}" for i in range(16)], "generation ids"),
    ("prompts", ["a cat"] * 16, "prompts"),
    ("seeds", list(range(16)), "seeds"),
    ("seeds", [], "seeds"),
])
def test_a_shard_of_another_run_is_refused_when_read(tmp_path, field, value, what):
    root = tmp_path / "s"
    store = _old_store(root)
    meta = json.loads(_sidecar(root, 1).read_text())
    if value is None:
        del meta[field]
    else:
        meta[field] = value
    _sidecar(root, 1).write_text(json.dumps(meta))
    store.read_shard(0)
    with pytest.raises(DiffauditError, match=rf"shard-000001.json: shard 1 records other {what} than .*made by another run"):
        store.read_shard(1)
    with pytest.raises(DiffauditError, match="made by another run"):
        SampleStore.open(root).to_dataset()


def test_a_shard_copied_from_another_store_is_refused_when_read(tmp_path):
    mine, theirs = _old_store(tmp_path / "a"), _create(tmp_path / "b", NEW)
    theirs.write_shard(0, np.zeros((16, 8, 8, 1), np.uint8))
    _sidecar(mine.path, 0).write_bytes(_sidecar(theirs.path, 0).read_bytes())
    with pytest.raises(DiffauditError, match="other sampler settings"):
        mine.read_shard(0)


def test_a_store_made_by_hand_without_a_run_seed_still_reads(tmp_path):
    """A manifest without ``seed`` or ``sampler`` (written by hand, as some tests and users do): the
    ids and prompts are still checked, the seeds cannot be."""
    from diffaudit.core.io import save_npy_atomic, write_json_atomic

    root = tmp_path / "h"
    write_json_atomic(root / "manifest.json", {"schema_version": 1, "n_total": 4, "per_prompt": 2, "shard_size": 4,
                                               "n_shards": 1, "image_shape": [2, 2, 1], "prompts": ["a", "b"]})
    save_npy_atomic(root / "shards" / "shard-000000.npy", np.zeros((4, 2, 2, 1), np.uint8))
    write_json_atomic(_sidecar(root, 0), {"ids": ["p0-i0", "p0-i1", "p1-i0", "p1-i1"], "seeds": [9, 8, 7, 6],
                                          "prompts": ["a", "a", "b", "b"]})
    assert SampleStore.open(root).to_dataset().keys == ["p0-i0", "p0-i1", "p1-i0", "p1-i1"]

