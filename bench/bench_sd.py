"""Latent diffusion throughput: a Stable Diffusion pipeline built from configs (SD 1.x sizes, random
weights: nothing can be downloaded), the stock ``StableDiffusionPipeline.__call__`` against diffaudit's
:class:`~diffaudit.sampling.sources.StableDiffusionSource` (the code ``diffaudit sample`` runs) over the
same pipeline, for the same steps, guidance, dtype, prompts and per-image seeds (the stock call gets
the same initial latents, drawn per seed as the source draws them).

Sides, each saved as it finishes when run by ``run_all.py``:

- ``stock_pipeline``: ``pipe(prompt=..., latents=...)`` as a user of diffusers calls it (bf16 on CUDA,
  fp32 on the CPU);
- ``diffaudit_source``: the source with the settings ``diffaudit sample --fast`` gives on this device
  (CUDA: bf16, the default layout; the CPU: fp32), not compiled;
- ``diffaudit_source_channels_last`` (CUDA): the same with the UNet and VAE in channels-last memory,
  which ``--fast`` leaves out unless compiling (kept here to show why);
- ``diffaudit_source_compiled`` (CUDA, unless ``--no-compile``): channels-last and ``torch.compile`` of
  the UNet and of ``vae.decode`` (``diffaudit sample --fast --compile``); compilation happens in an
  untimed warm-up call;
- ``diffaudit_source_compiled_fused_qkv`` (CUDA, with ``--fuse-qkv``): the compiled side with the
  UNet's attention query/key/value projections fused into one matrix product each
  (``UNet2DConditionModel.fuse_qkv_projections``; the same weights, so the same images within bf16
  rounding), compiled again.
- ``diffaudit_source_compiled_tuned`` (CUDA, with ``--tuned``): the compiled side compiled again from
  scratch with inductor's autotuning and the settings diffusers' speed-up guides use for UNets
  (:data:`TUNED_INDUCTOR`: ``max_autotune`` without CUDA graphs, 1x1 convolutions as matrix products,
  coordinate-descent tuning of the generated kernels, no epilogue fusion); its compilation takes
  minutes (``warmup_seconds``).

Diagnostics: ``--sides`` runs only the named diffaudit sides (the stock side always runs: it is the
baseline); ``--interleave N`` first runs the stock call and the uncompiled source alternately N times
(``interleaved``: each call's seconds, to tell a steady difference from drift of the machine);
``--profile`` adds one profiled call of each of those two and of each compiled side (``profile``: the
top operators by device time, the kernels' busy time beside the wall time and by kernel family, the
top host operators).

The images of each diffaudit side are compared with the stock images (mean and max ℓ2 on [0, 1]).
Every side does the same arithmetic, counted once with ``torch.utils.flop_counter`` on one image
(``tflop_per_image``: the UNet ``steps`` times, twice under classifier-free guidance, the text encoder
once per prompt and negative prompt, the VAE decoder once); each side's ``tflops`` is its rate, and
with ``--peak-tflops`` (the device's dense bf16 peak, H100 SXM: 989) its ``fraction_of_peak``.

    python bench/bench_sd.py --size 512 --batch 8 --steps 20 --peak-tflops 989   # GPU
    python bench/bench_sd.py --tiny --size 64 --batch 2 --steps 2  # CPU smoke test
    python bench/bench_sd.py --size 512 --batch 1 --steps 20 --count-only  # the count alone (CPU: minutes)
    python bench/bench_sd.py --size 512 --batch 8 --steps 20 --sides diffaudit_source --interleave 3 --profile
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from diffusers import DDIMScheduler

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from _common import checkpoint, device_info, emit, profile_ops, timed
from diffaudit.core.seeds import generation_seed, randn_per_seed
from diffaudit.models.sd_configs import build_stable_diffusion
from diffaudit.sampling.sources import StableDiffusionSource


#: Inductor's settings of the ``--tuned`` side (``torch.compile(options=...)``).
TUNED_INDUCTOR = {"max_autotune": True, "triton.cudagraphs": False, "conv_1x1_as_mm": True,
                  "coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True,
                  "epilogue_fusion": False}


def to_uint8(images) -> np.ndarray:
    """[0, 1] floats -> uint8, as the source stores them."""
    return np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def l2_stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.sqrt((((a.astype(np.float64) - b) / 255.0) ** 2).reshape(len(a), -1).mean(1))
    return {"mean_l2_to_stock": float(d.mean()), "max_l2_to_stock": float(d.max())}


@torch.no_grad()
def tflop_per_image(pipe, size: int, steps: int, guidance_scale: float, device: torch.device, dtype: torch.dtype) -> dict:
    """Floating-point operations (TFLOP, multiply-adds counted as 2) of one image: each part run once on
    zeros at batch 1 (its count does not depend on the values or the device), scaled by how often the
    pipeline runs it. Matrix products and convolutions, attention's included; element-wise work is not
    counted (the rates are against the matrix-product peak)."""
    cfg = 2 if guidance_scale > 1 else 1  # the pipeline's own test for classifier-free guidance
    lat = size // pipe.vae_scale_factor
    tokens = torch.zeros(1, pipe.tokenizer.model_max_length, dtype=torch.long, device=device)
    parts = {
        "unet_call": lambda: pipe.unet(torch.zeros(1, pipe.unet.config.in_channels, lat, lat, device=device, dtype=dtype),
                                       torch.tensor([1], device=device),
                                       encoder_hidden_states=torch.zeros(1, tokens.shape[1], pipe.unet.config.cross_attention_dim,
                                                                         device=device, dtype=dtype)),
        "text_encoder_call": lambda: pipe.text_encoder(tokens),
        "vae_decode": lambda: pipe.vae.decode(torch.zeros(1, pipe.vae.config.latent_channels, lat, lat, device=device,
                                                          dtype=dtype)),
    }
    flops = {}
    for name, call in parts.items():
        # The math attention (matrix products the counter sees): a fused kernel of some devices (the
        # CPU's flash attention) has no operation count, and would leave attention out.
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            call()
        flops[name] = counter.get_total_flops() / 1e12
    flops["unet_calls"] = steps * cfg
    flops["total"] = steps * cfg * flops["unet_call"] + cfg * flops["text_encoder_call"] + flops["vae_decode"]
    return flops


def rate(images_per_s: float, flops: dict, peak_tflops: float | None) -> dict:
    """Achieved TFLOP/s of a side, and its fraction of ``peak_tflops`` when given."""
    out = {"tflops": images_per_s * flops["total"]}
    if peak_tflops:
        out["fraction_of_peak"] = out["tflops"] / peak_tflops
    return out


def uncompile(pipe) -> None:
    """The pipeline's UNet and ``vae.decode`` as they were before ``torch.compile`` (and dynamo's caches
    emptied), so that a side can compile them again with other settings."""
    torch._dynamo.reset()
    if hasattr(pipe.unet, "_orig_mod"):
        pipe.unet = pipe.unet._orig_mod
    if "decode" in vars(pipe.vae):  # the compiled wrapper set on the instance; the class's method beneath
        del pipe.vae.decode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny pipeline (CPU smoke test) instead of SD 1.x sizes")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="images per call (the source's micro-batch)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="CUDA: leave out the compiled side")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode of the compiled side (default: default)")
    ap.add_argument("--fuse-qkv", action="store_true", help="CUDA: add a compiled side with the UNet's q/k/v projections fused")
    ap.add_argument("--tuned", action="store_true",
                    help="CUDA: add a compiled side with inductor's autotuning (TUNED_INDUCTOR; compiles for minutes)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--sides", default=None,
                    help="comma-separated diffaudit sides to run (default: all that apply here); the stock side always runs")
    ap.add_argument("--interleave", type=int, default=0, metavar="N",
                    help="first run the stock call and the uncompiled source alternately N times, each timed")
    ap.add_argument("--profile", action="store_true",
                    help="profile one call of the stock pipeline, of the uncompiled source and of each compiled side (torch profiler)")
    ap.add_argument("--count-only", action="store_true",
                    help="count the operations per image and stop (no timing; the count is the same on any device)")
    a = ap.parse_args(argv)
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
    flops = tflop_per_image(pipe, a.size, a.steps, a.guidance_scale, dev, dtype)
    result = {"bench": "stable-diffusion", **device_info(dev), "size": a.size, "batch": a.batch, "steps": a.steps,
              "guidance_scale": a.guidance_scale, "dtype": str(dtype), "tiny": a.tiny, "tflop_per_image": flops,
              "peak_tflops": a.peak_tflops, "images_per_s": {}, "rate": {}}
    if a.count_only:
        emit(result)
        return 0

    def stock():
        return pipe(prompt=prompts, latents=latents, num_inference_steps=a.steps, guidance_scale=a.guidance_scale,
                    height=a.size, width=a.size, output_type="np").images

    stock_images = to_uint8(stock())  # warm-up
    t_stock = timed(stock, dev, a.repeats)
    result["images_per_s"]["stock_pipeline"] = a.batch / t_stock
    result["rate"]["stock_pipeline"] = rate(a.batch / t_stock, flops, a.peak_tflops)
    checkpoint(result, "stock_pipeline")

    # diffaudit's source over the same pipeline (same scheduler config): what `diffaudit sample --fast` runs.
    # It changes the pipeline in place (channels-last, then compiled modules, then fused projections), so
    # the sides come after the stock one, in this order.
    common = dict(device=dev, steps=a.steps, guidance_scale=a.guidance_scale, scheduler="ddim", micro_batch=a.batch,
                  dtype=dtype, height=a.size, compile_mode=a.compile_mode)
    sides = [("diffaudit_source", dict(channels_last=False, compile=False))]  # (name, source options)
    if cuda:
        sides.append(("diffaudit_source_channels_last", dict(channels_last=True, compile=False)))
        if not a.no_compile:
            sides.append(("diffaudit_source_compiled", dict(channels_last=True, compile=True)))
            if a.fuse_qkv:
                sides.append(("diffaudit_source_compiled_fused_qkv", dict(channels_last=True, compile=True)))
            if a.tuned:
                sides.append(("diffaudit_source_compiled_tuned", dict(channels_last=True, compile=True)))
    if a.sides is not None:
        wanted = {x.strip() for x in a.sides.split(",") if x.strip()}
        unknown = wanted - {name for name, _ in sides}
        if unknown:
            ap.error(f"--sides: {', '.join(sorted(unknown))} not among {', '.join(name for name, _ in sides)} here")
        sides = [(name, opts) for name, opts in sides if name in wanted]
    if a.interleave or a.profile:  # before the other sides, which change the pipeline in place
        eager = StableDiffusionSource.from_pipeline(pipe, channels_last=False, compile=False, **common)
        eager_run = lambda: eager(seeds, prompts)  # noqa: E731
        eager_run()  # warm-up
        if a.interleave:
            times = {"stock_pipeline": [], "diffaudit_source": []}
            for _ in range(a.interleave):
                times["stock_pipeline"].append(timed(stock, dev, 1))
                times["diffaudit_source"].append(timed(eager_run, dev, 1))
            result["interleaved"] = {"seconds": times,
                                     "median_ratio": float(np.median(times["stock_pipeline"]) / np.median(times["diffaudit_source"]))}
            checkpoint(result, "interleaved")
        if a.profile:
            result["profile"] = {"stock_pipeline": profile_ops(stock, dev), "diffaudit_source": profile_ops(eager_run, dev)}
            checkpoint(result, "profile")
    result["diffaudit_settings"] = {"dtype": str(dtype), "compile_mode": a.compile_mode,
                                    "sides": {name: opts for name, opts in sides}}
    if a.tuned:
        result["diffaudit_settings"]["tuned_inductor"] = TUNED_INDUCTOR
    for name, opts in sides:
        if name.endswith("_fused_qkv"):
            pipe.unet = pipe.unet._orig_mod  # un-compiled, fused, then compiled again by the source
            pipe.unet.fuse_qkv_projections()
        if name.endswith("_tuned"):
            uncompile(pipe)
            pipe.unet = torch.compile(pipe.unet, options=TUNED_INDUCTOR, dynamic=False)
            pipe.vae.decode = torch.compile(pipe.vae.decode, options=TUNED_INDUCTOR, dynamic=False)
        source = StableDiffusionSource.from_pipeline(pipe, **opts, **common)
        run = lambda source=source: source(seeds, prompts)
        t0 = time.perf_counter()
        images = run()  # warm-up (compiles the compiled sides)
        result.setdefault("warmup_seconds", {})[name] = time.perf_counter() - t0
        t = timed(run, dev, a.repeats)
        result["images_per_s"][name] = a.batch / t
        result["rate"][name] = rate(a.batch / t, flops, a.peak_tflops)
        result[f"{name}_images"] = l2_stats(images, stock_images)
        result[f"speedup_of_{name}"] = t_stock / t
        if a.profile and opts["compile"]:
            result.setdefault("profile", {})[name] = profile_ops(run, dev)
        checkpoint(result, name)
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
