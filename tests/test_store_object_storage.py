"""Sample stores on an object store (fsspec): `sample --out URL`, resume, --fresh, refusals, and
`extract`/`verify`/`export` reading a store by URL, all equal to a local store.

Most tests use fsspec's in-process ``memory://`` filesystem; the S3 tests run the real S3 protocol
(s3fs) against moto's S3 server on localhost, in a killed subprocess too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError, SettingsMismatchError
from diffaudit.store import SampleStore, read_samples, samples_identity
from diffaudit.store.location import ObjectFolder, open_location
from diffaudit.store.object_out import deletion_order, prepare_object_out
from helpers import cifar_images, make_tiny_model_dir, noisy_copies, strict_json

fsspec = pytest.importorskip("fsspec")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture
def bucket(request):
    """A fresh ``memory://`` prefix, emptied afterwards (fsspec's memory filesystem is one per process)."""
    url = f"memory://diffaudit-tests/{request.node.name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)
    yield url
    if fs.exists(url):
        fs.rm(url, recursive=True)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFAUDIT_CACHE", str(tmp_path / "cache"))


def sample_args(model, out, *extra):
    return ["sample", "--model", str(model), "--out", str(out), "--n", "40", "--steps", "3",
            "--shard-size", "16", "--micro-batch", "8", "--quiet", "--device", "cpu", *extra]


def _objects(url):
    return ObjectFolder(url).all_objects()


def _pixels(url, k):
    """The object holding shard ``k``'s pixels, as its sidecar names it."""
    name = ObjectFolder(url).read_json(f"shards/shard-{k:06d}.json")["pixels"]
    assert re.fullmatch(rf"shard-{k:06d}\.[0-9a-f]{{12}}\.npy", name)
    return f"shards/{name}"


def test_sample_into_an_object_store_makes_the_same_store_as_a_folder(tiny_model, tmp_path, bucket):
    assert main(sample_args(tiny_model, tmp_path / "local")) == 0
    assert main(sample_args(tiny_model, bucket)) == 0
    names = _objects(bucket)
    assert names[:3] == ["manifest.json", "result.json", "settings.json"] and len(names) == 9
    for k in range(3):  # each shard's pixels under a name of its writer's own, which its sidecar names
        assert f"shards/shard-00000{k}.json" in names and _pixels(bucket, k) in names
    local, remote = read_samples(str(tmp_path / "local")), read_samples(bucket)
    assert np.array_equal(local.images, remote.images) and local.keys == remote.keys
    lazy = read_samples(bucket, lazy=True)  # memory-mapped from the local cache
    assert np.array_equal(np.asarray(lazy.images), local.images)
    # the same generations: one identity, so a result made from one is accepted for the other
    assert samples_identity(bucket) == samples_identity(str(tmp_path / "local"))
    assert json.loads(ObjectFolder(bucket).read_bytes("result.json"))["n_samples"] == 40
    assert main(sample_args(tiny_model, bucket)) == 0  # finished: a re-run rewrites nothing


def test_a_resumed_object_store_redoes_only_unfinished_shards(tiny_model, tmp_path, bucket, monkeypatch):
    assert main(sample_args(tiny_model, bucket)) == 0
    before = read_samples(bucket).images
    loc = ObjectFolder(bucket)
    loc.remove(["shards/shard-000001.json", _pixels(bucket, 2), "result.json"])  # a writer stopped, pixels lost
    assert SampleStore.open(bucket).pending() == [1] and SampleStore.open(bucket).stray_shards() == [2]
    written = []
    original = ObjectFolder.write_npy
    monkeypatch.setattr(ObjectFolder, "write_npy", lambda self, rel, a: (written.append(rel), original(self, rel, a)))
    assert main(sample_args(tiny_model, bucket)) == 0
    assert [w[:20] for w in written] == ["shards/shard-000001.", "shards/shard-000002."]
    assert np.array_equal(read_samples(bucket).images, before)


