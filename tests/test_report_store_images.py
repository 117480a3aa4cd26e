"""The report reads a sample store's pixels through the store's own checked reader.

A shard whose sidecar disagrees with the manifest (another run's, or edited) is refused by
``SampleStore.read_shard``; the report must not show its pixels either: those generations come back
as None (shown by id, like any unreadable image) and ``SampleImages.error`` says why.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.report.images import SampleImages
from diffaudit.store import SampleStore


def _store(root):
    """Two prompts x 4 images in shards of 4: shard 0 is prompt 0 (pixels 10 + image), shard 1 prompt 1."""
    store = SampleStore.create(root, settings={"seed": 3, "steps": 2}, prompts=["a cat", "a dog"], per_prompt=4,
                               image_shape=(4, 4, 1), shard_size=4)
    for k in range(2):
        store.write_shard(k, (10 * (k + 1) + np.arange(4, dtype=np.uint8))[:, None, None, None].repeat(4, 1).repeat(4, 2))
    return store


def _edit_sidecar(root, k, **fields):
    side = root / "shards" / f"shard-{k:06d}.json"
    meta = json.loads(side.read_text())
    meta.update(fields)
    side.write_text(json.dumps(meta))


def test_a_consistent_store_shows_every_generation(tmp_path):
    _store(tmp_path / "s")
    images = SampleImages(tmp_path / "s")
    assert len(images) == 8
    assert int(images.get("p0-i2")[0, 0, 0]) == 12 and int(images.get("p1-i3")[0, 0, 0]) == 23
    assert images.get("p1-i4") is None and images.get("p2-i0") is None and images.get("../x") is None
    assert images.error is None


@pytest.mark.parametrize("fields, what", [
    ({"prompts": ["a horse"] * 4}, "prompts"),
    ({"sampler": {"seed": 9, "steps": 50}}, "sampler settings"),
    ({"seeds": [0, 1, 2, 3]}, "seeds"),
    ({"ids": ["p1-i1", "p1-i0", "p1-i2", "p1-i3"]}, "generation ids"),
])
def test_a_shard_whose_sidecar_disagrees_with_the_manifest_is_not_shown(tmp_path, fields, what):
    _store(tmp_path / "s")
    _edit_sidecar(tmp_path / "s", 1, **fields)
    images = SampleImages(tmp_path / "s")
    assert images.get("p1-i0") is None and images.get("p1-i1") is None
    assert int(images.get("p0-i1")[0, 0, 0]) == 11  # the other shard is still shown
    assert f"shard 1 records other {what} than" in images.error and "shard-000001.json" in images.error
    assert "made by another run" in images.error


def test_a_sidecar_id_that_is_not_a_generation_id_is_refused(tmp_path):
    _store(tmp_path / "s")
    _edit_sidecar(tmp_path / "s", 0, ids=["../x", "p0-i1", "p0-i2", "p0-i3"])
    images = SampleImages(tmp_path / "s")
    assert images.get("p0-i1") is None
    assert "'../x' is not a generation id" in images.error


def test_a_shard_the_manifest_does_not_plan_is_never_shown(tmp_path):
    """A stray shard beyond the manifest's shards (another run's) is not indexed by its sidecar ids."""
    store = _store(tmp_path / "s")
    shards = tmp_path / "s" / "shards"
    np.save(shards / "shard-000002.npy", np.full((4, 4, 4, 1), 99, np.uint8))
    meta = json.loads((store.path / store._sidecar(1)).read_text())
    (shards / "shard-000002.json").write_text(json.dumps({**meta, "shard": 2, "ids": [f"p2-i{i}" for i in range(4)]}))
    images = SampleImages(tmp_path / "s")
    assert images.get("p2-i0") is None and images.error is None


def test_a_damaged_manifest_shows_generations_by_id_and_says_why(tmp_path):
    _store(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    images = SampleImages(tmp_path / "s")
    assert images.get("p0-i0") is None and len(images) == 0
    assert "manifest.json is not valid JSON" in images.error
    manifest = {"schema_version": 1, "prompts": ["a cat", "a dog"]}  # no layout
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    images = SampleImages(tmp_path / "s")
    assert images.get("p0-i0") is None and "does not say how the store is laid out" in images.error


def test_the_clique_view_says_why_members_are_shown_by_id(tmp_path):
    """The extraction views name the store's refusal in their notes, once the refused shard was read."""
    from diffaudit.report.results import ResultSet, Stage
    from diffaudit.report.view_extraction import cliques

    _store(tmp_path / "s")
    _edit_sidecar(tmp_path / "s", 1, seeds=[0, 1, 2, 3])
    result = {"settings": {"samples": str(tmp_path / "s"), "min_clique": 2}, "mode": "conditional",
              "prompts": [{"prompt": "a dog", "members": ["p1-i0", "p1-i1"], "medoid": "p1-i0", "flagged": True,
                           "largest_clique": 2, "mean_distance": 0.01}]}
    rs = ResultSet(root=tmp_path, command="extract", stages=[Stage("extract", "extract", tmp_path, result)])
    view = cliques(rs)
    assert all(m["uri"] is None for m in view["items"][0]["members"])
    assert any("clique members are shown by id" in n and "records other seeds than" in n for n in view["notes"])
