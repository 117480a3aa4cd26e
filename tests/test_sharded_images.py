"""A sample store read lazily: ShardedImages indexing, streamed nearest-neighbour search that never
reads the whole store, and verify/extract giving the same answers on a store as on the same images
in an .npz."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.attacks.extraction import knn_cache
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data import ImageDataset, ShardedImages
from diffaudit.distances.knn import knn_search
from diffaudit.store import SampleStore, read_samples
from helpers import cifar_images, noisy_copies


def _parts(rng):
    sizes = [5, 1, 7, 3]
    return [rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8) for n in sizes]


def test_indexing_matches_the_concatenated_array():
    rng = np.random.default_rng(0)
    parts = _parts(rng)
    full = np.concatenate(parts)
    s = ShardedImages(parts)
    assert len(s) == 16 and s.shape == (16, 4, 4, 3) and s.dtype == np.uint8 and s.nbytes == full.nbytes
    for i in (0, 4, 5, 6, 15, -1, -16):
        assert np.array_equal(s[i], full[i])
    for sl in (slice(0, 16), slice(3, 14), slice(5, 6), slice(6, 6), slice(2, 15, 3), slice(None, None, -1), slice(-4, None)):
        assert np.array_equal(s[sl], full[sl]), sl
    idx = np.array([15, 0, 5, 5, 12, -2])
    assert np.array_equal(s[idx], full[idx])
    assert np.array_equal(s[[3, 1]], full[[3, 1]])
    mask = rng.random(16) < 0.5
    assert np.array_equal(s[mask], full[mask])
    assert np.array_equal(np.asarray(s), full)
    for bad in (16, -17, np.array([0, 16])):
        with pytest.raises(IndexError):
            s[bad]
    with pytest.raises(IndexError):
        s[np.array([0.5])]


def test_parts_must_share_one_image_shape():
    with pytest.raises(DiffauditError, match="one image shape"):
        ShardedImages([np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 5, 3), np.uint8)])
    with pytest.raises(DiffauditError, match="no images"):
        ShardedImages([np.zeros((0, 4, 4, 3), np.uint8)])


def test_dataset_holds_sharded_images_and_subsets_read_rows():
    parts = _parts(np.random.default_rng(1))
    ds = ImageDataset(ShardedImages(parts), [f"g{i}" for i in range(16)])
    assert ds.image_shape == (4, 4, 3) and len(ds) == 16
    sub = ds.subset([14, 2])  # two runs, each in one part: lazy
    assert isinstance(sub.images, ShardedImages) and sub.keys == ["g14", "g2"]
    assert np.array_equal(np.asarray(sub.images), np.concatenate(parts)[[14, 2]])


def _no_full_read(monkeypatch):
    def refuse(self, *a, **k):
        raise AssertionError("the whole ShardedImages was read into memory")
    monkeypatch.setattr(ShardedImages, "__array__", refuse)


@pytest.mark.parametrize("ref_cache_bytes", [0, None])
def test_knn_streams_sharded_queries_and_reference(monkeypatch, ref_cache_bytes):
    imgs = cifar_images(300)[:, :8, :8]
    parts = [imgs[:70], imgs[70:71], imgs[71:200], imgs[200:]]
    want = knn_search(imgs, imgs, 5, exclude_self=True, device="cpu", query_block=64, ref_block=50)
    if ref_cache_bytes == 0:
        _no_full_read(monkeypatch)  # streamed: only parts and blocks are ever read
    got = knn_search(ShardedImages(parts), ShardedImages(parts), 5, exclude_self=True, device="cpu", query_block=64,
                     ref_block=50, ref_cache_bytes=ref_cache_bytes)
    assert np.array_equal(got.indices, want.indices) and np.array_equal(got.sq, want.sq)


def test_cached_knn_bounds_chunk_bytes(monkeypatch, tmp_path):
    imgs = cifar_images(120)
    s = ShardedImages([imgs[:50], imgs[50:]])
    _no_full_read(monkeypatch)
    row = imgs[0].size
    monkeypatch.setattr(knn_cache, "CHUNK_BYTES", 25 * row)  # 25 queries per chunk at most
    got = knn_cache.cached_knn(s, imgs, 3, tmp_path / "knn", device="cpu")
    assert len(list((tmp_path / "knn").glob("knn-*.npz"))) == 5
    want = knn_search(imgs, imgs, 3, device="cpu")
    assert np.array_equal(got.indices, want.indices)


def make_store(path, images, prompts=None, shard_size=16):
    """A finished sample store holding ``images`` (per-prompt blocks when ``prompts`` is given)."""
    names = sorted(set(prompts), key=list(prompts).index) if prompts is not None else [None]
    per = len(images) // len(names)
    store = SampleStore.create(path, settings={"seed": 0, "source": "test"}, prompts=names, per_prompt=per,
                               image_shape=images.shape[1:], shard_size=shard_size)
    for k in range(store.n_shards):
        pl = store.plan(k)
        store.write_shard(k, images[pl.start:pl.stop])
    return store


def test_store_read_lazily_equals_eager(tmp_path):
    imgs = cifar_images(40)
    make_store(tmp_path / "s", imgs, shard_size=16)
    lazy, eager = read_samples(str(tmp_path / "s"), lazy=True), read_samples(str(tmp_path / "s"))
    assert isinstance(lazy.images, ShardedImages) and isinstance(eager.images, np.ndarray)
    assert lazy.keys == eager.keys and np.array_equal(np.asarray(lazy.images), eager.images)
    assert np.array_equal(lazy.images[10:30], imgs[10:30])


def _result(path):
    r = json.loads((path / "result.json").read_text())
    for k in ("settings", "runtime", "created", "finished", "elapsed_seconds", "versions", "environment"):
        r.pop(k, None)
    return r


def test_verify_and_extract_on_a_store_equal_the_npz(tmp_path, monkeypatch):
    train = cifar_images(200)
    unc = np.concatenate([noisy_copies(train[5], 12, 1), cifar_images(36, "test"), noisy_copies(train[42], 12, 2)])
    np.savez(tmp_path / "train.npz", images=train)
    np.savez(tmp_path / "unc.npz", images=unc)
    make_store(tmp_path / "store", unc, shard_size=16)
    # the npz's keys are npz:<i>, the store's are generation ids: compare by position
    ids = read_samples(str(tmp_path / "store")).keys
    for src, name in ((tmp_path / "unc.npz", "npz"), (tmp_path / "store", "store")):
        if name == "store":
            _no_full_read(monkeypatch)  # verify reads the store chunk by chunk
        assert main(["--quiet", "verify", "--samples", str(src), "--data", str(tmp_path / "train.npz"),
                     "--out", str(tmp_path / f"v-{name}"), "--device", "cpu"]) == 0
        monkeypatch.undo()  # extract keeps a reference that fits its cache budget (1 GiB on the CPU) prepared
        assert main(["--quiet", "extract", "--samples", str(src), "--out", str(tmp_path / f"e-{name}"),
                     "--device", "cpu", "--k-neighbors", "16"]) == 0
    v_npz, v_store = _result(tmp_path / "v-npz"), _result(tmp_path / "v-store")
    assert v_store["unique_extracted"] == v_npz["unique_extracted"] == 2
    assert [e["train_id"] for e in v_store["extracted"]] == [e["train_id"] for e in v_npz["extracted"]]
    assert [e["sample"] for e in v_store["extracted"]] == [ids[int(e["sample"].split(":")[1])] for e in v_npz["extracted"]]
    e_npz, e_store = _result(tmp_path / "e-npz"), _result(tmp_path / "e-store")
    assert e_store["n_groups"] == e_npz["n_groups"] == 2
    assert [sorted(g["members"]) for g in e_store["groups"]] == \
        [sorted(ids[int(m.split(":")[1])] for m in g["members"]) for g in e_npz["groups"]]


def test_file_parts_are_mapped_one_at_a_time(tmp_path):
    imgs = cifar_images(30)[:, :8, :8]
    paths = []
    for j, (lo, hi) in enumerate(((0, 10), (10, 11), (11, 30))):
        paths.append(tmp_path / f"p{j}.npy")
        np.save(paths[-1], imgs[lo:hi])
    s = ShardedImages(paths)
    assert s.shape == (30, 8, 8, 3) and s._open is None  # opening reads headers only
    assert np.array_equal(s[5:25], imgs[5:25]) and np.array_equal(s[[29, 0, 10]], imgs[[29, 0, 10]])
    assert s._open is not None and s._open[0] in (0, 1, 2)  # at most one mapped part
    assert np.array_equal(np.concatenate(list(s.parts())), imgs) and s._open is None
    np.save(tmp_path / "bad.npy", np.zeros((2, 8, 9, 3), np.uint8))
    with pytest.raises(DiffauditError, match="one image shape"):
        ShardedImages(paths + [tmp_path / "bad.npy"])
