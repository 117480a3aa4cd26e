"""Per-example loss throughput for membership inference: N examples x M models x D noise draws (issue 4).

Baseline (what a user of diffusers writes): for each model, for each draw, for each batch, noise
from a torch generator on the device, ``unet(x_t, t).sample`` in fp32 eager mode, the per-example
mean squared error; the best of ``--baseline-batches``. diffaudit: ``per_example_loss`` (per-example
seeded ε, identical in every model) per model at ``--batch``; on CUDA its fast path too (bf16,
channels-last, ``torch.compile`` unless ``--no-compile``). Throughput counts loss evaluations
(examples x models x draws) per second after a warm-up. Also reported: the time diffaudit spends
drawing its seeded noise (the share of it that a cross-model batch would save), and the agreement of
the fast path with fp32 on the same ε (Spearman rank correlation and the median relative error of
the losses: LiRA only needs the ranking within each example to be stable).

    python bench/bench_loss.py --preset medium --image-size 32 --channels 3 \\
        --n 4096 --models 4 --draws 4 --batch 1024 --out bench-loss.json            # GPU
    python bench/bench_loss.py                                                      # CPU, tiny models

Prints JSON (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, emit, random_denoiser, sync  # noqa: E402

from diffaudit.core.io import write_json_atomic  # noqa: E402
from diffaudit.core.seeds import torch_generator  # noqa: E402
from diffaudit.data.dataset import to_model_space  # noqa: E402
from diffaudit.models.loss import loss_noise, per_example_loss  # noqa: E402


def make_models(a, device: torch.device):
    """M random UNets of the preset (throughput does not need trained weights), each its own init."""
    out = []
    for k in range(a.models):
        den = random_denoiser(a.preset, a.image_size, a.channels, device)
        with torch.no_grad():
            g = torch_generator(1000 + k)
            for p in den.unet.parameters():  # perturb so the models differ (same cost)
                p.add_(0.01 * torch.randn(p.shape, generator=g).to(p.device, p.dtype))
        out.append(den)
    return out


@torch.no_grad()
def baseline_losses(models, images: np.ndarray, t: int, draws: int, batch: int, device: torch.device) -> np.ndarray:
    """Plain fp32 eager loop over models, draws and batches; noise from one device generator."""
    n = len(images)
    out = np.empty((n, len(models), draws))
    x_all = to_model_space(images).to(device)
    for m, den in enumerate(models):
        unet = den.unet
        ab = float(den.alphas_cumprod[t])
        gen = torch.Generator(device=device).manual_seed(m)
        for d in range(draws):
            for s in range(0, n, batch):
                x0 = x_all[s:s + batch]
                eps = torch.randn(x0.shape, generator=gen, device=device)
                x_t = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps
                tt = torch.full((len(x0),), t, device=device, dtype=torch.long)
                pred = unet(x_t, tt).sample
                out[s:s + batch, m, d] = (eps - pred).pow(2).flatten(1).mean(1).double().cpu().numpy()
    return out


def diffaudit_losses(models, images: np.ndarray, t: int, draws: int, batch: int) -> np.ndarray:
    return np.stack([per_example_loss(den, images, timesteps=[t], n_draws=draws, batch_size=batch)[:, 0] for den in models],
                    axis=1)


def timed_once(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--n", type=int, default=256, help="examples")
    ap.add_argument("--models", type=int, default=2, help="models")
    ap.add_argument("--draws", type=int, default=2, help="noise draws per example")
    ap.add_argument("--timestep", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256, help="diffaudit's batch size")
    ap.add_argument("--baseline-batches", default="64,256", help="batch sizes tried for the baseline (best kept)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    images = np.random.default_rng(0).integers(0, 256, (a.n, a.image_size, a.image_size, a.channels), dtype=np.uint8)
    models = make_models(a, dev)
    evals = a.n * a.models * a.draws
    warm = images[: min(len(images), 64)]

    baseline = {}
    for b in [int(v) for v in a.baseline_batches.split(",") if v]:
        baseline_losses(models[:1], warm, a.timestep, 1, b, dev)  # warm-up
        secs, _ = timed_once(lambda: baseline_losses(models, images, a.timestep, a.draws, b, dev), dev)
        baseline[str(b)] = evals / secs
    best_b = max(baseline, key=baseline.get)

    diffaudit_losses(models[:1], warm, a.timestep, 1, a.batch)
    t32, l32 = timed_once(lambda: diffaudit_losses(models, images, a.timestep, a.draws, a.batch), dev)
    # the seeded-noise share: drawing every (example, draw) ε once, as per_example_loss does per model
    t_noise, _ = timed_once(lambda: [loss_noise(range(a.n), d, 0, (a.channels, a.image_size, a.image_size), dev)
                                     for d in range(a.draws)], dev)
    result = {
        "bench": "loss", **device_info(dev), "preset": a.preset, "image_size": a.image_size, "channels": a.channels,
        "n_examples": a.n, "n_models": a.models, "n_draws": a.draws, "timestep": a.timestep, "batch": a.batch,
        "loss_evaluations": evals,
        "evals_per_s": {"baseline_fp32_eager_best": baseline[best_b], "diffaudit_fp32": evals / t32},
        "baseline_by_batch": baseline, "baseline_best_batch": int(best_b),
        "noise_seconds_per_model": t_noise, "noise_share_of_diffaudit_fp32": t_noise * a.models / t32,
    }
    best = evals / t32
    if dev.type == "cuda":
        fast = [copy.deepcopy(m).optimise_for_gpu(dtype=torch.bfloat16, channels_last=True, compile=not a.no_compile)
                for m in models]
        diffaudit_losses(fast, images[: a.batch], a.timestep, 1, a.batch)  # compile for the full batch shape
        if a.n % a.batch:
            diffaudit_losses(fast, images[: a.n % a.batch], a.timestep, 1, a.batch)  # and the last, partial one
        t16, l16 = timed_once(lambda: diffaudit_losses(fast, images, a.timestep, a.draws, a.batch), dev)
        result["evals_per_s"]["diffaudit_bf16_channels_last" + ("" if a.no_compile else "_compiled")] = evals / t16
        rel = np.abs(l16 - l32) / np.maximum(l32, 1e-12)
        result["bf16_vs_fp32"] = {"spearman": spearman(l16, l32), "median_relative_error": float(np.median(rel)),
                                  "max_relative_error": float(rel.max())}
        best = max(best, evals / t16)
    result["speedup_best_vs_baseline"] = best / baseline[best_b]
    emit(result)
    if a.out:
        write_json_atomic(a.out, result)


if __name__ == "__main__":
    main()
