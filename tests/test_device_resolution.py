"""--device for this process and for a Ray cluster's workers (core.device.resolve_devices, cli.common.run_devices)."""

import argparse

import pytest
import torch

from diffaudit.cli import common
from diffaudit.core.device import resolve_device, resolve_devices
from diffaudit.core.errors import DiffauditError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_without_a_cluster_both_are_this_machines(no_cuda):
    assert resolve_devices("auto") == (torch.device("cpu"), torch.device("cpu"))
    assert resolve_devices("cpu") == (torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(DiffauditError, match="CUDA is not available on this machine"):
        resolve_devices("cuda")


def test_a_cpu_only_head_sends_its_workers_to_the_clusters_gpus(no_cuda):
    """The workers follow the cluster's GPUs (auto is cuda there), whether or not the head has one; the
    head then computes its own share on the CPU."""
    assert resolve_devices("auto", cluster_gpus=2) == (torch.device("cpu"), torch.device("cuda"))
    assert resolve_devices("cuda", cluster_gpus=1) == (torch.device("cpu"), torch.device("cuda"))
    assert resolve_devices("cuda:1", cluster_gpus=4) == (torch.device("cpu"), torch.device("cuda"))
    assert resolve_devices("auto", cluster_gpus=0) == (torch.device("cpu"), torch.device("cpu"))
    assert resolve_devices("cpu", cluster_gpus=8) == (torch.device("cpu"), torch.device("cpu"))


def test_a_gpu_head_keeps_the_gpu_it_names(with_cuda):
    assert resolve_devices("auto", cluster_gpus=2) == (torch.device("cuda"), torch.device("cuda"))
    # cuda:N names this machine's GPU; each worker uses the one Ray gives it
    assert resolve_devices("cuda:1", cluster_gpus=2) == (torch.device("cuda:1"), torch.device("cuda"))
    # a GPU head over a cluster without GPUs: auto follows the cluster
    assert resolve_devices("auto", cluster_gpus=0) == (torch.device("cpu"), torch.device("cpu"))


def test_cuda_on_a_cluster_without_gpus_and_bad_names_are_refused(with_cuda):
    with pytest.raises(DiffauditError, match="the Ray cluster has no GPU"):
        resolve_devices("cuda", cluster_gpus=0)
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(DiffauditError, match="not a device"):
            resolve_device(bad)
        with pytest.raises(DiffauditError, match="not a device"):
            resolve_devices(bad, cluster_gpus=1)


def test_run_devices_asks_the_cluster_and_says_when_the_head_lacks_its_gpu(no_cuda, monkeypatch, capsys):
    from diffaudit.core import ray_pool

    class FakeRay:  # a connected cluster of two GPUs
        @staticmethod
        def cluster_resources():
            return {"CPU": 16.0, "GPU": 2.0}

    asked = []
    monkeypatch.setattr(ray_pool, "connect", lambda address: asked.append(address) or FakeRay)
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    args = argparse.Namespace(device="auto", ray="10.0.0.1:6379")
    assert common.run_devices(args, "verify") == (torch.device("cpu"), torch.device("cuda"))
    assert asked == ["10.0.0.1:6379"]
    assert "verify: this machine has no CUDA; the Ray workers run on the cluster's GPUs" in capsys.readouterr().err
    # without --ray the cluster is never asked
    assert common.run_devices(argparse.Namespace(device="auto", ray=None), "verify") == (torch.device("cpu"),) * 2
    assert asked == ["10.0.0.1:6379"]


def test_auto_resumes_a_store_made_on_the_cpu_and_a_changed_device_is_named_by_its_flag(tmp_path, monkeypatch, capsys):
    """A store made where auto meant the CPU (another machine, or a CPU-only Ray head before --ray followed
    the cluster's GPUs) is resumed by auto as it was made, not refused for a device it never named; an
    explicit other device is refused naming --device."""
    import json

    from diffaudit.cli.main import main
    from helpers import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "m")
    out = tmp_path / "s"
    argv = ["sample", "--model", str(model), "--n", "4", "--steps", "2", "--shard-size", "2", "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # now auto would find a GPU
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    capsys.readouterr()
    assert main([*argv, "--device", "auto"]) == 0
    assert f"--device auto: cpu, as {out} records" in capsys.readouterr().err
    settings = json.loads((out / "settings.json").read_text())
    settings["settings"]["device_type"] = "cuda"  # as a store made on a GPU records it
    (out / "settings.json").write_text(json.dumps(settings))
    assert main([*argv, "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--device (was 'cuda', now 'cpu')" in err


def test_a_cluster_without_a_free_gpu_is_said_not_waited_on_silently(monkeypatch, capsys):
    """Workers asking for a GPU wait until other jobs release one, and Ray says nothing meanwhile."""
    from diffaudit.core.ray_pool import say_if_none_free

    class Cluster:
        def __init__(self, free):
            self.free = free

        def cluster_resources(self):
            return {"CPU": 8.0, "GPU": 4.0}

        def available_resources(self):
            return {"CPU": 8.0, "GPU": self.free}

    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    say_if_none_free(Cluster(free=0.5), True, "sample")  # four GPUs, each held (one half held)
    assert "sample: waiting for a free GPU of the Ray cluster (4 in all, none free now" in capsys.readouterr().err
    say_if_none_free(Cluster(free=1.0), True, "sample")
    say_if_none_free(Cluster(free=0.0), False, "sample")  # CPUs free: no word
    assert capsys.readouterr().err == ""
