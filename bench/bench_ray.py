"""Ray scaling: the same CPU-bound sampling job on 1 and 2 Ray workers (one torch thread each).

    python bench/bench_ray.py --n 256 --steps 10      # needs `pip install ray`

Prints JSON: seconds per worker count and the speed-up of 2 workers over 1. The stores are checked
to hold the same pixels.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import emit
from diffaudit.cli.main import main as cli
from diffaudit.models.scheduler import make_scheduler
from diffaudit.models.unets import build_unet, unet_config
from diffaudit.store import read_samples


def run(model: Path, out: Path, n: int, steps: int, workers: int) -> float:
    import ray

    ray.shutdown()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    code = cli(["sample", "--model", str(model), "--out", str(out), "--n", str(n), "--steps", str(steps),
                "--shard-size", str(max(1, n // 8)), "--micro-batch", "16", "--device", "cpu", "--ray", "local", "--quiet"])
    seconds = time.perf_counter() - t0
    ray.shutdown()
    assert code == 0
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--image-size", type=int, default=32)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        with torch.random.fork_rng():
            torch.manual_seed(0)
            build_unet(unet_config(a.preset, image_size=a.image_size, in_channels=3)).save_pretrained(model / "unet")
        make_scheduler().save_pretrained(model / "scheduler")
        t1 = run(model, Path(tmp) / "w1", a.n, a.steps, 1)
        t2 = run(model, Path(tmp) / "w2", a.n, a.steps, 2)
        same = np.array_equal(read_samples(str(Path(tmp) / "w1")).images, read_samples(str(Path(tmp) / "w2")).images)
    emit({"bench": "ray-sampling", "n": a.n, "steps": a.steps, "preset": a.preset, "image_size": a.image_size,
          "torch_threads_per_worker": 1, "seconds": {"1_worker": t1, "2_workers": t2}, "speedup_2_vs_1": t1 / t2,
          "identical_images": bool(same)})


if __name__ == "__main__":
    main()
