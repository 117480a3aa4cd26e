"""Run every benchmark and print one JSON object {name: result}.

    python bench/run_all.py            # sizes for the machine: GPU sizes on CUDA, small ones on the CPU
    python bench/run_all.py --only sampling,knn

Each benchmark runs in its own process (a failure is recorded, the others still run). The GPU sizes
are those of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CIFAR_UNET = ["--preset", "ddpm-cifar10", "--image-size", "32", "--channels", "3"]
GPU = {
    "sampling": ["bench_sampling.py", *CIFAR_UNET, "--batch", "1024", "--steps", "50", "--repeats", "1"],
    "training": ["bench_training.py", *CIFAR_UNET, "--batch", "128", "--steps", "60", "--n", "4096"],
    "knn": ["bench_knn.py", "--synthetic", "--queries", "1048576", "--refs", "50000", "--k", "50", "--peak-tflops", "989",
            "--peak-int8-tops", "1979", "--also-compute", "bf16", "--query-blocks", "21845,43690", "--profile"],
    "rerank": ["bench_rerank.py", "--queries", "1048576", "--refs", "50000", "--k", "50", "--repeats", "1"],
    "loss": ["bench_loss.py", *CIFAR_UNET, "--n", "4096", "--models", "2", "--draws", "4", "--batch", "1024",
             "--baseline-batches", "256,1024"],
    "inpaint": ["bench_inpaint.py", *CIFAR_UNET, "--targets", "16", "--baseline-targets", "2", "--n-inpaint", "128",
                "--batch", "2048", "--steps", "20", "--repeats", "1"],
    "filter": ["bench_filter.py", "--prompts", "50", "--generations", "500", "--size", "512", "--also-compute", "bf16"],
    "stable_diffusion": ["bench_sd.py", "--size", "512", "--batch", "8", "--steps", "20", "--repeats", "1"],
}
CPU = {
    "sampling": ["bench_sampling.py", "--batch", "64", "--steps", "10"],
    "training": ["bench_training.py", "--batch", "32", "--steps", "40", "--n", "256"],
    "knn": ["bench_knn.py", "--queries", "2048", "--refs", "5000", "--k", "50", "--also-compute", "float64"],
    "rerank": ["bench_rerank.py", "--queries", "4096", "--refs", "5000", "--k", "50"],
    "loss": ["bench_loss.py"],
    "inpaint": ["bench_inpaint.py"],
    "filter": ["bench_filter.py", "--also-compute", "float64"],
    "stable_diffusion": ["bench_sd.py", "--tiny", "--size", "64", "--batch", "2", "--steps", "4"],
    "ray": ["bench_ray.py", "--n", "128", "--steps", "10"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per benchmark")
    a = ap.parse_args()
    table = GPU if torch.cuda.is_available() else CPU
    names = [n for n in table if not a.only or n in a.only.split(",")]
    results = {}
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run([sys.executable, *table[name]], cwd=HERE, capture_output=True, text=True,
                                  timeout=a.timeout)
            start = proc.stdout.find("{")
            results[name] = (json.loads(proc.stdout[start:]) if proc.returncode == 0 and start >= 0
                             else {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"], "returncode": proc.returncode})
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"timed out after {a.timeout}s"}
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