def test_other_settings_are_refused_and_fresh_starts_over(tiny_model, bucket, capsys):
    assert main(sample_args(tiny_model, bucket)) == 0
    capsys.readouterr()
    assert main(sample_args(tiny_model, bucket, "--steps", "2")) != 0  # the later flag wins
    assert "--steps (was 3, now 2)" in capsys.readouterr().err
    assert main([*sample_args(tiny_model, bucket), "--fresh", "--n", "20"]) == 0
    store = SampleStore.open(bucket)
    assert store.manifest["n_total"] == 20 and store.completed() == [0, 1]
    assert not [n for n in _objects(bucket) if n.startswith("shards/shard-000002")]  # the old third shard went


def test_a_prefix_holding_other_objects_is_neither_used_nor_deleted(tiny_model, bucket, capsys):
    loc = ObjectFolder(bucket)
    loc.write_bytes("notes.txt", b"mine")
    for fresh in ((), ("--fresh",)):
        assert main([*sample_args(tiny_model, bucket), *fresh]) != 0
        assert "notes.txt" in capsys.readouterr().err
        assert _objects(bucket) == ["notes.txt"]


def test_shards_without_their_settings_are_refused(tiny_model, bucket, capsys):
    assert main(sample_args(tiny_model, bucket)) == 0
    ObjectFolder(bucket).remove(["settings.json"])  # e.g. an earlier --fresh stopped in the wrong order
    assert main(sample_args(tiny_model, bucket)) != 0
    assert "no settings.json" in capsys.readouterr().err


def test_fresh_deletes_the_settings_last(tiny_model, bucket, monkeypatch):
    assert deletion_order(["manifest.json", "result.json", "settings.json", "shards/shard-000000.json",
                           "shards/shard-000000.npy"]) == [["shards/shard-000000.json"],
                                                           ["result.json", "shards/shard-000000.npy"],
                                                           ["manifest.json"], ["settings.json"]]
    assert main(sample_args(tiny_model, bucket)) == 0
    reference = read_samples(bucket).images
    calls = []

    def stopped_after_two(self, rels):  # --fresh killed part-way
        if len(calls) == 2:
            raise DiffauditError("stopped")
        calls.append(rels)
        original_remove(self, rels)

    original_remove = ObjectFolder.remove
    monkeypatch.setattr(ObjectFolder, "remove", stopped_after_two)
    assert main([*sample_args(tiny_model, bucket), "--fresh"]) != 0
    monkeypatch.setattr(ObjectFolder, "remove", original_remove)
    assert _objects(bucket) == ["manifest.json", "settings.json"]  # the settings stay with what is left
    assert main(sample_args(tiny_model, bucket)) == 0  # the same settings: resumed, every shard redone
    assert np.array_equal(read_samples(bucket).images, reference)


def _looks_before_the_first_writes(monkeypatch):
    """The next command's first look finds no settings and no objects, as if it looked just before another
    command created the store; every later look sees the store as it is."""
    exists, all_objects = ObjectFolder.exists, ObjectFolder.all_objects
    looked = []

    def first_look_misses(real, empty):
        def look(self, *args):
            if real.__name__ not in looked:
                looked.append(real.__name__)
                return empty
            return real(self, *args)
        return look

    monkeypatch.setattr(ObjectFolder, "exists", first_look_misses(exists, False))
    monkeypatch.setattr(ObjectFolder, "all_objects", first_look_misses(all_objects, []))


def test_of_two_commands_starting_together_one_records_its_settings(bucket, monkeypatch):
    loc = ObjectFolder(bucket)
    assert prepare_object_out(loc, "sample", {"steps": 3}) is False
    # the second looked before the first wrote: its create-only write keeps the first's settings
    _looks_before_the_first_writes(monkeypatch)
    with pytest.raises(SettingsMismatchError, match="steps"):
        prepare_object_out(loc, "sample", {"steps": 2})
    assert prepare_object_out(loc, "sample", {"steps": 3}) is True
    assert loc.read_json("settings.json")["settings"] == {"steps": 3}


