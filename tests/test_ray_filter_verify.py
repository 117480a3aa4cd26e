"""`extract --ray` and `verify --ray` on a local Ray instance, with a worker killed mid-run (slow:
starts Ray). The result must be the one a single process writes."""

from __future__ import annotations

import numpy as np
import pytest

import diffaudit.attacks.extraction.knn_cache as knn_cache
import diffaudit.cli.extract as extract_cli
from diffaudit.cli.main import main
from diffaudit.cli.ray_work import ImagesRecipe, KnnChunkWorker
from diffaudit.core.errors import DiffauditError
from diffaudit.core.ray_pool import run_parts
from helpers import cifar_images, finished_store, noisy_copies, strict_json

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'diffaudit[ray]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rayfv")
    train = cifar_images(120, "train")
    np.savez(d / "train.npz", images=train)
    np.savez(d / "unseen.npz", images=cifar_images(260, "test")[100:260])  # 160 > 120: an equal-size pick
    test = cifar_images(80, "test")
    np.savez(d / "unc.npz", images=np.concatenate([noisy_copies(train[5], 12, 1), test[:40], noisy_copies(train[42], 11, 2)]))
    cond = np.concatenate([noisy_copies(train[17], 10, 3), test[40:70], noisy_copies(train[9], 10, 4)])
    prompts = ["memorized"] * 10 + [f"fresh {i // 6}" for i in range(30)] + ["also memorized"] * 10
    np.savez(d / "cond.npz", images=cond, prompts=np.array(prompts))
    return d


def run(*argv) -> int:
    return main(["--quiet", *map(str, argv)])


def killing_ray(tmp_path, point: str) -> None:
    """A fresh local Ray whose workers kill themselves (SIGKILL) at ``point`` once between them."""
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DIFFAUDIT_KILL_AT": point, "DIFFAUDIT_KILL_ONCE": str(tmp_path / "killed-once")}})


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(knn_cache, "CHUNK_BYTES", 20 * 32 * 32 * 3)  # 20 queries a chunk
    monkeypatch.setattr(extract_cli, "PROMPTS_PER_PART", 2)
    yield
    ray.shutdown()


def test_verify_on_ray_equals_a_single_process_when_a_worker_dies(files, tmp_path, small_parts):
    argv = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline", files / "unseen.npz",
            "--device", "cpu")
    assert run(*argv, "--out", tmp_path / "one") == 0
    killing_ray(tmp_path, "verify-knn:2")
    assert run(*argv, "--out", tmp_path / "ray", "--ray", "local") == 0
    assert (tmp_path / "killed-once").exists(), "no worker was killed: the test did not exercise recovery"
    a, b = strict_json(tmp_path / "one" / "result.json"), strict_json(tmp_path / "ray" / "result.json")
    for key in ("extracted", "unique_extracted", "n_extracting_samples", "baseline", "baseline_unique_extracted"):
        assert a[key] == b[key], key
    assert len(list((tmp_path / "ray" / "knn").glob("knn-*.npz"))) == 4
    assert not list((tmp_path / "ray").rglob("*.tmp*"))


def test_verify_of_a_pool_on_ray_equals_a_single_process(files, tmp_path, small_parts):
    """Ray workers read a pool (`diffaudit pool`) as the head does: the pooled count and each store's are a
    single process's, with a worker killed mid-run."""
    with np.load(files / "unc.npz") as z:
        images = z["images"]
    for k, part in enumerate((images[:32], images[32:])):
        finished_store(tmp_path / f"s{k}", part, seed=k)
    assert run("pool", "--samples", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "p") == 0
    argv = ("verify", "--samples", tmp_path / "p", "--data", files / "train.npz", "--device", "cpu")
    assert run(*argv, "--out", tmp_path / "one") == 0
    killing_ray(tmp_path, "verify-knn:2")
    assert run(*argv, "--out", tmp_path / "ray", "--ray", "local") == 0
    assert (tmp_path / "killed-once").exists(), "no worker was killed: the test did not exercise recovery"
    a, b = strict_json(tmp_path / "one" / "result.json"), strict_json(tmp_path / "ray" / "result.json")
    for key in ("extracted", "unique_extracted", "n_extracting_samples", "pool"):
        assert a[key] == b[key], key
    assert sum(m["first_credited"] for m in a["pool"]["members"]) == a["unique_extracted"] >= 2


