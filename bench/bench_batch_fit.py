"""Sampling at the batch ``--micro-batch auto`` chooses against the fixed default, side by side.

``auto`` (:func:`~diffaudit.core.batch_fit.largest_batch_that_fits`) probes the workload at doubling
sizes and keeps the largest whose peak allocation stays within 80% of the GPU's memory: for a pixel
UNet from 32 up to 4,096 images (default 256), for Stable Diffusion from 1 up to 64 (default 8). This
benchmark runs that probe as ``diffaudit sample --fast --micro-batch auto`` does (bf16 on CUDA, the
pixel UNet in channels-last memory, not compiled: a compiled UNet would recompile for each batch
shape), then samples the same images at the default batch and at the chosen one, each after a
one-step warm-up at its shape.

Prints JSON: per model, the chosen batch, the probe's seconds and peak memory by size
(``tried``: [batch, peak bytes or null where it ran out of memory]), images/s at each batch and
``speedup_of_auto``. Off CUDA ``auto`` is the default (nothing to probe), so both sides run the same
batch there, and the result's ``note`` says that the ratio is noise (a smoke run of the benchmark).

    python bench/bench_batch_fit.py --preset ddpm-cifar10 --image-size 32 --channels 3 --steps 50 --sd  # GPU
    python bench/bench_batch_fit.py --preset tiny --image-size 8 --channels 1 --steps 2 --n 64  # CPU
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import checkpoint, device_info, emit, random_denoiser, timed
from diffaudit.core.batch_fit import CudaMemory, largest_batch_that_fits
from diffaudit.core.seeds import generation_seed
from diffaudit.sampling.sources import (PIXEL_MICRO_BATCH, PIXEL_PROBE, SD_MICRO_BATCH, SD_PROBE, PixelSource,
                                        StableDiffusionSource)

def choose(probe, dev: torch.device, default: int, start: int, cap: int) -> dict:
    """What ``auto`` picks here: the probe's outcome on CUDA, the default elsewhere."""
    if dev.type != "cuda":
        return {"batch": default, "probed": False}
    t0 = time.perf_counter()
    fit = largest_batch_that_fits(probe, start=start, cap=cap, memory=CudaMemory(dev))
    return {"batch": fit.batch, "probed": True, "probe_seconds": time.perf_counter() - t0, **fit.to_dict()}


def compare(make_source, dev: torch.device, default: int, auto: int, n: int | None, prompts_of) -> dict:
    """Images/s of the same ``n`` images (default: the larger batch) at ``default`` and at ``auto``."""
    n = n or max(default, auto)
    seeds = [generation_seed(0, 0, i) for i in range(n)]
    prompts = prompts_of(n)
    out = {"images": n, "images_per_s": {}}
    for name, batch in (("default", default), ("auto", auto)):
        make_source(batch, steps=1)(seeds[:batch], prompts[:batch])  # warm-up at this shape
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        source = make_source(batch)
        out["images_per_s"][name] = n / timed(lambda source=source: source(seeds, prompts), dev, 1)
        if dev.type == "cuda":
            out.setdefault("peak_cuda_mib", {})[name] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    out["speedup_of_auto"] = out["images_per_s"]["auto"] / out["images_per_s"]["default"]
    if auto == default:  # off CUDA, or a probe that chose the default: one configuration timed twice
        out["note"] = ("auto chose the default batch, so both sides ran the same configuration: speedup_of_auto "
                       "is run-to-run noise, not a gain or a loss")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="pixel UNet preset (ddpm-cifar10: the paper's CIFAR-10 UNet)")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of the pixel UNet's sampling")
    ap.add_argument("--n", type=int, default=None, help="pixel images per side (default: the larger of the two batches)")
    ap.add_argument("--sd", action="store_true", help="also Stable Diffusion 1.x from configs (random weights)")
    ap.add_argument("--sd-size", type=int, default=512)
    ap.add_argument("--sd-steps", type=int, default=20)
    ap.add_argument("--sd-n", type=int, default=None, help="Stable Diffusion images per side (default: the larger batch)")
    ap.add_argument("--tiny-sd", action="store_true", help="a tiny Stable Diffusion pipeline (CPU smoke test)")
    a = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"bench": "batch_fit", **device_info(dev)}

    den = random_denoiser(a.preset, a.image_size, a.channels, dev)
    if dev.type == "cuda":
        den.optimise_for_gpu(dtype=torch.bfloat16, channels_last=True, compile=False)
    default = PIXEL_MICRO_BATCH["cuda" if dev.type == "cuda" else "other"]
    auto = choose(den.forward_probe, dev, default, *PIXEL_PROBE)
    result["pixel"] = {"preset": a.preset, "image_size": a.image_size, "steps": a.steps, "default": default, "auto": auto,
                       **compare(lambda b, steps=a.steps: PixelSource(den, steps=steps, micro_batch=b), dev, default,
                                 auto["batch"], a.n, lambda n: [None] * n)}
    checkpoint(result, "pixel")

    if a.sd or a.tiny_sd:
        from diffaudit.models.sd_configs import build_stable_diffusion

        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        pipe = build_stable_diffusion(tiny=a.tiny_sd, size=a.sd_size)

        def sd_source(batch: int, steps: int = a.sd_steps) -> StableDiffusionSource:
            return StableDiffusionSource.from_pipeline(pipe, device=dev, dtype=dtype, steps=steps, micro_batch=batch,
                                                       height=a.sd_size)

        auto = choose(sd_source(SD_MICRO_BATCH)._probe, dev, SD_MICRO_BATCH, *SD_PROBE)
        result["stable_diffusion"] = {"size": a.sd_size, "steps": a.sd_steps, "default": SD_MICRO_BATCH, "auto": auto,
                                      **compare(sd_source, dev, SD_MICRO_BATCH, auto["batch"], a.sd_n,
                                                lambda n: ["w1 w2 w3"] * n)}
        checkpoint(result, "stable_diffusion")
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