def test_shards_are_copied_into_the_cache_once(tiny_model, tmp_path, bucket, monkeypatch):
    assert main(sample_args(tiny_model, bucket)) == 0
    reference = read_samples(bucket).images
    opened = []
    original_open = ObjectFolder(bucket).fs.__class__.open

    def counting_open(self, path, mode="rb", **kw):
        opened.append(path)
        return original_open(self, path, mode, **kw)

    monkeypatch.setattr(ObjectFolder(bucket).fs.__class__, "open", counting_open)
    assert np.array_equal(np.asarray(read_samples(bucket, lazy=True).images), reference)
    assert len(opened) == 6  # each shard's pixels and sidecar
    copies = sorted((tmp_path / "cache" / "stores").rglob("shard-*.npy.*"))
    assert len(copies) == 3 and oct(copies[0].parent.stat().st_mode & 0o777) == "0o700"
    assert np.array_equal(np.asarray(read_samples(bucket, lazy=True).images), reference)
    assert len(opened) == 6  # the second read maps the copies
    copies[1].write_bytes(copies[1].read_bytes()[:-10])  # a damaged copy (not the object's size) is fetched again
    assert np.array_equal(np.asarray(read_samples(bucket, lazy=True).images), reference)
    assert len(opened) == 7


def test_unsupported_locations_are_refused_with_what_works(tiny_model, capsys):
    assert main(sample_args(tiny_model, "ftp://host/store")) != 0
    err = capsys.readouterr().err
    assert "s3://" in err and "mount ftp:// as a filesystem" in err
    assert main(["verify", "--samples", "memory://diffaudit-tests/none", "--data", "digits", "--out", "x", "--quiet"]) != 0
    assert "memory://diffaudit-tests/none is not a sample store" in capsys.readouterr().err


@pytest.fixture(scope="module")
def image_stores(tmp_path_factory):
    """The same generations (copies of two training images among unseen ones) as a local store and one
    on ``memory://``, with the training set as an .npz."""
    d = tmp_path_factory.mktemp("stores")
    train, test = cifar_images(60, "train"), cifar_images(40, "test")
    np.savez(d / "train.npz", images=train)
    images = np.concatenate([noisy_copies(train[5], 12, 1), test[:25], noisy_copies(train[42], 11, 2)])
    url = "memory://diffaudit-tests/image-store"
    for where in (d / "local", url):
        store = SampleStore.create(where, settings={"seed": 0, "kind": "test"}, prompts=[None], per_prompt=len(images),
                                   image_shape=images.shape[1:], shard_size=16, fresh=True)
        for k in range(store.n_shards):
            store.write_shard(k, images[store.plan(k).start:store.plan(k).stop])
    yield d, url
    fsspec.filesystem("memory").rm(url, recursive=True)


def test_extract_verify_and_export_read_an_object_store_as_a_folder(image_stores, tmp_path):
    d, url = image_stores
    for name, samples in (("local", d / "local"), ("remote", url)):
        assert main(["--quiet", "extract", "--samples", str(samples), "--out", str(tmp_path / f"ex-{name}"),
                     "--device", "cpu"]) == 0
        assert main(["--quiet", "verify", "--samples", str(samples), "--data", str(d / "train.npz"),
                     "--out", str(tmp_path / f"ver-{name}"), "--device", "cpu"]) == 0
        assert main(["--quiet", "export", "--samples", str(samples), "--out", str(tmp_path / f"png-{name}")]) == 0
    ex_local, ex_remote = (strict_json(tmp_path / f"ex-{n}" / "result.json") for n in ("local", "remote"))
    assert ex_local["n_groups"] == ex_remote["n_groups"] == 2
    assert ex_local["groups"] == ex_remote["groups"]
    v_local, v_remote = (strict_json(tmp_path / f"ver-{n}" / "result.json") for n in ("local", "remote"))
    assert v_local["unique_extracted"] == v_remote["unique_extracted"] >= 2
    assert v_local["extracted"] == v_remote["extracted"]
    assert v_remote["settings"]["samples"] == url
    pngs = sorted(p.name for p in (tmp_path / "png-remote").glob("*.png"))
    assert len(pngs) == 48 and pngs == sorted(p.name for p in (tmp_path / "png-local").glob("*.png"))
    # the report shows the generations of the store the result records, by URL as by path
    pages = {}
    for name in ("local", "remote"):
        assert main(["--quiet", "report", str(tmp_path / f"ver-{name}")]) == 0
        pages[name] = (tmp_path / f"ver-{name}" / "report.html").read_text()
    assert pages["remote"].count("data:image/png") == pages["local"].count("data:image/png") > 4
    assert "cannot be read from here" not in pages["remote"] and "outside the reported folder" not in pages["remote"]


