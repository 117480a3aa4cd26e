"""Benchmark: the exact re-rank of the kNN search (issue 3), side by side in one run.

After the approximate GEMM, every query's c = k + extra candidates are re-ranked with exact integer
dot products. Two ways on the same candidates:

- ``chunk256`` (diffaudit before the split): gather the candidates' uint8 rows, convert them to fp32,
  and add fp32 batched GEMVs over chunks of 256 values (256·255² < 2^24 keeps each one exact): 12
  strided GEMVs for a CIFAR image;
- ``split`` (:func:`diffaudit.distances.compute.exact_dots` as the search calls it): gather the rows
  from the GEMM operand the search already holds (bf16 on CUDA, fp32 on the CPU), split the query into
  4-bit halves, one batched GEMM per 4,096 values (255·15·4096 < 2^24);
- ``split_from_uint8``: the split, gathering uint8 rows and converting them (isolates the gather).

All must give the same integers (checked). Prints one JSON object; on an H100 the size of the
2^20 x 50,000 search is ``--queries 1048576 --refs 50000 --k 50`` (re-rank only, no GEMM).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import checkpoint, device_info, emit, timed

from diffaudit.core.device import resolve_device
from diffaudit.core.seeds import numpy_rng
from diffaudit.distances.compute import exact_dots, resolve_compute, to_compute
from diffaudit.distances.knn import default_extra

CHUNK = 256


def chunk256(q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """The previous exact dots: uint8 (B, D), (B, C, D) -> float64 (B, C)."""
    b, c, d = cand.shape
    qf, cf = q.float(), cand.float()
    out = torch.zeros((b, c), dtype=torch.float64, device=q.device)
    for lo in range(0, d, CHUNK):
        hi = min(d, lo + CHUNK)
        out += torch.bmm(cf[:, :, lo:hi], qf[:, lo:hi].unsqueeze(2)).squeeze(2).double()
    return out


def run(q_all, rows_u8, rows_op, sel_all, step, fn, gather_from):
    outs = []
    for lo in range(0, q_all.shape[0], step):
        sel = sel_all[lo:lo + step]
        rows = rows_u8 if gather_from == "uint8" else rows_op
        cand = rows[sel.reshape(-1)].reshape(sel.shape[0], sel.shape[1], -1)
        outs.append(fn(q_all[lo:lo + step], cand))
    return torch.cat(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--refs", type=int, default=5000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--size", type=int, default=32, help="image side (3 channels)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    dev = resolve_device(a.device)
    spec = resolve_compute("auto", dev, cpu_default="float32")
    rng = numpy_rng(a.seed)
    d = a.size * a.size * 3
    c = a.k + default_extra(a.k)
    refs = torch.from_numpy(rng.integers(0, 256, (a.refs, d), dtype=np.uint8)).to(dev)
    ops = to_compute(refs, spec)
    q = torch.from_numpy(rng.integers(0, 256, (a.queries, d), dtype=np.uint8)).to(dev)
    sel = torch.from_numpy(rng.integers(0, a.refs, (a.queries, c))).to(dev)
    step = max(1, (256 << 20) // (c * d * 4))  # the search's re-rank chunk (_RERANK_BYTES)

    ways = {
        "chunk256": (chunk256, "uint8"),
        "split": (exact_dots, "operand"),
        "split_from_uint8": (exact_dots, "uint8"),
    }
    results = {name: run(q, refs, ops, sel, step, fn, src) for name, (fn, src) in ways.items()}
    ref_out = results["chunk256"]
    equal = {n: bool(torch.equal(r, ref_out)) for n, r in results.items()}
    equal_to_int64 = None  # the int64 reference is checked on small runs only (it is (Q, c, D) int64)
    if sel.shape[0] <= 512:
        want = torch.einsum("bcd,bd->bc", refs[sel.reshape(-1)].reshape(*sel.shape, d).long(), q.long()).double()
        equal_to_int64 = bool(torch.equal(ref_out, want))
    result = {
        **device_info(dev),
        "compute": spec.kind,
        "queries": a.queries, "refs": a.refs, "k": a.k, "candidates": c, "dim": d,
        "all_equal": all(equal.values()),
        "equal_to_int64": equal_to_int64,
        "seconds": {},
    }
    checkpoint(result, "results checked")
    # the untimed runs above were each way's warm-up on the real shapes
    for n, (fn, src) in ways.items():
        result["seconds"][n] = timed(lambda fn=fn, src=src: run(q, refs, ops, sel, step, fn, src), dev, a.repeats)
        checkpoint(result, n)
    seconds = result["seconds"]
    result["speedup_of_split"] = {"chunk256": seconds["chunk256"] / seconds["split"],
                                  "split_from_uint8": seconds["split_from_uint8"] / seconds["split"]}
    emit(result)


if __name__ == "__main__":
    main()
