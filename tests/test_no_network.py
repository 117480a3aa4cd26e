"""No network at run time: loading local model folders (a pixel UNet run, a Stable Diffusion pipeline
folder) and sampling from them never opens a connection, with every socket refused."""

from __future__ import annotations

import socket

import pytest

from diffaudit.models.sd_configs import build_stable_diffusion


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and refused."""
    attempts = []

    def refuse(address):
        attempts.append(address)
        raise OSError("network is off in this test")

    try:  # huggingface_hub fetches an agent registry once per process when it builds request headers
        import huggingface_hub.utils._detect_agent as agent

        if hasattr(agent, "_registry"):
            monkeypatch.setattr(agent, "_registry", None)
    except ImportError:
        pass
    monkeypatch.setattr(socket.socket, "connect", lambda self, address, *a, **k: refuse(address))
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(address))
    return attempts


def test_local_model_folders_load_and_sample_without_a_connection(tmp_path, no_network):
    import torch
    from helpers import make_tiny_model_dir

    from diffaudit.sampling.sources import open_source

    build_stable_diffusion(tiny=True, size=32).save_pretrained(tmp_path / "sd", safe_serialization=True)
    make_tiny_model_dir(tmp_path / "run")
    cpu = torch.device("cpu")
    pixel = open_source(tmp_path / "run", device=cpu, steps=2)
    sd = open_source(tmp_path / "sd", device=cpu, steps=2, guidance_scale=3)
    assert pixel([1, 2], [None, None]).shape == (2, 8, 8, 1)
    assert sd([1], ["w1 w2"]).shape == (1, 32, 32, 3)
    assert no_network == []