def test_the_report_of_a_url_holding_no_store_shows_generations_by_id(image_stores, tmp_path):
    d, url = image_stores
    assert main(["--quiet", "verify", "--samples", url, "--data", str(d / "train.npz"), "--out", str(tmp_path / "v"),
                 "--device", "cpu"]) == 0
    settings = json.loads((tmp_path / "v" / "result.json").read_text())
    settings["settings"]["samples"] = "memory://diffaudit-tests/elsewhere"  # not there from the report's machine
    (tmp_path / "v" / "result.json").write_text(json.dumps(settings))
    assert main(["--quiet", "report", str(tmp_path / "v")]) == 0
    page = (tmp_path / "v" / "report.html").read_text()
    shown = settings["extracted"][0]["closest_sample"]  # each pair shows the closest generation counted for it
    assert "memory://diffaudit-tests/elsewhere" in page and f"<code>{shown}</code>" in page


# -- the S3 protocol, against moto's S3 server on localhost ------------------------------------------------


def test_a_killed_sample_into_s3_resumes_to_the_local_store(tiny_model, tmp_path, s3_endpoint):
    url = "s3://diffaudit-tests/killed"
    assert main(sample_args(tiny_model, tmp_path / "local")) == 0
    env = {**os.environ, "DIFFAUDIT_KILL_AT": "sample.shard:2"}
    proc = subprocess.run([sys.executable, "-m", "diffaudit.cli.main", *sample_args(tiny_model, url)], env=env)
    assert proc.returncode == -9
    partial = SampleStore.open(url)
    assert partial.completed() == [0, 1] and partial.pending() == [2]
    with pytest.raises(DiffauditError, match="unfinished"):
        partial.to_dataset()
    assert main(sample_args(tiny_model, url)) == 0
    assert np.array_equal(read_samples(url, lazy=True).images[:], read_samples(str(tmp_path / "local")).images)
    assert "result.json" in _objects(url)


def test_s3_keeps_the_first_settings_of_two_created_together(s3_endpoint, monkeypatch):
    loc = open_location("s3://diffaudit-tests/race")
    assert loc.write_json("settings.json", {"command": "sample", "settings": {"steps": 3}}, create=True)
    assert not loc.write_json("settings.json", {"command": "sample", "settings": {"steps": 2}}, create=True)
    _looks_before_the_first_writes(monkeypatch)
    with pytest.raises(SettingsMismatchError, match="steps"):
        prepare_object_out(loc, "sample", {"steps": 2})


# -- findings of the review: exact deletes, foreign settings, the cache per store, errors, races ----------------


def test_fresh_deletes_exactly_its_own_objects_even_with_pattern_characters(tiny_model, bucket):
    """fsspec reads ``[``, ``*`` and ``?`` in a key given to ``rm`` as a pattern: ``store[1]`` matched ``store1``."""
    plain, bracketed = f"{bucket}/store1", f"{bucket}/store[1]"
    assert main(sample_args(tiny_model, plain)) == 0 and main(sample_args(tiny_model, bracketed)) == 0
    before = _objects(plain)
    assert main([*sample_args(tiny_model, bracketed), "--fresh", "--n", "20"]) == 0
    assert _objects(plain) == before and len(before) == 9
    assert SampleStore.open(bracketed).manifest["n_total"] == 20


def test_a_settings_file_diffaudit_did_not_write_is_neither_used_nor_deleted(tiny_model, bucket, capsys):
    loc = ObjectFolder(bucket)
    loc.write_bytes("settings.json", b'{"learning_rate": 0.1}')
    loc.write_bytes("data/train.csv", b"x,y\n")
    for fresh in ((), ("--fresh",)):
        assert main([*sample_args(tiny_model, bucket), *fresh]) != 0
        assert "is not a settings record diffaudit wrote" in capsys.readouterr().err
        assert _objects(bucket) == ["data/train.csv", "settings.json"]


