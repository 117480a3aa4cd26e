"""Training throughput: diffaudit's training loop against a plain PyTorch loop of the same model.

The plain loop is what a research script does: bf16 autocast, uncompiled, Adam, batch on the GPU.
diffaudit adds torch.compile, fused Adam and foreach EMA. Prints JSON with images/s and the ratio.

Both rates leave out the first 10 steps and are taken between synchronised clock readings (the
library's loop synchronises CUDA at its warm-up mark). The library's run writes no checkpoint here:
a checkpoint of the CIFAR-10 model (about 0.5 GiB) inside the timed steps would measure the disk.

    python bench/bench_training.py --preset ddpm-cifar10 --batch 128 --steps 60   # GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

import diffaudit.models.training as training_module
from _common import checkpoint, device_info, emit, sync
from diffaudit.data.dataset import ImageDataset
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.models.training import TrainConfig, train
from diffaudit.models.unets import build_unet, unet_config


def plain_loop(images: torch.Tensor, preset: str, batch: int, steps: int, dev: torch.device) -> float:
    """images/s of a plain loop (bf16 autocast on CUDA, no compile); first 10 steps are warm-up."""
    C, S = images.shape[1], images.shape[2]
    model = build_unet(unet_config(preset, image_size=S, in_channels=C)).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    a_bar = alphas_cumprod_of(make_scheduler()).float().to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x_all = images.to(dev)
    t0 = None
    for step in range(steps + 10):
        if step == 10:
            sync(dev)
            t0 = time.perf_counter()
        idx = torch.randint(0, len(x_all), (batch,), device=dev, generator=g)
        x0 = x_all[idx]
        t = torch.randint(0, 1000, (batch,), device=dev, generator=g)
        eps = torch.randn(x0.shape, device=dev, generator=g)
        ab = a_bar[t][:, None, None, None]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pred = model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    sync(dev)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--n", type=int, default=2048, help="training images (random pixels)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (a.n, a.image_size, a.image_size, a.channels), dtype=np.uint8)
    ds = ImageDataset(imgs, [f"r{i}" for i in range(a.n)], source="random")
    plain = plain_loop(torch.as_tensor(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1, a.preset, a.batch, a.steps, dev)
    result = {"bench": "training", **device_info(dev), "preset": a.preset, "batch": a.batch, "steps": a.steps,
              "images_per_s": {"plain_loop": plain}}
    checkpoint(result, "plain_loop")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(preset=a.preset, steps=a.steps + 10, batch_size=a.batch, checkpoint_every=a.steps + 10,
                          log_every=a.steps + 10, compile=not a.no_compile)
        interval = training_module.checkpoint_interval
        training_module.checkpoint_interval = lambda config: config.steps  # no checkpoint inside the timed steps
        try:
            train(ds, cfg, f"{tmp}/run", device=dev)
        finally:
            training_module.checkpoint_interval = interval
        timing = json.loads(open(f"{tmp}/run/timing.json").read())
    ours = timing["images_per_second_after_warmup"] or timing["images_per_second"]
    result["images_per_s"]["diffaudit"] = ours
    emit({**result, "speedup": ours / plain,
          "note": "both rates leave out the first 10 steps (compilation, warm-up), between synchronised clock readings"})


if __name__ == "__main__":
    main()
