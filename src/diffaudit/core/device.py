"""Device selection: ``--device auto`` takes CUDA when present, else the CPU.

A command spread over a Ray cluster (``--ray``) resolves ``--device`` twice: for its workers against
the cluster's resources (``auto`` is CUDA when the cluster has a GPU), and for this process, the head,
which may itself have no GPU (a CPU-only head node is common) and then does its own share on the CPU
(:func:`resolve_devices`).
"""

from __future__ import annotations

import torch

from diffaudit.core.errors import DiffauditError


def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = _parse(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DiffauditError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def resolve_devices(name: str | None, cluster_gpus: int | None = None) -> tuple[torch.device, torch.device]:
    """``(head, workers)``: where this process computes and where a Ray cluster's workers do.

    Without a cluster (``cluster_gpus`` None) both are :func:`resolve_device`'s. With one, the
    workers' device follows the cluster: ``auto`` is ``cuda`` when it has a GPU (``cluster_gpus`` > 0),
    else ``cpu``; ``cuda`` (or ``cuda:N``) needs a GPU in the cluster, not on this machine, and each
    worker uses the GPU Ray gives it. The head computes on the device named (``cuda:N``: this
    machine's N-th GPU) where this machine has it, else on the CPU.
    """
    if cluster_gpus is None:
        device = resolve_device(name)
        return device, device
    if name in (None, "", "auto"):
        named = torch.device("cuda" if cluster_gpus > 0 else "cpu")
    else:
        named = _parse(name)
        if named.type == "cuda" and cluster_gpus <= 0:
            raise DiffauditError(f"--device {name}: the Ray cluster has no GPU; run on a cluster with GPUs, "
                                 "or use --device cpu")
    workers = torch.device(named.type)
    head = named if named.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")
    return head, workers


def _parse(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError:
        raise DiffauditError(f"--device {name!r}: not a device; use cpu, cuda, cuda:N or auto") from None