def test_two_stores_with_one_manifest_keep_their_own_cached_copies(bucket):
    """Two GPUs of one kind may round differently: stores with one manifest (one identity) and other pixels
    never share copies, and an object rewritten in place is fetched again."""
    rng = np.random.default_rng(0)
    pixels = {}
    for name in ("a", "b"):
        store = SampleStore.create(f"{bucket}/{name}", settings={"seed": 0, "kind": "test"}, prompts=[None], per_prompt=8,
                                   image_shape=(4, 4, 1), shard_size=8)
        pixels[name] = rng.integers(0, 256, (8, 4, 4, 1), dtype=np.uint8)
        store.write_shard(0, pixels[name])
    assert SampleStore.open(f"{bucket}/a").identity == SampleStore.open(f"{bucket}/b").identity
    for name in ("a", "b", "a"):
        assert np.array_equal(np.asarray(read_samples(f"{bucket}/{name}", lazy=True).images), pixels[name])
    ObjectFolder(f"{bucket}/a").write_npy(_pixels(f"{bucket}/a", 0), pixels["b"])  # rewritten by hand: another tag
    assert np.array_equal(np.asarray(read_samples(f"{bucket}/a", lazy=True).images), pixels["b"])


def test_a_failing_store_is_a_one_line_error(tiny_model, bucket, image_stores, tmp_path, monkeypatch, capsys):
    """Backends raise errors of their own kinds (botocore's NoCredentialsError, EndpointConnectionError)."""
    assert main(sample_args(tiny_model, "s3://")) != 0
    assert "s3:// names no bucket" in capsys.readouterr().err
    d, url = image_stores
    assert main(["--quiet", "verify", "--samples", url, "--data", str(d / "train.npz"), "--out", str(tmp_path / "v"),
                 "--device", "cpu"]) == 0

    class NoCredentials(Exception):  # not an OSError, like botocore's
        pass

    def refuse(self, *args, **kwargs):
        raise NoCredentials("Unable to locate credentials")

    with monkeypatch.context() as patch:
        patch.setattr(type(fsspec.filesystem("memory")), "exists", refuse)
        assert main(sample_args(tiny_model, bucket)) != 0
        err = capsys.readouterr().err
        assert "could not look it up (NoCredentials: Unable to locate credentials)" in err and "Traceback" not in err
        assert main(["--quiet", "report", str(tmp_path / "v")]) == 0  # the generations by id, with the reason
    assert "Unable to locate credentials" in (tmp_path / "v" / "report.html").read_text()


def test_a_shard_another_writer_finished_meanwhile_is_kept(bucket):
    """Two commands with the same settings on one object store (no lock): the one that finds a shard finished
    when its own images are made writes nothing and counts none."""
    from diffaudit.store import fill_shard

    images = np.arange(8 * 16, dtype=np.uint8).reshape(8, 4, 4, 1)
    mine = SampleStore.create(bucket, settings={"seed": 0}, prompts=[None], per_prompt=8, image_shape=(4, 4, 1),
                              shard_size=8)
    other = SampleStore.open(bucket)

    def source(seeds, prompts):
        other.write_shard(0, images)  # the other command finishes the shard while this one samples
        return images + 1

    assert fill_shard(mine, 0, source) == 0
    assert np.array_equal(mine.read_shard(0)[0], images)
    with pytest.raises(DiffauditError, match="never rewritten"):
        mine.write_shard(0, images)


