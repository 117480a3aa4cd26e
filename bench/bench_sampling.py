"""Sampling throughput: diffaudit's sampler against the stock diffusers DDIMPipeline, same UNet.

Prints JSON: images/s of the stock pipeline (fp32), diffaudit fp32, and diffaudit's fast path
(bf16, channels-last, torch.compile on CUDA), their ratios, and the mean ℓ2 between the bf16 and
fp32 images for the same per-image seeds (the target, mean ≤ 0.05, is judged on a trained model: this
benchmark's UNet has random weights, whose noisy output rounding moves far more, 0.26 on the H100).

    python bench/bench_sampling.py --preset ddpm-cifar10 --batch 1024 --steps 50      # GPU
    python bench/bench_sampling.py --preset tiny --image-size 8 --channels 1 --batch 64 --steps 10  # CPU
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler

from _common import checkpoint, device_info, emit, random_denoiser, timed
from diffaudit.core.seeds import generation_seed
from diffaudit.models.scheduler import make_scheduler
from diffaudit.sampling.generate import generate_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    den = random_denoiser(a.preset, a.image_size, a.channels, dev)
    seeds = [generation_seed(0, 0, i) for i in range(a.batch)]

    # Stock pipeline: same UNet, same x_T (its `latents` are not exposed in DDIMPipeline: we pass a
    # generator, which is what users of the stock pipeline do), fp32, eta = 0.
    pipe = DDIMPipeline(unet=den.unet, scheduler=DDIMScheduler.from_config(make_scheduler().config)).to(dev)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator(device="cpu").manual_seed(0)
    stock = lambda: pipe(batch_size=a.batch, num_inference_steps=a.steps, generator=gen, eta=0.0, output_type="np")
    stock()  # warm-up
    t_stock = timed(stock, dev, a.repeats)

    ours32 = lambda: generate_images(den, seeds, steps=a.steps, micro_batch=a.batch)
    img32 = ours32()
    t32 = timed(ours32, dev, a.repeats)

    result = {"bench": "sampling", **device_info(dev), "preset": a.preset, "batch": a.batch, "steps": a.steps,
              "images_per_s": {"stock_ddim_pipeline_fp32": a.batch / t_stock, "diffaudit_fp32": a.batch / t32}}
    checkpoint(result, "stock and fp32")
    if dev.type == "cuda":
        fast = copy.deepcopy(den).optimise_for_gpu(dtype=torch.bfloat16, channels_last=True, compile=not a.no_compile)
        ours_fast = lambda: generate_images(fast, seeds, steps=a.steps, micro_batch=a.batch)
        img16 = ours_fast()  # compiles
        img16 = ours_fast()
        t16 = timed(ours_fast, dev, a.repeats)
        rms = np.sqrt((((img16.astype(np.float64) - img32) / 255.0) ** 2).reshape(a.batch, -1).mean(1))
        result["images_per_s"]["diffaudit_bf16_compiled"] = a.batch / t16
        result["bf16_vs_fp32_mean_l2"] = float(rms.mean())
        result["bf16_vs_fp32_max_l2"] = float(rms.max())
        result["speedup_vs_stock"] = t_stock / t16
    result["speedup_fp32_vs_stock"] = t_stock / t32
    emit(result)


if __name__ == "__main__":
    main()
