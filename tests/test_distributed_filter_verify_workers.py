"""`extract --ray` and `verify --ray` without Ray: the workers that a cluster would run are built from
what Ray would ship them (pickled), in this process, and fill the pending parts out of order. The
result must be the one a single process writes, and a worker's refusal must be the command's error."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import diffaudit.attacks.extraction.knn_cache as knn_cache
import diffaudit.cli.extract as extract_cli
import diffaudit.cli.verify as verify_cli
import diffaudit.core.ray_pool as ray_pool
from diffaudit.cli.main import main
from diffaudit.cli.ray_work import ImagesRecipe
from diffaudit.core.errors import DiffauditError
from diffaudit.store import samples_identity, read_samples
from helpers import cifar_images, noisy_copies, strict_json


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    train = cifar_images(120, "train")
    test = cifar_images(260, "test")
    np.savez(d / "train.npz", images=train)
    np.savez(d / "unseen.npz", images=test[100:260])  # 160 > 120: the baseline's equal-size pick
    unc = np.concatenate([noisy_copies(train[5], 12, 1), test[:40], noisy_copies(train[42], 11, 2)])
    np.savez(d / "unc.npz", images=unc)
    # 8 prompts: 4 parts when a part holds 2
    cond = np.concatenate([noisy_copies(train[17], 10, 3), test[40:70], noisy_copies(train[9], 10, 4), test[70:80]])
    prompts = ["memorized"] * 10 + [f"fresh {i // 6}" for i in range(30)] + ["also memorized"] * 10 + ["late"] * 10
    np.savez(d / "cond.npz", images=cond, prompts=np.array(prompts))
    return d


@pytest.fixture
def cluster(monkeypatch):
    """Replaces Ray: each job's worker is built from its pickled factory and arguments and computes the
    pending parts last to first; records every job it ran."""
    jobs = []

    def run_parts(address, factory, args, pending, *, label, size, total, unit, use_gpu, completed=0, workers=None,
                  threads=1, per_node=False, max_rounds=5):
        factory, args = pickle.loads(pickle.dumps((factory, tuple(args))))  # what Ray ships must pickle
        # a worker's node has its own working directory: every path it is given is absolute
        assert all(os.path.isabs(a) for a in args if isinstance(a, str) and os.sep in a), args
        todo = pending()
        worker = factory(*args, threads or 1)
        for part in reversed(todo):
            assert worker.fill(part) == part
        assert not pending(), "the parts a worker filled are still pending"
        jobs.append((address, label, len(todo), sum(size(p) for p in todo) == total))
        return 1

    class CpuCluster:  # what the commands ask of the cluster they connect to: its resources
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

    monkeypatch.setattr(ray_pool, "run_parts", run_parts)
    for module in (extract_cli, verify_cli, ray_pool):  # no cluster to connect to
        monkeypatch.setattr(module, "connect", lambda address: CpuCluster)
    monkeypatch.setattr(knn_cache, "CHUNK_BYTES", 20 * 32 * 32 * 3)  # 20 queries a chunk: several chunks
    monkeypatch.setattr(extract_cli, "PROMPTS_PER_PART", 2)
    return jobs


def run(*argv) -> int:
    return main(["--quiet", *map(str, argv)])


def _same_verify(a, b):
    ra, rb = strict_json(a / "result.json"), strict_json(b / "result.json")
    for key in ("extracted", "unique_extracted", "n_extracting_samples", "baseline_unique_extracted", "baseline", "rule"):
        assert ra.get(key) == rb.get(key), key
    with np.load(a / "per_sample.npz") as za, np.load(b / "per_sample.npz") as zb:
        for key in za.files:
            assert np.array_equal(za[key], zb[key]), key


def test_verify_on_workers_gives_the_single_process_result(files, tmp_path, cluster):
    argv = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline", files / "unseen.npz",
            "--device", "cpu")
    assert run(*argv, "--out", tmp_path / "one") == 0
    assert not cluster
    assert run(*argv, "--out", tmp_path / "ray", "--ray", "somewhere:6379") == 0
    assert [(j[0], j[1], j[2]) for j in cluster] == [("somewhere:6379", "verify: nearest training images (ray)", 4),
                                                     ("somewhere:6379", "verify: nearest baseline images (ray)", 4)]
    assert all(j[3] for j in cluster)
    _same_verify(tmp_path / "one", tmp_path / "ray")
    assert strict_json(tmp_path / "ray" / "result.json")["unique_extracted"] >= 2
    for cache in ("knn", "knn-baseline"):  # the workers' chunks are the single process's chunks
        names = sorted(p.name for p in (tmp_path / "one" / cache).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "ray" / cache).iterdir()) and len(names) == 4
        for name in names:
            with np.load(tmp_path / "one" / cache / name) as za, np.load(tmp_path / "ray" / cache / name) as zb:
                assert all(np.array_equal(za[k], zb[k]) for k in za.files)


def test_verify_from_extract_on_workers_reads_the_medoids_only(files, tmp_path, cluster):
    ex = tmp_path / "ex"
    assert run("extract", "--samples", files / "unc.npz", "--out", ex, "--device", "cpu", "--k-neighbors", "16") == 0
    argv = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--from-extract", ex / "result.json",
            "--device", "cpu")
    assert run(*argv, "--out", tmp_path / "one") == 0
    del cluster[:]
    assert run(*argv, "--out", tmp_path / "ray", "--ray", "local") == 0
    assert [j[2] for j in cluster] == [1]  # two medoids: one chunk
    _same_verify(tmp_path / "one", tmp_path / "ray")


def test_extract_on_workers_gives_the_single_process_result(files, tmp_path, cluster):
    for samples, parts in (("cond.npz", 4), ("unc.npz", 4)):
        argv = ("extract", "--samples", files / samples, "--device", "cpu", "--k-neighbors", "16")
        one, dist = tmp_path / f"one-{samples}", tmp_path / f"ray-{samples}"
        assert run(*argv, "--out", one) == 0
        del cluster[:]
        assert run(*argv, "--out", dist, "--ray", "auto") == 0
        assert [j[2] for j in cluster] == [parts]
        ra, rb = strict_json(one / "result.json"), strict_json(dist / "result.json")
        key = "prompts" if "prompts" in ra else "groups"
        assert ra[key] == rb[key] and ra["mode"] == rb["mode"]
    cond = strict_json(tmp_path / "ray-cond.npz" / "result.json")
    assert cond["n_prompts"] == 8
    assert sorted(p["prompt"] for p in cond["prompts"] if p["flagged"]) == ["also memorized", "memorized"]
    assert len(strict_json(tmp_path / "ray-unc.npz" / "result.json")["groups"]) == 2


def test_a_resumed_run_sends_only_what_is_left(files, tmp_path, cluster):
    argv = ("extract", "--samples", files / "cond.npz", "--device", "cpu", "--out", tmp_path / "x")
    assert run(*argv) == 0
    (tmp_path / "x" / "result.json").unlink()
    (tmp_path / "x" / "parts" / "part-000002.json").unlink()  # as if killed with one part unwritten
    assert run(*argv, "--ray", "local") == 0
    assert [j[2] for j in cluster] == [1]


def test_a_worker_that_finds_other_images_refuses_and_the_command_says_so(files, tmp_path, cluster, capsys, monkeypatch):
    spec = str(tmp_path / "unc.npz")
    np.savez(spec, images=np.load(files / "unc.npz")["images"])
    recipe = ImagesRecipe("generations", spec, samples_identity(spec, read_samples(spec)))
    assert len(recipe.load()) == 63
    np.savez(spec, images=np.load(files / "unc.npz")["images"][::-1])  # the node holds other generations
    with pytest.raises(DiffauditError, match="holds other images on this node"):
        recipe.load()

    real_load = ImagesRecipe.load

    def other_data_on_the_node(self):
        if self.kind == "data":
            raise DiffauditError(f"Ray worker: {self.spec} holds other images on this node")
        return real_load(self)

    monkeypatch.setattr(ImagesRecipe, "load", other_data_on_the_node)
    capsys.readouterr()
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--out", tmp_path / "v",
               "--device", "cpu", "--ray", "local") == 2
    assert "holds other images on this node" in capsys.readouterr().err
    assert not (tmp_path / "v" / "result.json").exists()


def test_recipes_pick_after_checking_what_was_loaded(files):
    from diffaudit.data import load_dataset
    from diffaudit.data.digest import dataset_digest

    spec = str(files / "unseen.npz")
    full = load_dataset(spec)
    recipe = ImagesRecipe("data", spec, dataset_digest(full), pick=(3, 1, 4))
    ds = recipe.load()
    assert np.array_equal(ds.images, full.images[[3, 1, 4]]) and list(ds.keys) == [full.keys[i] for i in (3, 1, 4)]
    with pytest.raises(DiffauditError, match="other images"):
        ImagesRecipe("data", spec, "0" * 16).load()


def test_a_cluster_that_cannot_be_reached_is_an_error_before_anything_is_written(files, tmp_path, capsys):
    """Ray itself retries an address where nothing listens without end; the command says so at once
    (or, without Ray installed, says how to install it), before it reads its inputs or makes --out."""
    import importlib.util

    for argv in (("verify", "--samples", files / "unc.npz", "--data", files / "train.npz"),
                 ("extract", "--samples", files / "unc.npz")):
        out = tmp_path / argv[0]
        assert run(*argv, "--out", out, "--device", "cpu", "--ray", "127.0.0.1:1") == 2
        err = capsys.readouterr().err
        expected = "nothing answers there" if importlib.util.find_spec("ray") else "--ray needs Ray"
        assert expected in err and "Traceback" not in err and not out.exists()


def test_workers_search_spans_of_a_chunk_merged_into_the_chunk_a_single_process_writes(files, tmp_path, cluster,
                                                                                       monkeypatch):
    """A chunk of queries is cut into spans for the workers (so a default chunk of 16,384 queries is
    shared among many), and their files are merged into the one chunk file a single process writes."""
    import diffaudit.cli.ray_work as ray_work

    monkeypatch.setattr(knn_cache, "CHUNK_BYTES", 512 << 20)  # the default: 63 queries are one chunk
    monkeypatch.setattr(ray_work, "SPAN_ROWS", 7)
    argv = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--device", "cpu")
    assert run(*argv, "--out", tmp_path / "one") == 0
    assert run(*argv, "--out", tmp_path / "ray", "--ray", "local") == 0
    assert [j[2] for j in cluster] == [9]  # 63 queries in spans of 7
    _same_verify(tmp_path / "one", tmp_path / "ray")
    names = sorted(p.name for p in (tmp_path / "ray" / "knn").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one" / "knn").iterdir()) == ["knn-0000000000-0000000063.npz"]
    with np.load(tmp_path / "one" / "knn" / names[0]) as za, np.load(tmp_path / "ray" / "knn" / names[0]) as zb:
        assert all(np.array_equal(za[k], zb[k]) for k in za.files)


def test_a_relative_out_reaches_the_workers_as_an_absolute_path(files, tmp_path, cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--device", "cpu",
               "--out", "rel", "--ray", "local") == 0
    assert run("extract", "--samples", files / "cond.npz", "--device", "cpu", "--out", "rel-x", "--ray", "local") == 0
    assert [j[2] for j in cluster] == [4, 4]
    assert (tmp_path / "rel" / "result.json").exists() and (tmp_path / "rel-x" / "result.json").exists()


def test_spans_left_by_a_run_stopped_before_merging_are_merged_by_any_re_run(files, tmp_path, cluster, monkeypatch):
    """A --ray run killed after its workers wrote every span of a chunk, before it merged them: a re-run
    without Ray merges them (nothing recomputed) and leaves no span behind; spans that do not cover
    their chunk are removed and the chunk computed whole."""
    import diffaudit.cli.ray_work as ray_work

    monkeypatch.setattr(knn_cache, "CHUNK_BYTES", 512 << 20)  # one chunk of 63 queries
    monkeypatch.setattr(ray_work, "SPAN_ROWS", 16)
    argv = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--device", "cpu")
    assert run(*argv, "--out", tmp_path / "one") == 0

    real_merge = knn_cache.merge_spans

    def killed(*a, **k):
        raise SystemExit(137)

    for name, drop in (("merged", None), ("partial", "knn-0000000016-0000000032.npz")):
        out = tmp_path / name
        monkeypatch.setattr(knn_cache, "merge_spans", killed)
        with pytest.raises(SystemExit):
            main(["--quiet", *map(str, argv), "--out", str(out), "--ray", "local"])
        monkeypatch.setattr(knn_cache, "merge_spans", real_merge)
        spans = sorted(p.name for p in (out / "knn").iterdir())
        assert len(spans) == 4 and "knn-0000000000-0000000063.npz" not in spans
        if drop:
            (out / "knn" / drop).unlink()
        searched = []
        real_search = knn_cache._search_run
        monkeypatch.setattr(knn_cache, "_search_run", lambda q, p, k, chunks, **kw: searched.append(
            sum(hi - lo for lo, hi in chunks)) or real_search(q, p, k, chunks, **kw))
        assert run(*argv, "--out", out) == 0  # without Ray
        monkeypatch.setattr(knn_cache, "_search_run", real_search)
        assert searched == ([] if drop is None else [63])
        assert sorted(p.name for p in (out / "knn").iterdir()) == ["knn-0000000000-0000000063.npz"]
        _same_verify(tmp_path / "one", out)


def test_on_a_cluster_with_gpus_the_workers_use_them_though_this_machine_has_none(files, tmp_path, monkeypatch, capsys):
    """--device auto with --ray follows the cluster: a CPU-only head hands its workers cuda (one per GPU)
    and says it computes its own share on the CPU; before this, such a head kept the workers on CPUs."""
    import torch

    class GpuCluster:
        @staticmethod
        def cluster_resources():
            return {"CPU": 32.0, "GPU": 4.0}

    asked = []

    def run_parts(address, factory, args, pending, *, use_gpu, **kw):
        asked.append((kw["label"], use_gpu, [a for a in args if a in ("cpu", "cuda")]))
        raise DiffauditError("stopped by the test")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray_pool, "run_parts", run_parts)
    for module in (extract_cli, verify_cli, ray_pool):
        monkeypatch.setattr(module, "connect", lambda address: GpuCluster)
    monkeypatch.setattr(extract_cli, "PROMPTS_PER_PART", 2)
    assert main(["extract", "--samples", str(files / "cond.npz"), "--out", str(tmp_path / "x"), "--ray", "gpus:6379"]) == 2
    assert main(["verify", "--samples", str(files / "unc.npz"), "--data", str(files / "train.npz"),
                 "--out", str(tmp_path / "v"), "--ray", "gpus:6379"]) == 2
    assert asked == [("extract: filter prompts (ray)", True, ["cuda"]),
                     ("verify: nearest training images (ray)", True, ["cuda"])]
    err = capsys.readouterr().err
    assert err.count("this machine has no CUDA; the Ray workers run on the cluster's GPUs") == 2
    assert "stopped by the test" in err


def test_an_empty_ray_address_is_refused_not_run_in_one_process(files, tmp_path, capsys):
    """`--ray "$ADDR"` with the variable unset ran everything in this process without a word."""
    for argv in (("verify", "--samples", files / "unc.npz", "--data", files / "train.npz"),
                 ("extract", "--samples", files / "unc.npz"), ("sample", "--model", tmp_path / "m", "--n", "4")):
        out = tmp_path / argv[0]
        with pytest.raises(SystemExit) as exit_:
            run(*argv, "--out", out, "--device", "cpu", "--ray", " ")
        assert exit_.value.code == 2 and not out.exists()
        assert "argument --ray: empty: give a Ray address HOST:PORT, `auto` or `local`" in capsys.readouterr().err


def test_a_cluster_that_answers_but_refuses_this_process_is_not_called_missing(monkeypatch):
    """A running cluster that refuses the driver (Ray's token authentication, another version) was reported
    as "cannot connect to a Ray cluster ... start one with `ray start --head`"."""
    import sys
    import types

    from diffaudit.core import ray_pool

    def refuse(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6390")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=refuse)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_pool, "_check_reachable", lambda *a, **k: None)  # the port answers
    with pytest.raises(DiffauditError) as err:
        ray_pool.connect("127.0.0.1:6390")
    msg = str(err.value)
    assert "a Ray cluster answers there but this process could not join it" in msg and "ray start --head" not in msg
    assert "authentication" in msg and "`--ray auto`" in msg


def test_workers_keep_an_image_whose_caption_is_missing_as_the_command_does(files, tmp_path, cluster):
    """verify keeps an image of --data whose caption file is missing (it never uses captions); its --ray
    workers loaded the data needing captions, and refused it where a single process verified it."""
    from PIL import Image

    data = tmp_path / "captioned"
    data.mkdir()
    for i, img in enumerate(np.load(files / "train.npz")["images"][:50]):
        Image.fromarray(img).save(data / f"{i:03d}.png")
        if i != 5:  # 005.png, copied by generations of unc.npz, has no caption
            (data / f"{i:03d}.txt").write_text(f"photo {i}")
    argv = ("verify", "--samples", files / "unc.npz", "--data", data, "--device", "cpu")
    assert run(*argv, "--out", tmp_path / "one") == 0
    del cluster[:]
    assert run(*argv, "--out", tmp_path / "ray", "--ray", "local") == 0
    assert cluster, "the workers did not run"
    _same_verify(tmp_path / "one", tmp_path / "ray")
    assert "005.png" in {e["train_key"] for e in strict_json(tmp_path / "ray" / "result.json")["extracted"]}


def test_auto_from_a_ray_address_nothing_answers_at_says_to_correct_the_variable(monkeypatch):
    """`--ray auto` reads $RAY_ADDRESS first: where nothing answers there, the refusal named an address the user never
    typed and advised starting a cluster (one was running); it now names the variable and says to correct it."""
    import sys
    import types

    from diffaudit.core import ray_pool

    fake = types.SimpleNamespace(is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_pool, "_auto_address", lambda: "127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "localhost:1")
    with pytest.raises(DiffauditError) as err:
        ray_pool.connect("auto")
    msg = str(err.value)
    assert msg.startswith("--ray auto (the cluster at 127.0.0.1:1, from RAY_ADDRESS=localhost:1): nothing answers there")
    assert msg.endswith("correct or unset RAY_ADDRESS, which --ray auto reads first") and "ray start --head" not in msg
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(DiffauditError, match=r"--ray auto \(the cluster at 127.0.0.1:1\): .*ray start --head"):
        ray_pool.connect("auto")