def test_a_shard_of_the_old_settings_landing_after_fresh_is_made_again(tiny_model, bucket, monkeypatch, capsys):
    """An earlier command still writing when --fresh (other settings) replaced the store adds its shard to
    the new store: `sample` finds it by its sidecar and makes it again before it calls the store finished."""
    import diffaudit.store as store_api

    assert main(sample_args(tiny_model, bucket)) == 0
    earlier = SampleStore.open(bucket)
    late_shard, _ = earlier.read_shard(2)
    real_fill, calls = store_api.fill_store, []

    def earlier_command_lands_first(store, *args, **kwargs):
        if not calls:
            earlier.write_shard(2, late_shard)
        calls.append(1)
        return real_fill(store, *args, **kwargs)

    monkeypatch.setattr(store_api, "fill_store", earlier_command_lands_first)
    assert main([*sample_args(tiny_model, bucket), "--fresh", "--steps", "2"]) == 0
    monkeypatch.setattr(store_api, "fill_store", real_fill)
    assert len(calls) == 2  # the stray shard was found, and the store filled again
    store = SampleStore.open(bucket)
    assert store.stray_shards() == [] and store.manifest["sampler"]["steps"] == 2
    assert main(sample_args(tiny_model, f"{bucket}-fresh", "--steps", "2")) == 0
    assert np.array_equal(read_samples(bucket).images, read_samples(f"{bucket}-fresh").images)


def test_a_trailing_slash_names_the_same_store(image_stores, tmp_path, capsys):
    _, url = image_stores
    out = str(tmp_path / "ex")
    assert main(["--quiet", "extract", "--samples", url, "--out", out, "--device", "cpu"]) == 0
    assert main(["--quiet", "extract", "--samples", url + "/", "--out", out, "--device", "cpu"]) == 0
    assert strict_json(tmp_path / "ex" / "result.json")["settings"]["samples"] == url


