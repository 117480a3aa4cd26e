"""Inpainting throughput: diffaudit's batched RePaint sampler against a plain loop over diffusers' pieces.

Baseline (what a user of diffusers writes): one target at a time, its ``--n-inpaint`` inpaintings in
one batch, the UNet in fp32 eager mode and ``RePaintScheduler.step`` / ``undo_step`` with a torch
generator, the same level sequence (``set_timesteps(steps, jump_length, jump_n_sample)``) and so the
same number of UNet calls per inpainting. diffaudit: all inpaintings of all ``--targets`` targets in
one batch (chunked by ``--batch``), per-inpainting counter-based noise, fp32; on CUDA also bf16 +
channels-last + ``torch.compile`` (the `diffaudit inpaint --bf16 --compile` path). Prints JSON:
inpaintings/s of each, the ratios, and the mean ℓ2 between bf16 and fp32 inpaintings of the same seeds.

    python bench/bench_inpaint.py --preset ddpm-cifar10 --image-size 32 --channels 3 --targets 16 \
        --baseline-targets 2 --n-inpaint 128 --batch 2048 --steps 20 --repeats 1              # GPU (docs/performance.md)
    python bench/bench_inpaint.py                                                             # CPU, tiny
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from diffusers import RePaintScheduler

from _common import device_info, emit, random_denoiser, timed
from diffaudit.core.seeds import derive_seed, randn_per_seed
from diffaudit.models.scheduler import make_scheduler
from diffaudit.sampling.inpaint import inpaint, inpainting_seeds, model_evaluations
from diffaudit.sampling.masks import make_mask


def diffusers_loop(unet, originals: torch.Tensor, mask: torch.Tensor, *, n: int, steps: int, jump_length: int,
                   jump_n_sample: int, device: torch.device) -> torch.Tensor:
    """RePaint with diffusers' UNet2DModel + RePaintScheduler, one target at a time (the pipeline's loop)."""
    ref = make_scheduler().config  # the paper's linear DDPM schedule, x̂_0 clipped
    sched = RePaintScheduler(num_train_timesteps=ref.num_train_timesteps, beta_start=ref.beta_start,
                             beta_end=ref.beta_end, beta_schedule=ref.beta_schedule, clip_sample=True)
    sched.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)  # CPU timesteps index CPU ᾱ
    outs = []
    for i, orig in enumerate(originals):
        gen = torch.Generator(device=device).manual_seed(i)
        x0 = orig[None].expand(n, *orig.shape)
        x = torch.randn((n, *orig.shape), generator=gen, device=device)
        t_last = sched.timesteps[0] + 1
        with torch.no_grad():
            for t in sched.timesteps:
                if t < t_last:
                    eps = unet(x, t).sample
                    x = sched.step(eps, t, x, x0, mask, gen).prev_sample
                else:
                    x = sched.undo_step(x, t_last, gen)
                t_last = t
        outs.append(x.clamp(-1, 1))
    return torch.cat(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--targets", type=int, default=4, help="targets inpainted together by diffaudit")
    ap.add_argument("--baseline-targets", type=int, default=None, help="targets of the (slow) baseline loop (default: --targets)")
    ap.add_argument("--n-inpaint", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128, help="diffaudit's micro-batch (inpaintings per UNet call)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--jump-length", type=int, default=5)
    ap.add_argument("--jump-n-sample", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    den = random_denoiser(a.preset, a.image_size, a.channels, dev)
    C, S, n = a.channels, a.image_size, a.n_inpaint
    originals = randn_per_seed([derive_seed(0, "bench-target", i) for i in range(a.targets)], (C, S, S), device=dev).clamp(-1, 1)
    mask = torch.as_tensor(make_mask("left", S, S), device=dev)
    kw = dict(steps=a.steps, jump_length=a.jump_length, jump_n_sample=a.jump_n_sample)

    nb = a.baseline_targets or a.targets
    base = lambda: diffusers_loop(den.unet, originals[:nb], mask, n=n, device=dev, **kw)  # noqa: E731
    base()  # warm-up
    t_base = timed(base, dev, a.repeats)

    rows = originals.repeat_interleave(n, 0)
    seeds = [s for i in range(a.targets) for s in inpainting_seeds(0, i, n)]
    ours = lambda model: inpaint(model, rows, mask, alphas_cumprod=den.alphas_cumprod, seeds=seeds,  # noqa: E731
                                 micro_batch=a.batch, **kw)
    x32 = ours(den)
    t32 = timed(lambda: ours(den), dev, a.repeats)

    total = a.targets * n
    ips = {"diffusers_loop_fp32": nb * n / t_base, "diffaudit_batched_fp32": total / t32}
    result = {
        "bench": "inpaint", **device_info(dev), "preset": a.preset, "image_size": S, "channels": C,
        "targets": a.targets, "baseline_targets": nb, "n_inpaint": n, "micro_batch": a.batch, **kw,
        "unet_calls_per_inpainting": model_evaluations(a.steps, jump_length=a.jump_length, jump_n_sample=a.jump_n_sample),
        "inpaintings_per_s": ips,
        "speedup_batched_fp32_vs_diffusers_loop": ips["diffaudit_batched_fp32"] / ips["diffusers_loop_fp32"],
    }
    if dev.type == "cuda":
        fast = copy.deepcopy(den).optimise_for_gpu(dtype=torch.bfloat16, channels_last=True, compile=not a.no_compile)
        ours(fast)  # compiles (every chunk has the same shape when --batch divides targets x n-inpaint)
        x16 = ours(fast)
        t16 = timed(lambda: ours(fast), dev, a.repeats)
        ips["diffaudit_batched_bf16_compiled"] = total / t16
        rms = ((x16 - x32) / 2).pow(2).flatten(1).mean(1).sqrt().double().cpu().numpy()  # ℓ2 on [0, 1] pixels
        result["bf16_vs_fp32_mean_l2"] = float(rms.mean())
        result["bf16_vs_fp32_max_l2"] = float(rms.max())
        result["speedup_vs_diffusers_loop"] = ips["diffaudit_batched_bf16_compiled"] / ips["diffusers_loop_fp32"]
        result["compiled"] = not a.no_compile
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    emit(result)


if __name__ == "__main__":
    main()
