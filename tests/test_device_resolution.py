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


def test_a_store_made_on_a_cpu_only_head_is_resumed_there_and_a_changed_device_is_named_by_its_flag(
        tmp_path, monkeypatch, capsys):
    """With --ray, auto in a store that recorded the CPU (made on a CPU-only head before --ray followed the
    cluster's GPUs) stays the CPU, said once; without --ray nothing is said where auto finds the CPU
    anyway; a store made on another device than an explicit --device is refused naming --device."""
    import json

    from diffaudit.cli.main import main
    from diffaudit.core import ray_pool
    from helpers import make_tiny_model_dir

    class GpuCluster:
        @staticmethod
        def cluster_resources():
            return {"CPU": 8.0, "GPU": 2.0}

    model = make_tiny_model_dir(tmp_path / "m")
    out = tmp_path / "s"
    argv = ["sample", "--model", str(model), "--n", "4", "--steps", "2", "--shard-size", "2", "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    capsys.readouterr()
    assert main([*argv, "--device", "auto"]) == 0  # a CPU machine: auto is the CPU, nothing to say
    assert "--device auto: cpu" not in capsys.readouterr().err
    monkeypatch.setattr(ray_pool, "connect", lambda address: GpuCluster)
    assert main([*argv, "--device", "auto", "--ray", "gpus:6379"]) == 0  # finished: nothing to sample
    err = capsys.readouterr().err
    assert f"--device auto: cpu, as {out} records (made before --ray sampled on the cluster's GPUs)" in err
    assert "the Ray workers run on the cluster's GPUs" not in err
    settings = json.loads((out / "settings.json").read_text())
    settings["settings"]["device_type"] = "cuda"  # as a store made on a GPU records it
    (out / "settings.json").write_text(json.dumps(settings))
    assert main([*argv, "--device", "cpu", "--quiet"]) == 2
    assert "--device (was 'cuda', now 'cpu')" in capsys.readouterr().err


def test_a_cluster_whose_workers_do_not_start_is_said_not_waited_on_silently(monkeypatch, capsys):
    """Workers asking for a GPU that other jobs hold wait without a word from Ray: after the timeout with
    no worker started, the command says so; a worker that starts is waited on no longer, silently."""
    from diffaudit.core.ray_pool import say_if_waiting

    class Actor:
        class __ray_ready__:  # noqa: N801 - Ray's name
            @staticmethod
            def remote():
                return "ready-ref"

    class Cluster:
        def __init__(self, starts):
            self.starts, self.waited = starts, []

        def wait(self, refs, num_returns, timeout):
            self.waited.append((refs, num_returns, timeout))
            return (refs[:1], refs[1:]) if self.starts else ([], refs)

        def cluster_resources(self):
            return {"CPU": 8.0, "GPU": 4.0}

    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    busy = Cluster(starts=False)
    say_if_waiting(busy, [Actor(), Actor()], True, "sample", timeout=3)
    assert busy.waited == [(["ready-ref", "ready-ref"], 1, 3)]
    assert "sample: no Ray worker has started after 3 s; the cluster (4 GPUs in all) may have none free" in \
        capsys.readouterr().err
    say_if_waiting(Cluster(starts=True), [Actor()], True, "sample")
    assert capsys.readouterr().err == ""
