"""Latent diffusion throughput: a Stable Diffusion pipeline built from configs (SD 1.x sizes, random
weights: nothing can be downloaded), the stock ``StableDiffusionPipeline.__call__`` against diffaudit's
:class:`~diffaudit.sampling.sources.StableDiffusionSource` (the code ``diffaudit sample`` runs) over the
same pipeline, for the same steps, guidance, dtype, prompts and per-image seeds (the stock call gets
the same initial latents, drawn per seed as the source draws them).

Sides, each saved as it finishes when run by ``run_all.py``:

- ``stock_pipeline``: ``pipe(prompt=..., latents=...)`` as a user of diffusers calls it (bf16 on CUDA,
  fp32 on the CPU);
- ``diffaudit_source``: the source with the settings ``diffaudit sample --fast`` gives on this device
  (CUDA: bf16 + channels-last UNet and VAE; the CPU: fp32, the default layout), not compiled;
- ``diffaudit_source_compiled`` (CUDA, unless ``--no-compile``): the same with ``torch.compile`` of
  the UNet and of ``vae.decode`` (``diffaudit sample --fast --compile``); compilation happens in an
  untimed warm-up call.

The images of each diffaudit side are compared with the stock images (mean and max ℓ2 on [0, 1]).

    python bench/bench_sd.py --size 512 --batch 8 --steps 20       # GPU
    python bench/bench_sd.py --tiny --size 64 --batch 2 --steps 2  # CPU smoke test
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import DDIMScheduler

from _common import checkpoint, device_info, emit, timed
from diffaudit.core.seeds import generation_seed, randn_per_seed
from diffaudit.models.sd_configs import build_stable_diffusion
from diffaudit.sampling.sources import StableDiffusionSource


def to_uint8(images) -> np.ndarray:
    """[0, 1] floats -> uint8, as the source stores them."""
    return np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def l2_stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.sqrt((((a.astype(np.float64) - b) / 255.0) ** 2).reshape(len(a), -1).mean(1))
    return {"mean_l2_to_stock": float(d.mean()), "max_l2_to_stock": float(d.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny pipeline (CPU smoke test) instead of SD 1.x sizes")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="images per call (the source's micro-batch)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="CUDA: leave out the compiled side")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode of the compiled side (default: default)")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    pipe = build_stable_diffusion(tiny=a.tiny, size=a.size).to(device=dev, dtype=dtype)
    # The scheduler the source sets up (rebuilt from the pipeline's config), for the stock side too:
    # both sides then run the same timesteps (from_config drops the pipeline's own steps_offset fix).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompts = ["w1 w2 w3"] * a.batch
    seeds = [generation_seed(0, 0, i) for i in range(a.batch)]
    lat = a.size // pipe.vae_scale_factor
    latents = randn_per_seed(seeds, (pipe.unet.config.in_channels, lat, lat), device=dev, dtype=dtype)
    result = {"bench": "stable-diffusion", **device_info(dev), "size": a.size, "batch": a.batch, "steps": a.steps,
              "guidance_scale": a.guidance_scale, "dtype": str(dtype), "tiny": a.tiny, "images_per_s": {}}

    def stock():
        return pipe(prompt=prompts, latents=latents, num_inference_steps=a.steps, guidance_scale=a.guidance_scale,
                    height=a.size, width=a.size, output_type="np").images

    stock_images = to_uint8(stock())  # warm-up
    t_stock = timed(stock, dev, a.repeats)
    result["images_per_s"]["stock_pipeline"] = a.batch / t_stock
    checkpoint(result, "stock_pipeline")

    # diffaudit's source over the same pipeline (same scheduler config): what `diffaudit sample --fast` runs.
    # It changes the pipeline in place (channels-last, then compiled modules), so it comes after the stock side.
    common = dict(device=dev, steps=a.steps, guidance_scale=a.guidance_scale, scheduler="ddim", micro_batch=a.batch,
                  dtype=dtype, height=a.size, channels_last=cuda)
    sides = [("diffaudit_source", False)] + ([("diffaudit_source_compiled", True)] if cuda and not a.no_compile else [])
    result["diffaudit_settings"] = {"dtype": str(dtype), "channels_last": cuda, "compile_mode": a.compile_mode}
    for name, compiled in sides:
        source = StableDiffusionSource.from_pipeline(pipe, compile=compiled, compile_mode=a.compile_mode, **common)
        run = lambda source=source: source(seeds, prompts)
        images = run()  # warm-up (compiles the compiled side)
        t = timed(run, dev, a.repeats)
        result["images_per_s"][name] = a.batch / t
        result[f"{name}_images"] = l2_stats(images, stock_images)
        result[f"speedup_of_{name}"] = t_stock / t
        checkpoint(result, name)
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    emit(result)


if __name__ == "__main__":
    main()
