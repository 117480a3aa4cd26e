"""Benchmark: exact top-k nearest neighbours, generations x training images (issue 3, Performance).

Compares, side by side in one run and on the same data:

- ``diffaudit``: :func:`diffaudit.distances.knn_search` with ``--compute`` (default ``auto``: the exact
  int8 GEMM on shifted pixels for images of at most 43,690 values, on CUDA and the CPU; ``bf16``:
  bf16 in / fp32 accumulate with exact re-ranking; ``float64``: exact on the CPU), and certificate;
  ``--also-compute`` times the search again with other kinds in the same run (same result checked),
  each with its GEMM rate on resident operands;
- ``gemm_only``: the block GEMMs alone, each query block copied to the device and converted first
  (the floor of any GEMM-based search over queries on the host; with --peak-tflops the fraction of
  the device's peak it reaches); ``gemm_resident``: the same GEMMs on operands already on the device
  (the matrix-product rate the hardware gives these shapes);
- ``cdist_topk``: a ``torch.cdist`` + ``torch.topk`` loop over the same query blocks (fp32);
- ``faiss_cpu``: raw ``faiss.IndexFlatL2`` on the CPU (approximate fp32 distances), on at most
  --faiss-queries queries, its time scaled to all queries;
- ``diffaudit_faiss``: the faiss backend with diffaudit's exact re-ranking (same query cap); both faiss
  baselines are recorded under ``skipped`` with the reason where faiss cannot be imported;
- ``naive_numpy``: the whole (Q, N) float64 distance matrix in numpy (``--only-naive`` runs it alone,
  so that peak RSS of the two can be compared run by run);
- ``unfused`` (``--unfused``, CUDA): the same search with the int8 GEMM's fused selection turned off
  (:mod:`diffaudit.distances.knn_fused`: the default search multiplies and selects in one Triton
  kernel; off, it writes the (queries x block) matrix and runs ``torch.topk`` on it);
- ``resident_queries`` (``--resident-queries``): the search with the queries already in device
  memory, so that no host read or copy limits it (with ``--unfused``, also unfused; with
  ``--waiting``, also waiting);
- ``waiting`` (``--waiting``): the same search with ``pipeline=False``: each query block's results
  read back before the next block is queued, and the block's recomputed queries found by reading
  their masks back (host waits inside the block), as the search ran through the 39th session; the
  default on CUDA queues the next block first and never waits inside one (:mod:`diffaudit.distances.knn`);
  ``--query-blocks`` sides are timed both ways with it;
- ``cached_chunks`` (``--cached-chunks``): the resumable search that ``verify`` and ``extract`` run
  (:func:`diffaudit.attacks.extraction.knn_cache.iter_cached_knn`: chunks of 16,384 queries, each
  saved to a temporary folder), each chunk saved in a background thread while the next is searched,
  beside each saved in turn before the next (as through the 39th session);
- ``streamed`` (``--streamed``): the search against a reference that is not cached (given as a
  callable yielding parts of 1,000 images, as a reference larger than the cache is read), which is
  read once per group of query blocks (the default budget), beside once per query block
  (``query_group_bytes=0``, as through the 40th session), with the passes each made; and the
  resumable search (``iter_cached_knn``, chunks of 16,384 into a temporary folder) against it,
  consecutive chunks searched in one call beside one search per chunk (as through the 40th session);
- ``fused_configs`` (``--fused-configs``): the fused kernel alone on resident operands, per tile
  shape, with and without the selection of the candidates, and on CUDA what the compiler made of it
  (registers, shared memory, programs per multiprocessor).

Data: training images from the CIFAR-10 shards (--cifar-root) when present, generations made from
the CIFAR-10 test images with seeded noise (so distances look like real ones); --synthetic uses
seeded random images instead. Exactness is checked against a float64 brute force on a sample of
queries. ``--query-blocks`` times the search again at other query blocks (the default bounds the
distance block to 1 GiB on CUDA); ``--profile`` adds the search's most expensive operators (torch
profiler, self time on the device, else on the CPU), to see where the time beyond the GEMM goes.
Every timed method is first run once on one query block of the real shapes (allocations, kernel
choice), so that with ``--repeats 1`` no first-use cost falls inside the timing. When run by
``run_all.py``, the result so far is saved after each method (``_common.checkpoint``).
Rates are T operations/s, ``tops`` for int8 and ``tflops`` for floating point, each given against the
peak of its kind: ``--peak-int8-tops`` and ``--peak-tflops`` (the device's bf16 peak). Prints one JSON object. Small CPU defaults; on an H100, e.g.
``--queries 1048576 --refs 50000 --k 50 --peak-tflops 989 --peak-int8-tops 1979 --also-compute bf16``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from _common import checkpoint, emit, profile_ops
from diffaudit.core.device import resolve_device
from diffaudit.core.seeds import numpy_rng
from diffaudit.distances.compute import cross, resolve_compute, shifted_sq_norms, sq_norms, to_compute
from diffaudit.distances import knn as knn_module
from diffaudit.distances.knn import default_extra, knn_search

try:  # the int8 GEMM with the selection fused in (CUDA, Triton)
    from diffaudit.distances import knn_fused
    from diffaudit.distances.knn_backends import TorchInt8Backend
except ImportError:  # pragma: no cover - older library
    knn_fused = TorchInt8Backend = None

try:  # the search's own default blocks, for warm-ups of the real shapes
    from diffaudit.distances.knn import _default_blocks
except ImportError:  # pragma: no cover - older library
    _default_blocks = None


def _cifar(root: Path, split: str, n: int) -> np.ndarray | None:
    from PIL import Image

    shards = sorted(root.glob(f"cifar10-{split}-*.tar"))
    if not shards:
        return None
    out = []
    for shard in shards:
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    out.append(np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")))
                    if len(out) == n:
                        return np.stack(out)
    return np.stack(out)


def make_data(args) -> tuple[np.ndarray, np.ndarray, str]:
    rng = numpy_rng(args.seed)
    shape = (args.size, args.size, 3)
    refs = None if args.synthetic else _cifar(Path(args.cifar_root), "train", args.refs)
    if refs is not None and len(refs) >= args.refs and args.size == 32:
        base = _cifar(Path(args.cifar_root), "test", min(args.queries, 10000))
        src = "cifar10"
    else:
        refs = rng.integers(0, 256, (args.refs, *shape), dtype=np.uint8)
        base = rng.integers(0, 256, (min(args.queries, 10000), *shape), dtype=np.uint8)
        src = "synthetic"
    # generations: cycle the base images with seeded ±8 noise, in chunks to bound memory
    q = np.empty((args.queries, *shape), dtype=np.uint8)
    for lo in range(0, args.queries, 65536):
        hi = min(args.queries, lo + 65536)
        idx = np.arange(lo, hi) % len(base)
        noise = rng.integers(-8, 9, (hi - lo, *shape), dtype=np.int16)
        q[lo:hi] = np.clip(base[idx].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return q, refs[: args.refs], src


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gemm_spec(kind, dev, dim):
    """The GEMM kind knn_search runs for ``kind`` (``auto`` resolved as it does)."""
    return resolve_compute(kind, dev, cpu_default="float64", dim=dim, allow_int8=True)


def time_diffaudit(q, r, k, dev, backend="torch", repeats=1, query_block=None, compute="auto", pipeline=None):
    best, res = float("inf"), None
    kw = {} if pipeline is None else {"pipeline": pipeline}  # the search's default unless a side sets it
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        res = knn_search(q, r, k, backend=backend, device=dev, query_block=query_block, compute=compute, **kw)
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, res


def search_block(dev, n_ref, dim) -> int:
    """The query block knn_search uses by default (for warm-ups on the real shapes)."""
    if _default_blocks is not None:
        return _default_blocks(dev, n_ref, dim)[0]
    return 256 if dev.type == "cuda" else 64


def warm_search(q, r, k, dev, *, backend="torch", query_block=None, compute="auto"):
    """One untimed search of one query block of the real shapes (all references): first-use costs
    (allocations, cuBLAS heuristics, the int8 exactness probe) stay out of the timed runs."""
    qb = query_block or search_block(dev, len(r), r[0].size)
    knn_search(q[:qb], r, k, backend=backend, device=dev, query_block=query_block, compute=compute)
    _sync(dev)


def time_gemm_only(q, r, dev, qb, kind="auto"):
    dim = r[0].size  # the images' real width (the int8 operands are padded to a multiple of 8)
    spec = gemm_spec(kind, dev, dim)
    rt = to_compute(torch.from_numpy(r.reshape(len(r), dim)), spec)
    cross(to_compute(torch.from_numpy(q[:qb].reshape(-1, dim)), spec), rt, spec)  # warm-up: one real block
    _sync(dev)
    t = time.perf_counter()
    for lo in range(0, len(q), qb):
        qt = to_compute(torch.from_numpy(q[lo:lo + qb].reshape(-1, dim)), spec)
        cross(qt, rt, spec)
    _sync(dev)
    return time.perf_counter() - t, spec.kind


def resident_operands(n_queries, r, dev, qb, kind="auto"):
    """(spec, reference rows, their shifted norms as int32, query blocks' sizes, one seeded query block)
    on the device, in the GEMM operand form of ``kind``, for the resident timings below."""
    dim = r[0].size  # the images' real width (the int8 operands are padded to a multiple of 8)
    spec = gemm_spec(kind, dev, dim)
    raw = torch.from_numpy(r.reshape(len(r), dim)).to(dev)
    rn = shifted_sq_norms(raw, sq_norms(raw)).to(torch.int32)
    blocks = [min(qb, n_queries - lo) for lo in range(0, n_queries, qb)]
    qt = to_compute(torch.from_numpy(numpy_rng(1).integers(0, 256, (blocks[0], dim), dtype=np.uint8)), spec)
    return spec, to_compute(raw, spec), rn, blocks, qt


def best_seconds(dev, repeats, fn) -> float:
    """The best of ``repeats`` timings of ``fn()``, the device synchronised around each."""
    best = float("inf")
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def time_gemm_resident(n_queries, r, dev, qb, repeats=3, kind="auto"):
    """The same block GEMMs on one query block held on the device, run for every block of
    ``n_queries``: the rate of the matrix products alone (best of ``repeats``)."""
    spec, rt, _, blocks, qt = resident_operands(n_queries, r, dev, qb, kind)
    cross(qt, rt, spec)  # warm-up: one block of the real shape

    def run():
        for n in blocks:
            cross(qt[:n], rt, spec)

    return best_seconds(dev, repeats, run)


def parse_fused_configs(text: str) -> list:
    """'BMxBNxBKxGROUPxKEEPxWARPSxSTAGES;...' -> FusedConfig list (empty: none)."""
    configs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        bm, bn, bk, g, keep, w, st = (int(x) for x in part.split("x"))
        configs.append(knn_fused.FusedConfig(bm, bn, bk, g, keep, w, st))
    return configs


def time_fused_resident(n_queries, r, dev, qb, k, config, repeats=3):
    """The fused kernel (:mod:`diffaudit.distances.knn_fused`) on one query block held on the device,
    run for every block of ``n_queries`` against all of ``r``: seconds of the kernel alone and of the
    kernel with the selection of the c = k + extra candidates (best of ``repeats`` each), and the
    fraction of queries the selection marks for recomputation."""
    _, rt, rn, blocks, qt = resident_operands(n_queries, r, dev, qb, "int8")
    c = k + default_extra(k)
    incomplete = knn_fused.select(knn_fused.tile_keys(qt, rt, rn, config=config), c)[2]  # warm-up: compiles

    def run(with_select: bool):
        for n in blocks:
            keys = knn_fused.tile_keys(qt[:n], rt, rn, config=config)
            if with_select:
                knn_fused.select(keys, c)

    times = {name: best_seconds(dev, repeats, lambda: run(with_select))
             for name, with_select in (("kernel", False), ("kernel_and_select", True))}
    return times, float(incomplete.float().mean())


def time_cached_knn(q, r, k, dev, patch=None, **kw) -> tuple[float, np.ndarray]:
    """Seconds and neighbour indices of one resumable search (``knn_cache.iter_cached_knn``) into a
    fresh temporary folder, removed after, under ``patch`` (a context manager, or None)."""
    from diffaudit.attacks.extraction import knn_cache

    folder = tempfile.mkdtemp(prefix="bench-knn-cache-")
    try:
        with patch or nullcontext():
            _sync(dev)
            t = time.perf_counter()
            parts = [res for _, res in knn_cache.iter_cached_knn(q, r, k, folder, device=dev, **kw)]
            seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return seconds, np.concatenate([p.indices for p in parts])


def time_cached_chunks(q, r, k, dev, repeats=1) -> dict:
    """The resumable search (``knn_cache.iter_cached_knn``) into a fresh temporary folder per run,
    chunks saved in the background and in turn, alternating; best of ``repeats`` each."""
    from diffaudit.attacks.extraction import knn_cache

    background = knn_cache._ChunkWriter.submit

    def in_turn(self, path, res, fault_name):
        knn_cache._save_chunk(path, res, fault_name)

    best: dict = {"background": float("inf"), "in_turn": float("inf")}
    results = {}
    for _ in range(repeats):
        for side, submit in (("background", background), ("in_turn", in_turn)):
            seconds, results[side] = time_cached_knn(q, r, k, dev, mock.patch.object(knn_cache._ChunkWriter, "submit", submit))
            best[side] = min(best[side], seconds)
    return {"background_seconds": best["background"], "in_turn_seconds": best["in_turn"],
            "background_speedup": best["in_turn"] / best["background"],
            "chunks": -(-len(q) // knn_cache.DEFAULT_CHUNK),
            "same_result": bool(np.array_equal(results["background"], results["in_turn"]))}


def time_streamed(q, r, k, dev, repeats=1, query_block=None) -> dict:
    """The search against ``r`` streamed (a callable yielding parts of 1,000 images, counted), read
    once per group of query blocks (default budget) and once per query block, alternating; best of
    ``repeats`` each."""
    from diffaudit.attacks.extraction import knn_cache

    passes = {"grouped": 0, "per_block": 0, "runs": 0, "per_chunk": 0}

    def reference(side):
        def parts():
            passes[side] += 1
            return (r[lo:lo + 1000] for lo in range(0, len(r), 1000))
        return parts

    best = {"grouped": float("inf"), "per_block": float("inf")}
    results = {}
    for _ in range(repeats):
        for side, budget in (("grouped", None), ("per_block", 0)):
            passes[side] = 0
            _sync(dev)
            t = time.perf_counter()
            res = knn_search(q, reference(side), k, device=dev, query_block=query_block, query_group_bytes=budget)
            _sync(dev)
            best[side] = min(best[side], time.perf_counter() - t)
            results[side] = res
    out = {"grouped_seconds": best["grouped"], "per_block_seconds": best["per_block"],
           "grouped_speedup": best["per_block"] / best["grouped"],
           "passes_grouped": passes["grouped"], "passes_per_block": passes["per_block"],
           "same_result": bool(np.array_equal(results["grouped"].indices, results["per_block"].indices)
                               and np.array_equal(results["grouped"].sq, results["per_block"].sq))}
    chunked = {"runs": float("inf"), "per_chunk": float("inf")}
    for _ in range(repeats):
        for side, grouped_chunks in (("runs", True), ("per_chunk", False)):
            passes[side] = 0
            # per chunk: every later chunk looks cached, so each is searched alone, as before
            patch = None if grouped_chunks else mock.patch.object(knn_cache, "_may_be_cached", lambda *a: True)
            seconds, results[side] = time_cached_knn(q, reference(side), k, dev, patch, query_block=query_block)
            chunked[side] = min(chunked[side], seconds)
    out["cached_chunks"] = {"runs_seconds": chunked["runs"], "per_chunk_seconds": chunked["per_chunk"],
                            "runs_speedup": chunked["per_chunk"] / chunked["runs"],
                            "passes_runs": passes["runs"], "passes_per_chunk": passes["per_chunk"],
                            "chunks": len(knn_cache.chunk_ranges(q)),
                            "same_result": bool(np.array_equal(results["runs"], results["per_chunk"])
                                                and np.array_equal(results["runs"], results["grouped"].indices))}
    return out


def profile_diffaudit(q, r, k, dev, top=15, compute="auto", pipeline=None):
    """The search's ``top`` operators by self time (device time on CUDA), from the torch profiler."""
    kw = {} if pipeline is None else {"pipeline": pipeline}
    return profile_ops(lambda: knn_search(q, r, k, device=dev, compute=compute, **kw), dev, top=top)


def time_cdist_topk(q, r, k, dev, qb):
    rt = torch.from_numpy(r.reshape(len(r), -1)).to(dev).float()
    q0 = torch.from_numpy(q[:qb].reshape(-1, rt.shape[1])).to(dev).float()
    torch.topk(torch.cdist(q0, rt), k, dim=1, largest=False)  # warm-up: one block of the real shape
    del q0
    dists, idx = [], []
    _sync(dev)
    t = time.perf_counter()
    for lo in range(0, len(q), qb):
        qt = torch.from_numpy(q[lo:lo + qb].reshape(-1, rt.shape[1])).to(dev).float()
        d = torch.cdist(qt, rt)
        v, i = torch.topk(d, k, dim=1, largest=False)
        dists.append(v.cpu())
        idx.append(i.cpu())
    _sync(dev)
    el = time.perf_counter() - t
    d = torch.cat(dists).double().numpy() / (255.0 * np.sqrt(rt.shape[1]))
    return el, d, torch.cat(idx).numpy()


def faiss_missing() -> str | None:
    """Why faiss cannot be used here, or None when it can."""
    try:
        importlib.import_module("faiss")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken build (missing symbols, CPU flags)
        return f"faiss cannot be imported ({type(exc).__name__}: {exc})"
    return None


def time_faiss(q, r, k):
    import faiss

    index = faiss.IndexFlatL2(q[0].size)
    t = time.perf_counter()
    index.add(np.ascontiguousarray(r.reshape(len(r), -1), dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(q.reshape(len(q), -1), dtype=np.float32), k)
    el = time.perf_counter() - t
    return el, np.sqrt(np.maximum(d, 0) / q[0].size) / 255.0, i


def time_naive_numpy(q, r, k):
    """The naive baseline: the whole (Q, N) float64 distance matrix in numpy, then argpartition."""
    t = time.perf_counter()
    qf = q.reshape(len(q), -1).astype(np.float64)
    rf = r.reshape(len(r), -1).astype(np.float64)
    sq = (qf ** 2).sum(1)[:, None] + (rf ** 2).sum(1)[None] - 2 * qf @ rf.T
    part = np.argpartition(sq, k - 1, axis=1)[:, :k]
    d = np.take_along_axis(sq, part, 1)
    order = np.argsort(d, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    dist = np.sqrt(np.maximum(np.take_along_axis(d, order, 1), 0) / (qf.shape[1] * 255.0 ** 2))
    return time.perf_counter() - t, dist, idx


def brute_check(q, r, res_d, res_i, n):
    """Max |distance error| and fraction of rows with identical ids vs a float64 brute force."""
    sel = np.linspace(0, len(q) - 1, min(n, len(q))).astype(int)
    qf = q[sel].reshape(len(sel), -1).astype(np.float64)
    rf = r.reshape(len(r), -1).astype(np.float64)
    sq = (qf ** 2).sum(1)[:, None] + (rf ** 2).sum(1)[None] - 2 * qf @ rf.T
    k = res_d.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(len(r)), sq.shape), sq), axis=1)[:, :k]
    d = np.sqrt(np.take_along_axis(sq, order, 1) / (qf.shape[1] * 255.0 ** 2))
    return float(np.abs(res_d[sel] - d).max()), float((res_i[sel] == order).all(1).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=2048, help="generations (2^20 in the paper)")
    p.add_argument("--refs", type=int, default=5000, help="training images (50,000 for CIFAR-10)")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--size", type=int, default=32, help="image side (pixels, 3 channels)")
    p.add_argument("--device", default="auto")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 dense peak (H100 SXM: 989)")
    p.add_argument("--peak-int8-tops", type=float, default=None, help="the device's int8 dense peak (H100 SXM: 1979)")
    p.add_argument("--compute", default="auto", help="GEMM kind of the main search (auto, int8, bf16, float32, float64)")
    p.add_argument("--also-compute", default="", help="comma-separated GEMM kinds to time the search with too (e.g. bf16)")
    p.add_argument("--faiss-queries", type=int, default=1024, help="queries given to faiss-cpu (time scaled to all)")
    p.add_argument("--check-queries", type=int, default=256, help="queries checked against a float64 brute force")
    p.add_argument("--query-block", type=int, default=None, help="query block of the cdist and GEMM-only loops")
    p.add_argument("--query-blocks", default="", help="comma-separated query blocks at which to time diffaudit's search again")
    p.add_argument("--without-prefetch", action="store_true",
                   help="time the search again with query blocks read in the main thread (no read-ahead, no pinning)")
    p.add_argument("--profile", action="store_true", help="add the search's most expensive operators (torch profiler)")
    p.add_argument("--unfused", action="store_true",
                   help="time the search again with the int8 GEMM's fused selection turned off (CUDA), beside the default")
    p.add_argument("--waiting", action="store_true",
                   help="time the search again with pipeline=False (host waits inside and between query blocks), beside the default")
    p.add_argument("--cached-chunks", action="store_true",
                   help="time the resumable chunked search verify runs, chunks saved in the background beside in turn")
    p.add_argument("--streamed", action="store_true",
                   help="also time the search against the reference streamed, read once per group of query blocks "
                        "and once per query block")
    p.add_argument("--resident-queries", action="store_true",
                   help="time the search again with the queries already in device memory (no host reads or copies), "
                        "fused and, with --unfused, unfused")
    p.add_argument("--fused-configs", default="",
                   help="time the fused kernel alone on resident operands for each 'BMxBNxBKxGROUPxKEEPxWARPSxSTAGES' "
                        "(';'-separated; e.g. 128x128x128x8x4x8x4)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--skip", default="", help="comma-separated methods to skip (cdist_topk, faiss_cpu, diffaudit_faiss, "
                   "naive_numpy, gemm_only, gemm_resident)")
    p.add_argument("--only", default="", help="run only these methods besides diffaudit (e.g. none, or naive_numpy); "
                   "run twice to compare peak RSS of diffaudit alone and the naive baseline alone")
    p.add_argument("--only-naive", action="store_true", help="run the naive numpy baseline alone (for its peak RSS)")
    p.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    p.add_argument("--cifar-root", default="/work/shared/data/cifar10")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    dev = resolve_device(args.device)
    methods = {"gemm_only", "gemm_resident", "cdist_topk", "faiss_cpu", "diffaudit_faiss", "naive_numpy"}
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip |= methods - set(args.only.split(","))
    q, r, src = make_data(args)
    if args.only_naive:
        t_n, _, _ = time_naive_numpy(q, r, args.k)
        emit({"naive_numpy_seconds": t_n, "queries": len(q), "refs": len(r),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        return 0
    dim = q[0].size
    qb = args.query_block or (max(256, (1 << 28) // len(r)) if dev.type == "cuda" else max(64, (1 << 23) // len(r)))
    out: dict = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "data": src, "queries": len(q), "refs": len(r), "k": args.k, "dim": dim, "torch_threads": torch.get_num_threads(),
                 "seconds": {}, "skipped": {m: "--skip/--only" for m in sorted(methods & skip)}}
    if not {"faiss_cpu", "diffaudit_faiss"} <= skip:
        why = faiss_missing()
        if why:
            for m in ("faiss_cpu", "diffaudit_faiss"):
                if m not in skip:
                    out["skipped"][m] = why
                    skip.add(m)
    flops = 2.0 * len(q) * len(r) * dim
    def rate(kind: str, ops_per_s: float) -> dict:
        """The rate in T operations/s, named for what they are, with its fraction of the peak of its own
        kind: int8 ("tops") against ``--peak-int8-tops``, floating point ("tflops") against the bf16
        ``--peak-tflops`` (int8 operations against a bf16 rate would compare unlike things)."""
        if kind == "int8":
            f = {"tops": ops_per_s / 1e12}
            if args.peak_int8_tops:
                f["fraction_of_int8_peak"] = ops_per_s / 1e12 / args.peak_int8_tops
            return f
        f = {"tflops": ops_per_s / 1e12}
        if args.peak_tflops:
            f["fraction_of_bf16_peak"] = ops_per_s / 1e12 / args.peak_tflops
        return f

    checkpoint(out, "data")
    warm_search(q, r, args.k, dev, compute=args.compute)
    t_da, res = time_diffaudit(q, r, args.k, dev, repeats=args.repeats, compute=args.compute)
    out["seconds"]["diffaudit"] = t_da
    main_kind = res.stats.get("compute")
    out["diffaudit_compute"] = main_kind
    out["diffaudit_fallback_rows"] = res.fallback_rows
    out["diffaudit_fused"] = {"used": bool(res.stats.get("fused")),
                              "recomputed_rows": res.stats.get("fused_recomputed_rows", 0)}
    out["diffaudit_pipeline_redone_blocks"] = res.stats.get("pipeline_redone_blocks", 0)
    err, same = brute_check(q, r, res.distances, res.indices, args.check_queries)
    out["diffaudit_exactness"] = {"max_abs_distance_error": err, "rows_with_identical_ids": same}
    out["diffaudit_rate"] = rate(main_kind, flops / t_da)
    checkpoint(out, "diffaudit")
    if "gemm_only" not in skip:
        t_g, kind = time_gemm_only(q, r, dev, qb, args.compute)
        out["seconds"]["gemm_only"] = t_g
        out["gemm"] = {"dtype": kind, **rate(kind, flops / t_g)}
        checkpoint(out, "gemm_only")
    if "gemm_resident" not in skip:
        t_gr = time_gemm_resident(len(q), r, dev, qb, kind=args.compute)
        out["seconds"]["gemm_resident"] = t_gr
        out["gemm_resident"] = {"dtype": main_kind, "query_block": qb, **rate(main_kind, flops / t_gr)}
        checkpoint(out, "gemm_resident")

    def same(other) -> bool:
        return bool(np.array_equal(other.indices, res.indices) and np.array_equal(other.sq, res.sq))

    for kind in filter(None, args.also_compute.split(",")):
        warm_search(q, r, args.k, dev, compute=kind)
        t_k, res_k = time_diffaudit(q, r, args.k, dev, repeats=args.repeats, compute=kind)
        entry = {"compute": res_k.stats.get("compute"), "seconds": t_k, "same_result": same(res_k),
                 "fallback_rows": res_k.fallback_rows, "diffaudit_speedup_over_it": t_k / t_da}
        if "gemm_resident" not in skip:
            t_kr = time_gemm_resident(len(q), r, dev, qb, kind=kind)
            entry["gemm_resident"] = {"seconds": t_kr, **rate(entry["compute"], flops / t_kr)}
        out.setdefault("diffaudit_by_compute", {})[kind] = entry
        checkpoint(out, f"compute {kind}")
    for qb_try in (int(x) for x in filter(None, args.query_blocks.split(","))):
        warm_search(q, r, args.k, dev, query_block=qb_try, compute=args.compute)
        t_b, res_b = time_diffaudit(q, r, args.k, dev, repeats=args.repeats, query_block=qb_try, compute=args.compute)
        entry = {"seconds": t_b, "same_result": same(res_b)}
        if args.waiting:
            t_w, res_w = time_diffaudit(q, r, args.k, dev, repeats=args.repeats, query_block=qb_try,
                                        compute=args.compute, pipeline=False)
            entry["waiting"] = {"seconds": t_w, "same_result": same(res_w), "pipeline_speedup": t_w / t_b}
        out.setdefault("diffaudit_by_query_block", {})[qb_try] = entry
        checkpoint(out, f"query block {qb_try}")
    if args.waiting:
        t_w, res_w = time_diffaudit(q, r, args.k, dev, repeats=args.repeats, compute=args.compute, pipeline=False)
        out["waiting"] = {"seconds": t_w, "same_result": same(res_w), "pipeline_speedup": t_w / t_da,
                          **rate(res_w.stats.get("compute"), flops / t_w)}
        checkpoint(out, "waiting")
    if args.without_prefetch and hasattr(knn_module, "prefetch"):
        # the same search with the query blocks read and copied in the main thread, as before prefetch
        with mock.patch.object(knn_module, "prefetch", lambda blocks, device, **kw: blocks):
            t_np, res_np = time_diffaudit(q, r, args.k, dev, repeats=args.repeats, compute=args.compute)
        out["without_prefetch"] = {"seconds": t_np, "same_result": same(res_np), "prefetch_speedup": t_np / t_da}
        checkpoint(out, "without prefetch")
    if args.unfused and TorchInt8Backend is not None:
        with mock.patch.object(TorchInt8Backend, "uses_fused", lambda self, *a: False):
            warm_search(q, r, args.k, dev, compute=args.compute)
            t_u, res_u = time_diffaudit(q, r, args.k, dev, repeats=args.repeats, compute=args.compute)
        out["unfused"] = {"seconds": t_u, "same_result": same(res_u), "fused_speedup": t_u / t_da,
                          **rate(res_u.stats.get("compute"), flops / t_u)}
        checkpoint(out, "unfused")
    if args.resident_queries:
        q_dev = torch.from_numpy(q).to(dev)  # blocks already on the device pass the read-ahead unchanged
        sides = {"resident_queries": (False, None)}
        if args.unfused and TorchInt8Backend is not None:
            sides["resident_queries_unfused"] = (True, None)
        if args.waiting:
            sides["resident_queries_waiting"] = (False, False)
        for side, (unfused, pipeline) in sides.items():
            with mock.patch.object(TorchInt8Backend, "uses_fused", lambda self, *a: False) if unfused else nullcontext():
                warm_search(q_dev, r, args.k, dev, compute=args.compute)
                t_r, res_r = time_diffaudit(q_dev, r, args.k, dev, repeats=args.repeats, compute=args.compute,
                                            pipeline=pipeline)
            out[side] = {"seconds": t_r, "same_result": same(res_r), **rate(res_r.stats.get("compute"), flops / t_r)}
            checkpoint(out, side)
        del q_dev
    if args.cached_chunks:
        out["cached_chunks"] = time_cached_chunks(q, r, args.k, dev, repeats=args.repeats)
        checkpoint(out, "cached chunks")
    if args.streamed:
        out["streamed"] = time_streamed(q, r, args.k, dev, repeats=args.repeats, query_block=args.query_block)
        checkpoint(out, "streamed")
    for cfg in parse_fused_configs(args.fused_configs) if knn_fused is not None else []:
        name = "x".join(str(v) for v in (cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.keep,
                                          cfg.num_warps, cfg.num_stages))
        entry = out.setdefault("fused_configs", {}).setdefault(name, {})
        try:
            times, frac = time_fused_resident(len(q), r, dev, args.query_block or 65536, args.k, cfg)
        except Exception as exc:  # a config that does not compile or fit (shared memory): recorded, not fatal
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        else:
            entry.update({"seconds": times, "incomplete_fraction": frac,
                          **{f"{part}_{key}": v for part, t in times.items() for key, v in rate("int8", flops / t).items()}})
        if dev.type == "cuda":  # what the compiler made of it: registers, shared memory, programs per SM
            major, minor = torch.cuda.get_device_capability(dev)
            try:
                entry["compiled"] = knn_fused.compile_report(cfg, dim=dim, arch=10 * major + minor)
            except Exception as exc:  # diagnostic only
                entry["compiled"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        checkpoint(out, f"fused config {name}")
    if args.profile:
        out["profile"] = profile_diffaudit(q, r, args.k, dev, compute=args.compute)
        checkpoint(out, "profile")
        if args.waiting:
            out["profile_waiting"] = profile_diffaudit(q, r, args.k, dev, compute=args.compute, pipeline=False)
            checkpoint(out, "profile waiting")
    if "cdist_topk" not in skip:
        t_c, d_c, i_c = time_cdist_topk(q, r, args.k, dev, qb)
        out["seconds"]["cdist_topk"] = t_c
        out["cdist_vs_exact"] = {"max_abs_distance_error": float(np.abs(d_c - res.distances).max()),
                                 "rows_with_identical_ids": float((i_c == res.indices).all(1).mean())}
        checkpoint(out, "cdist_topk")
    nf = min(len(q), args.faiss_queries)
    scale = len(q) / nf
    if "faiss_cpu" not in skip:
        t_f, d_f, i_f = time_faiss(q[:nf], r, args.k)
        out["seconds"]["faiss_cpu"] = t_f * scale
        out["faiss_vs_exact"] = {"max_abs_distance_error": float(np.abs(d_f - res.distances[:nf]).max()),
                                 "rows_with_identical_ids": float((i_f == res.indices[:nf]).all(1).mean()),
                                 "queries_timed": nf}
    if "diffaudit_faiss" not in skip:
        warm_search(q[:nf], r, args.k, torch.device("cpu"), backend="faiss")
        t_df, res_f = time_diffaudit(q[:nf], r, args.k, torch.device("cpu"), backend="faiss")
        out["seconds"]["diffaudit_faiss"] = t_df * scale
        out["diffaudit_faiss_equals_torch"] = bool(np.array_equal(res_f.indices, res.indices[:nf])
                                                   and np.array_equal(res_f.distances, res.distances[:nf]))
    if "naive_numpy" not in skip:
        if len(q) * len(r) > 5e8:
            out["naive_numpy"] = "skipped: the full distance matrix would exceed 4 GB (use --only-naive)"
            out["skipped"]["naive_numpy"] = "the full distance matrix would exceed 4 GB (use --only-naive)"
        else:
            t_n, d_n, i_n = time_naive_numpy(q, r, args.k)
            out["seconds"]["naive_numpy"] = t_n
            out["naive_vs_exact"] = {"max_abs_distance_error": float(np.abs(d_n - res.distances).max())}
    out["queries_per_second"] = {m: len(q) / s for m, s in out["seconds"].items()}
    out["speedup_of_diffaudit"] = {m: s / t_da for m, s in out["seconds"].items() if m != "diffaudit"}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
