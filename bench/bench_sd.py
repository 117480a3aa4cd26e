"""Latent diffusion throughput: a Stable Diffusion pipeline built from configs (SD 1.x sizes, random
weights: nothing can be downloaded), stock ``StableDiffusionPipeline.__call__`` against diffaudit's
fast path for the same steps and dtype (channels-last, compiled UNet and VAE decoder).

    python bench/bench_sd.py --size 512 --batch 8 --steps 20       # GPU
    python bench/bench_sd.py --tiny --size 64 --batch 2 --steps 2  # CPU smoke test
"""

from __future__ import annotations

import argparse

import torch

from _common import device_info, emit, timed
from diffaudit.models.sd_configs import build_stable_diffusion


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    pipe = build_stable_diffusion(tiny=a.tiny, size=a.size).to(device=dev, dtype=dtype)
    prompts = ["w1 w2 w3"] * a.batch
    call = lambda: pipe(prompt=prompts, num_inference_steps=a.steps, guidance_scale=7.5, height=a.size, width=a.size,
                        output_type="np")
    call()
    t_stock = timed(call, dev, a.repeats)
    result = {"bench": "stable-diffusion", **device_info(dev), "size": a.size, "batch": a.batch, "steps": a.steps,
              "dtype": str(dtype), "images_per_s": {"stock_pipeline": a.batch / t_stock}}
    if dev.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.unet = torch.compile(pipe.unet)
        pipe.vae.decode = torch.compile(pipe.vae.decode)
        call()
        t_fast = timed(call, dev, a.repeats)
        result["images_per_s"]["diffaudit_fast_path"] = a.batch / t_fast
        result["speedup"] = t_stock / t_fast
    emit(result)


if __name__ == "__main__":
    main()