@pytest.mark.parametrize("samples, point", [("cond.npz", "extract-part:2"), ("unc.npz", "extract-knn:2")])
def test_extract_on_ray_equals_a_single_process_when_a_worker_dies(files, tmp_path, small_parts, samples, point):
    argv = ("extract", "--samples", files / samples, "--device", "cpu", "--k-neighbors", "16")
    assert run(*argv, "--out", tmp_path / "one") == 0
    killing_ray(tmp_path, point)
    assert run(*argv, "--out", tmp_path / "ray", "--ray", "local") == 0
    assert (tmp_path / "killed-once").exists(), "no worker was killed: the test did not exercise recovery"
    a, b = strict_json(tmp_path / "one" / "result.json"), strict_json(tmp_path / "ray" / "result.json")
    key = "prompts" if a["mode"] == "conditional" else "groups"
    assert a[key] == b[key] and len([x for x in b[key] if x.get("flagged", True)]) == 2


def test_a_workers_refusal_is_the_error_not_a_count_of_failed_parts(files, tmp_path, small_parts):
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    queries = np.load(files / "unc.npz")["images"]
    wrong = ImagesRecipe("generations", str(files / "unc.npz"), "file:not-this-one")
    with pytest.raises(DiffauditError, match="holds other images on this node") as err:
        run_parts("local", KnnChunkWorker, (wrong, None, 4, str(tmp_path), {"backend": "torch"}, "cpu", True, "knn"),
                  lambda: knn_cache.pending_chunks(queries, 4, tmp_path), label="knn", size=lambda s: s[1] - s[0],
                  total=len(queries), unit="img", use_gpu=False)
    assert "could not be computed" not in str(err.value)


def test_an_error_in_a_workers_code_is_final_and_named(files, tmp_path, small_parts):
    """Computing the part again would raise again: the first such error ends the run, naming the part
    and the cause, rather than being retried into "could not be computed"."""
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    queries = np.load(files / "unc.npz")["images"]
    odd = ImagesRecipe("no-such-kind", str(files / "unc.npz"), None)
    with pytest.raises(DiffauditError, match=r"knn: a Ray worker failed on part \(\d+, \d+\): ValueError: unknown kind"):
        run_parts("local", KnnChunkWorker, (odd, None, 4, str(tmp_path), {"backend": "torch"}, "cpu", True, "knn"),
                  lambda: knn_cache.pending_chunks(queries, 4, tmp_path), label="knn", size=lambda s: s[1] - s[0],
                  total=len(queries), unit="img", use_gpu=False)


def test_parts_written_where_this_node_does_not_see_them_are_said_to_need_a_shared_filesystem(files, tmp_path,
                                                                                               small_parts):
    """Workers write --out's path on their own node: where it is not shared, every part is reported
    finished yet this node sees none. The command says so, not "re-run" alone (which would redo it all
    again). Simulated here by workers writing one folder while this node looks in another."""
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    queries = np.load(files / "unc.npz")["images"]
    from diffaudit.store import samples_identity

    spec = str(files / "unc.npz")
    recipe = ImagesRecipe("generations", spec, samples_identity(spec))
    theirs, ours = tmp_path / "their-disk", tmp_path / "our-disk"
    theirs.mkdir()
    ours.mkdir()
    with pytest.raises(DiffauditError, match="filesystem every node shares") as err:
        run_parts("local", KnnChunkWorker, (recipe, None, 4, str(theirs), {"backend": "torch"}, "cpu", True, "knn"),
                  lambda: knn_cache.pending_chunks(queries, 4, ours), label="knn", size=lambda s: s[1] - s[0],
                  total=len(queries), unit="img", use_gpu=False)
    assert "reported 4 part(s) finished whose files this node does not see (first: (0, 20))" in str(err.value)
    assert list(theirs.iterdir()) and not list(ours.iterdir())
