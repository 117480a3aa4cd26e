"""Shared helpers of the benchmarks: timing with device synchronisation, JSON output, models."""

from __future__ import annotations

import json
import sys
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` (seconds), synchronised."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["threads"] = torch.get_num_threads()
    return info


def emit(result: dict) -> None:
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def random_denoiser(preset: str, image_size: int, channels: int, device: torch.device):
    """A randomly initialised UNet of ``preset`` as a Denoiser (throughput does not need trained weights)."""
    from diffaudit.models.denoiser import Denoiser
    from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
    from diffaudit.models.unets import build_unet, unet_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(unet_config(preset, image_size=image_size, in_channels=channels))
    return Denoiser(unet=unet.to(device).eval(), alphas_cumprod=alphas_cumprod_of(make_scheduler()))
