"""Ray scaling: the same CPU-bound job on 1 and 2 Ray workers (one torch thread each).

    python bench/bench_ray.py --n 256 --steps 10                 # sampling; needs `pip install ray`
    python bench/bench_ray.py --job verify --n 65536 --train 50000  # verify's search, 1 vs 2 one-CPU nodes

Prints JSON: seconds per worker count and the speed-up of 2 workers over 1. The sampling stores are
checked to hold the same pixels, the verify results to be equal.
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


def run_verify(samples: Path, train: Path, out: Path, workers: int) -> float:
    """Seconds of `verify --ray` (ratio rule, default chunks) on a local Ray cluster of ``workers``
    one-CPU nodes (a search worker per node: one torch thread each); ``workers`` 0: the same command
    in this process without Ray, on one torch thread."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = None
    if workers:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(workers - 1):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    code = cli(["verify", "--samples", str(samples), "--data", str(train), "--out", str(out), "--device", "cpu",
                "--rule", "ratio", "--quiet", *(["--ray", "auto"] if workers else [])])
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    assert code == 0
    return seconds


def verify_job(a) -> dict:
    """Verification of ``--n`` generations (a ``--copies`` fraction of noisy copies of CIFAR-10 training
    images, the rest unseen test images) against ``--train`` CIFAR-10 training images, on 1 and 2
    workers. Counting the matches (eidetic and duplicate searches of the matched training images)
    stays on the command's node, so it is kept small, as in an audit, where few generations match."""
    import json

    from diffaudit.data import load_dataset

    train = load_dataset("cifar10", subset=a.train, subset_seed=0).images
    rng = np.random.default_rng(0)
    picks = rng.choice(len(train), int(a.n * a.copies), replace=False)
    noisy = np.clip(train[picks].astype(np.int16) + rng.integers(-6, 7, (len(picks), 32, 32, 3)), 0, 255).astype(np.uint8)
    test = load_dataset("cifar10-test").images
    unseen = test[rng.integers(0, len(test), a.n - len(picks))]  # test images, repeated with noise beyond 10,000
    unseen = np.clip(unseen.astype(np.int16) + rng.integers(-6, 7, unseen.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "train.npz", images=train)
        np.savez(Path(tmp) / "gen.npz", images=np.concatenate([noisy, unseen]))
        t0 = run_verify(Path(tmp) / "gen.npz", Path(tmp) / "train.npz", Path(tmp) / "w0", 0)
        t1 = run_verify(Path(tmp) / "gen.npz", Path(tmp) / "train.npz", Path(tmp) / "w1", 1)
        t2 = run_verify(Path(tmp) / "gen.npz", Path(tmp) / "train.npz", Path(tmp) / "w2", 2)
        r0, r1, r2 = (json.loads((Path(tmp) / w / "result.json").read_text()) for w in ("w0", "w1", "w2"))
    return {"bench": "ray-verify", "n": a.n, "train": a.train, "n_copies": len(picks), "torch_threads_per_worker": 1,
            "seconds": {"no_ray_1_thread": t0, "1_worker": t1, "2_workers": t2}, "speedup_2_vs_1": t1 / t2,
            "unique_extracted": r2["unique_extracted"],
            "identical_results": r0["extracted"] == r1["extracted"] == r2["extracted"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", choices=("sample", "verify"), default="sample")
    ap.add_argument("--n", type=int, default=256, help="images to sample, or generations to verify")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train", type=int, default=20000, help="verify: CIFAR-10 training images searched")
    ap.add_argument("--copies", type=float, default=0.01, help="verify: fraction of generations that copy a training image")
    a = ap.parse_args()
    if a.job == "verify":
        emit(verify_job(a))
        return
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
