"""Distributed generation on a local Ray instance (slow: starts Ray)."""

import os

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.store import SampleStore
from helpers import make_tiny_model_dir

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
    a, b = SampleStore.open(single), SampleStore.open(dist)
    assert a.completed() == b.completed() == list(range(6))
    for k in range(6):
        ia, ma = a.read_shard(k)
        ib, mb = b.read_shard(k)
        assert np.array_equal(ia, ib) and ma["ids"] == mb["ids"] and ma["seeds"] == mb["seeds"]
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
