"""Peak memory of `diffaudit verify` against the number of generations: a sample store (read
memory-mapped, chunk by chunk) beside the same generations in an .npz (decoded into memory).

    python bench/bench_verify_memory.py --sizes 16384,131072 --train 500
    python bench/bench_verify_memory.py --sizes 4096 --data-cache-train 50000

The second form compares the training set decoded into memory (`--data cifar10 --subset N`) with the
same set decoded once into `--data-cache` parts and read memory-mapped (a second run reuses them).

Generations are noisy copies of real CIFAR-10 images written as a finished sample store and as an
.npz; each `verify` runs in its own process, whose peak RSS (ru_maxrss) is reported. Bounded memory
means the store's peak stays flat as the number of generations grows. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec, so a
# child would report this (large) process's peak; VmHWM belongs to the child's own address space.
CHILD = """
import sys
from diffaudit.cli.main import main
rc = main(sys.argv[1:])
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("PEAK_RSS_KIB", hwm.split()[1])
sys.exit(rc)
"""


def _write_inputs(root: Path, n: int, base: np.ndarray, seed: int) -> tuple[Path, Path]:
    from diffaudit.store import SampleStore

    rng = np.random.default_rng(seed)
    store = SampleStore.create(root / f"store-{n}", settings={"seed": seed, "source": "bench"}, prompts=[None],
                               per_prompt=n, image_shape=base.shape[1:], shard_size=4096)
    blocks = []
    for k in range(store.n_shards):
        pl = store.plan(k)
        pick = rng.integers(0, len(base), pl.stop - pl.start)
        noise = rng.integers(-8, 9, size=(len(pick),) + base.shape[1:])
        block = np.clip(base[pick].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        store.write_shard(k, block)
        blocks.append(block)
    npz = root / f"samples-{n}.npz"
    np.savez(npz, images=np.concatenate(blocks))
    return store.path, npz


def _verify(samples: Path, train: Path | str, out: Path, threads: int, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, "-c", CHILD, "--quiet", "verify", "--samples", str(samples), "--data", str(train),
           "--out", str(out), "--device", "cpu", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"verify failed ({proc.returncode}): {proc.stderr[-2000:]}")
    kib = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")))
    r = json.loads((out / "result.json").read_text())
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(kib / 1024, 1), "unique_extracted": r["unique_extracted"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="16384,131072", help="numbers of generations, comma-separated")
    p.add_argument("--train", type=int, default=500, help="training images (real CIFAR-10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-cache-train", type=int, default=None, metavar="N",
                   help="instead: N CIFAR-10 training images decoded into memory vs through --data-cache")
    a = p.parse_args()
    from diffaudit.data import load_dataset

    if a.data_cache_train:
        emit(_cache_rows(a))
        return

    train = load_dataset("cifar10", subset=a.train).images
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        root = Path(tmp)
        np.savez(root / "train.npz", images=train)
        for n in [int(s) for s in a.sizes.split(",")]:
            store, npz = _write_inputs(root, n, train, seed=n)
            row = {"generations": n, "bytes_of_generations_mib": round(n * train[0].size / 2**20, 1)}
            row["store"] = _verify(store, root / "train.npz", root / f"v-store-{n}", a.threads)
            row["npz"] = _verify(npz, root / "train.npz", root / f"v-npz-{n}", a.threads)
            rows.append(row)
            for f in (npz,):
                f.unlink()
    emit({"bench": "verify_memory", "train_images": a.train, "threads": a.threads, "rows": rows,
          "note": "peak RSS of the whole `diffaudit verify` process; store: memory-mapped, read one chunk of "
                  "16,384 queries at a time; npz: decoded into memory first"})


def _cache_rows(a) -> dict:
    """verify against `cifar10 --subset N`: decoded into memory, then through --data-cache (twice)."""
    from diffaudit.data import load_dataset

    base = load_dataset("cifar10", subset=min(a.data_cache_train, 2000)).images
    n = int(a.sizes.split(",")[0])
    spec = ("--subset", str(a.data_cache_train))
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        root = Path(tmp)
        store, npz = _write_inputs(root, n, base, seed=n)
        npz.unlink()
        row = {"generations": n, "train_images": a.data_cache_train,
               "memory": _verify(store, "cifar10", root / "v-mem", a.threads, spec),
               "data_cache_first": _verify(store, "cifar10", root / "v-c1", a.threads,
                                           (*spec, "--data-cache", str(root / "cache"))),
               "data_cache_reused": _verify(store, "cifar10", root / "v-c2", a.threads,
                                            (*spec, "--data-cache", str(root / "cache")))}
    return {"bench": "verify_memory_data_cache", "threads": a.threads, "row": row,
            "note": "peak RSS of the whole `diffaudit verify` process; memory: --data decoded into memory; "
                    "data_cache: decoded into .npy parts (first run) or reusing them (second run)"}


if __name__ == "__main__":
    main()
