"""Distributed generation on a local Ray instance (slow: starts Ray)."""

import os

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.store import SampleStore
from helpers import assert_same_shards, make_tiny_model_dir

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'diffaudit[ray]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def args(model, out, *extra):
    return ["sample", "--model", str(model), "--out", str(out), "--n", "48", "--steps", "3", "--shard-size", "8",
            "--micro-batch", "8", "--device", "cpu", "--quiet", *extra]


def test_ray_store_equals_single_process_even_when_a_worker_dies(tiny_model, tmp_path, local_ray, monkeypatch):
    single, dist = tmp_path / "single", tmp_path / "ray"
    assert main(args(tiny_model, single)) == 0
    # Every worker process inherits this: the first one to reach the point between a shard's pixels and
    # its sidecar dies there (SIGKILL), once; Ray restarts it and the shard is redone.
    monkeypatch.setenv("DIFFAUDIT_KILL_AT", "store.between_files:2")
    monkeypatch.setenv("DIFFAUDIT_KILL_ONCE", str(tmp_path / "killed-once"))
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DIFFAUDIT_KILL_AT": "store.between_files:2",
                                       "DIFFAUDIT_KILL_ONCE": str(tmp_path / "killed-once")}})
    monkeypatch.delenv("DIFFAUDIT_KILL_AT")  # the driver itself must not die
    assert main(args(tiny_model, dist, "--ray", "local")) == 0
    assert (tmp_path / "killed-once").exists(), "no worker was killed: the test did not exercise recovery"
    assert_same_shards(SampleStore.open(single), SampleStore.open(dist), 6)
    assert not [f for f in os.listdir(dist / "shards") if f.endswith(".tmp")]


def test_ray_workers_fill_an_s3_store_as_one_process_does(tiny_model, tmp_path, local_ray, monkeypatch, s3_endpoint):
    """Workers write whole shards straight into an object store (moto's S3 on localhost), one dying
    between a shard's pixels and its sidecar; the store equals a single process's local one."""
    single, url = tmp_path / "single", "s3://diffaudit-tests/ray-store"
    assert main(args(tiny_model, single)) == 0
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**s3_endpoint, "DIFFAUDIT_KILL_AT": "store.between_files:2",
                                       "DIFFAUDIT_KILL_ONCE": str(tmp_path / "killed-once")}})
    assert main(args(tiny_model, url, "--ray", "local")) == 0
    assert (tmp_path / "killed-once").exists(), "no worker was killed: the test did not exercise recovery"
    a, b = SampleStore.open(single), SampleStore.open(url)
    assert a.completed() == b.completed() == list(range(6))
    assert np.array_equal(a.to_dataset().images, b.to_dataset().images)
    assert a.identity == b.identity


def test_a_head_without_the_workers_device_has_a_worker_open_the_model(tiny_model, tmp_path, local_ray, monkeypatch,
                                                                        capsys):
    """A CPU-only head of a GPU cluster: the model is opened on a worker (here a CPU worker, the head told it
    lacks that device), never on the head, the worker's report settles the store, and the store equals
    one process's. A prompt the model refuses is the worker's refusal, before any store exists."""
    import torch

    import diffaudit.cli.sample as sample_cli
    import diffaudit.sampling.sources as sources

    single, dist = tmp_path / "single", tmp_path / "ray"
    assert main(args(tiny_model, single)) == 0
    monkeypatch.setattr(sample_cli, "run_devices", lambda *a, **k: (torch.device("meta"), torch.device("cpu")))

    def head_opens(*a, **k):
        raise AssertionError("the head opened the model")

    monkeypatch.setattr(sources, "open_source", head_opens)  # the head's only; Ray's workers import their own
    assert main(args(tiny_model, dist, "--ray", "local")) == 0
    a, b = SampleStore.open(single), SampleStore.open(dist)
    assert a.manifest["sampler"] == b.manifest["sampler"]
    assert np.array_equal(a.to_dataset().images, b.to_dataset().images)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    refused = tmp_path / "refused"
    assert main(["sample", "--model", str(tiny_model), "--out", str(refused), "--prompts", str(prompts), "--steps", "3",
                 "--device", "cpu", "--quiet", "--ray", "local"]) == 2
    assert "this model is unconditional: it takes no prompts" in capsys.readouterr().err  # the worker's check
    assert not refused.exists()


def test_auto_on_a_cluster_with_gpus_samples_there_not_on_the_cpu_head(tiny_model, tmp_path, local_ray, capsys):
    """--device auto follows the cluster: on a cluster that declares a GPU, a head without CUDA sends the
    model to a GPU worker (here a CPU machine that only declares one, so the worker says CUDA is
    missing), rather than sampling on CPUs with the GPUs idle."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the head would open the model itself")
    ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "gpu"
        assert main(["sample", "--model", str(tiny_model), "--out", str(out), "--n", "8", "--steps", "3",
                     "--ray", "local"]) == 2
        err = capsys.readouterr().err
        assert "this machine has no CUDA; the Ray workers run on the cluster's GPUs" in err
        assert "CUDA is not available" in err  # said by the worker that opened the model
        assert not out.exists()
    finally:
        ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