def test_the_sample_line_names_the_url(tiny_model, bucket, capsys):
    assert main([a for a in sample_args(tiny_model, bucket) if a != "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"-> {bucket}" in captured.err and f"40 generations in {bucket}" in captured.out


def test_s3_console_folder_markers_are_not_objects_of_a_store(tiny_model, s3_endpoint):
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.pipe_file("diffaudit-tests/marked/", b"")  # what the S3 console's "Create folder" makes
    assert ObjectFolder("s3://diffaudit-tests/marked").all_objects() == []
    assert main(sample_args(tiny_model, "s3://diffaudit-tests/marked")) == 0
    assert main([*sample_args(tiny_model, "s3://diffaudit-tests/marked"), "--fresh"]) == 0


# -- second review: no object is ever overwritten, strays of every kind, the cache's owner, URL spellings --------


def test_a_late_writer_of_old_settings_never_puts_its_pixels_under_the_new_sidecar(tiny_model, tmp_path, bucket):
    """Command A (--steps 3) looked at shard 2 before B (--fresh --steps 2) replaced and finished the store,
    and writes it after: its pixels go to an object of its own, its sidecar is refused, and it removes them."""
    assert main(sample_args(tiny_model, bucket)) == 0
    earlier = SampleStore.open(bucket)
    late_pixels, _ = earlier.read_shard(2)
    assert main([*sample_args(tiny_model, bucket), "--fresh", "--steps", "2"]) == 0
    after_b = sorted(_objects(bucket))
    earlier.is_complete = lambda index: False  # A looked before B finished shard 2
    assert earlier.write_shard(2, late_pixels, unless_finished=True) is False
    assert sorted(_objects(bucket)) == after_b  # A's pixels are gone, B's untouched
    assert main(sample_args(tiny_model, tmp_path / "reference", "--steps", "2")) == 0
    assert np.array_equal(read_samples(bucket).images, read_samples(str(tmp_path / "reference")).images)
    assert SampleStore.open(bucket).stray_shards() == []


def test_a_sidecar_that_is_no_json_object_is_a_stray_shard_made_again(tiny_model, bucket):
    assert main(sample_args(tiny_model, bucket)) == 0
    reference = read_samples(bucket).images
    loc = ObjectFolder(bucket)
    loc.remove(["shards/shard-000001.json", "result.json"])
    loc.write_bytes("shards/shard-000001.json", b"[]")
    assert SampleStore.open(bucket).stray_shards() == [1]
    assert main(sample_args(tiny_model, bucket)) == 0
    assert np.array_equal(read_samples(bucket).images, reference)


def test_a_cache_others_may_write_to_is_refused(tiny_model, tmp_path, bucket, capsys):
    assert main(sample_args(tiny_model, bucket)) == 0
    shared = tmp_path / "cache"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # e.g. a DIFFAUDIT_CACHE on a shared scratch folder
    with pytest.raises(DiffauditError, match="group or others may write to it"):
        read_samples(bucket, lazy=True)
    shared.chmod(0o700)
    assert len(read_samples(bucket, lazy=True)) == 40


def test_every_spelling_of_a_location_is_recorded_alike(tmp_path):
    from diffaudit.cli.common import canonical_path

    (tmp_path / "store").mkdir()
    assert canonical_path(f"file://{tmp_path}/store") == canonical_path(str(tmp_path / "store")) == str(
        (tmp_path / "store").resolve())
    assert canonical_path("S3://Bucket/Store//") == canonical_path("s3://Bucket/Store") == "s3://Bucket/Store"


# -- third review: a replaced store, shards beyond the manifest, discarding, layouts, shapes ---------------------


def test_a_command_whose_store_was_replaced_stops_without_touching_it(tiny_model, bucket, monkeypatch, capsys):
    """A (--steps 3) has filled its store when B (--fresh --steps 2) replaces and finishes it: A must not judge
    B's shards by its own manifest (it would discard them all), nor call the store finished."""
    real, ran = SampleStore.stray_shards, []

    def b_replaces_the_store_first(self):
        if not ran and self.manifest["sampler"]["steps"] == 3:
            ran.append(main(sample_args(tiny_model, bucket, "--fresh", "--steps", "2")))
        return real(self)

    monkeypatch.setattr(SampleStore, "stray_shards", b_replaces_the_store_first)
    assert main(sample_args(tiny_model, bucket)) != 0 and ran == [0]
    assert "was replaced by another command meanwhile" in capsys.readouterr().err
    monkeypatch.setattr(SampleStore, "stray_shards", real)
    store = SampleStore.open(bucket)
    assert store.manifest["sampler"]["steps"] == 2 and store.stray_shards() == []
    assert len(read_samples(bucket)) == 40


def test_a_late_shard_beyond_the_manifest_is_never_counted_and_is_removed(tiny_model, bucket):
    assert main(sample_args(tiny_model, bucket)) == 0
    store = SampleStore.open(bucket)
    images, _ = store.read_shard(0)
    loc = ObjectFolder(bucket)
    loc.write_npy("shards/shard-000003.0123456789ab.npy", images)  # a run with more shards, landing after --fresh
    loc.write_json("shards/shard-000003.json", {"shard": 3, "pixels": "shard-000003.0123456789ab.npy"})
    assert store.completed() == [0, 1, 2] and store.stray_shards() == [3] and len(read_samples(bucket)) == 40
    assert main(sample_args(tiny_model, bucket)) == 0  # finished, but an object store is checked for strays first
    assert not [n for n in _objects(bucket) if "shard-000003" in n]


def test_discard_removes_only_the_pixels_its_sidecars_name(tiny_model, bucket):
    assert main(sample_args(tiny_model, bucket)) == 0
    loc = ObjectFolder(bucket)
    uploading = "shards/shard-000002.aaaaaaaaaaaa.npy"  # another writer's, whose sidecar comes next
    loc.write_bytes(uploading, b"not yet named")
    named = _pixels(bucket, 2)
    SampleStore.open(bucket).discard([2])
    names = _objects(bucket)
    assert uploading in names and named not in names and "shards/shard-000002.json" not in names


def test_a_losing_writer_that_may_not_delete_keeps_going(bucket, monkeypatch, capsys):
    images = np.zeros((8, 4, 4, 1), np.uint8)
    mine = SampleStore.create(bucket, settings={"seed": 0}, prompts=[None], per_prompt=8, image_shape=(4, 4, 1),
                              shard_size=8)
    SampleStore.open(bucket).write_shard(0, images)
    mine.is_complete = lambda index: False  # it looked before the other finished

    def denied(self, rels):
        raise DiffauditError("could not delete it (PermissionError: access denied)")

    monkeypatch.setattr(ObjectFolder, "remove", denied)
    assert mine.write_shard(0, images + 1, unless_finished=True) is False
    assert np.array_equal(SampleStore.open(bucket).read_shard(0)[0], images)


def test_an_object_store_copied_into_a_folder_reads_as_a_folder(tiny_model, tmp_path, bucket):
    assert main(sample_args(tiny_model, bucket)) == 0
    loc, copy = ObjectFolder(bucket), tmp_path / "copy"
    for name in _objects(bucket):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(loc.read_bytes(name))
    store = SampleStore.open(copy)
    assert store.completed() == [0, 1, 2] and store.pending() == [] and store.is_complete(1)
    assert np.array_equal(read_samples(str(copy)).images, read_samples(bucket).images)


def test_pixels_of_another_shape_or_type_are_refused(bucket):
    store = SampleStore.create(bucket, settings={"seed": 0}, prompts=[None], per_prompt=8, image_shape=(4, 4, 1),
                               shard_size=8)
    store.write_shard(0, np.zeros((8, 4, 4, 1), np.uint8))
    ObjectFolder(bucket).write_npy(_pixels(bucket, 0), np.zeros((8, 2, 2, 1), np.float32))
    for lazy in (False, True):
        with pytest.raises(DiffauditError, match=r"float32 \(8, 2, 2, 1\), not the uint8 \(8, 4, 4, 1\)"):
            read_samples(bucket, lazy=lazy)


# -- fourth review: failures are not strays, named pixels in folders, Ray and memory:// -------------------------


def test_a_sidecar_the_store_fails_to_give_is_an_error_never_a_stray(tiny_model, bucket, monkeypatch, capsys):
    """Access denied on one sidecar: the re-run says so and discards nothing (a stray would be remade)."""
    assert main(sample_args(tiny_model, bucket)) == 0
    before = _objects(bucket)
    memory = type(fsspec.filesystem("memory"))
    real = memory.cat_file

    def denied(self, path, *args, **kwargs):
        if str(path).endswith("shard-000001.json"):
            raise PermissionError("Access Denied (GetObject)")
        return real(self, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(memory, "cat_file", denied)
        assert main(sample_args(tiny_model, bucket)) != 0
    assert "could not read it (PermissionError: Access Denied (GetObject))" in capsys.readouterr().err
    assert _objects(bucket) == before


def test_a_folder_copy_missing_the_pixels_its_sidecar_names_remakes_that_shard(tiny_model, tmp_path, bucket):
    assert main(sample_args(tiny_model, bucket)) == 0
    loc, copy = ObjectFolder(bucket), tmp_path / "copy"
    for name in _objects(bucket):
        if name != "result.json" and name != _pixels(bucket, 1):  # an interrupted copy
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes(loc.read_bytes(name))
    (copy / "shards" / "shard-000001.0123456789ab.npy").write_bytes(loc.read_bytes(_pixels(bucket, 0)))  # an orphan
    assert SampleStore.open(copy).stray_shards() == [1]
    assert main(sample_args(tiny_model, copy)) == 0
    assert np.array_equal(read_samples(str(copy)).images, read_samples(bucket).images)


def test_a_local_sidecar_that_cannot_be_read_is_a_one_line_error(tiny_model, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(sample_args(tiny_model, out)) == 0
    (out / "result.json").unlink()
    (out / "shards" / "shard-000001.json").unlink()
    (out / "shards" / "shard-000001.json").mkdir()  # a folder where the sidecar should be
    assert main(sample_args(tiny_model, out)) != 0
    err = capsys.readouterr().err
    assert "shard-000001.json: could not read it" in err and "Traceback" not in err


def test_ray_workers_cannot_reach_a_memory_filesystem(tiny_model, bucket, image_stores, tmp_path, capsys):
    assert main(sample_args(tiny_model, bucket, "--ray", "local")) != 0
    assert "memory:// exists only inside this process" in capsys.readouterr().err
    _, url = image_stores
    for command in (["extract"], ["verify", "--data", "digits"]):
        assert main(["--quiet", *command, "--samples", url, "--out", str(tmp_path / command[0]), "--ray", "local"]) != 0
        assert "Ray workers cannot reach it" in capsys.readouterr().err
    assert _objects(bucket) == []
