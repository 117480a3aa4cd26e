"""How often the fused kNN kernel sends a query back to the unfused product, on real CIFAR-10 data.

The kernel (src/diffaudit/distances/knn_fused.py) keeps the ``keep`` smallest scores of each query
in each tile of ``block_n`` training images; :func:`knn_fused.select` flags a query when some tile
may hide a row better than one of its c = k + extra candidates, and the backend recomputes it
unfused. The rate depends on how a query's near neighbours spread over the tiles: on random data
about c·keep-th powers (docs/performance.md), on real data wherever near neighbours cluster in the
training set's order. This script needs no GPU: it forms the kernel's keys with plain torch
(``knn_fused.reference_keys`` of exact int64 scores) and applies the library's own ``select``.

    python experiments/fused_keep_rate.py --queries 2000 --refs 50000 --k 50

Queries are CIFAR-10 test images with seeded noise (as bench/bench_knn.py makes them), and, with
--copies, a share of them near copies of training images (memorized generations). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_knn import _cifar  # noqa: E402

from diffaudit.distances import knn_fused  # noqa: E402
from diffaudit.distances.knn import default_extra  # noqa: E402


def exact_scores(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """int64 (M, N) ‖r'‖² − 2·q'·r' of int8 rows (float64 products of integers: exact)."""
    return (r.long() ** 2).sum(1)[None] - 2 * (q.double() @ r.double().T).round().long()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--refs", type=int, default=50000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--copies", type=float, default=0.1, help="share of queries that are near copies of training images")
    ap.add_argument("--tiles", default="128:3,128:4,128:5,256:5,256:6", help="block_n:keep pairs")
    ap.add_argument("--cifar-root", default="../shared/data/cifar10")
    ap.add_argument("--block", type=int, default=250, help="queries per emulated block (memory)")
    args = ap.parse_args(argv)
    root = Path(args.cifar_root)
    r_img = _cifar(root, "train", args.refs)
    base = _cifar(root, "test", args.queries)
    rng = np.random.default_rng(0)
    q_img = np.clip(base.astype(np.int16) + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
    n_copies = int(args.copies * len(q_img))
    src = rng.choice(len(r_img), n_copies, replace=False)
    q_img[:n_copies] = np.clip(r_img[src].astype(np.int16) + rng.integers(-4, 5, (n_copies,) + r_img.shape[1:]), 0, 255)
    shift = lambda x: torch.from_numpy(x.reshape(len(x), -1).astype(np.int16) - 128).to(torch.int8)  # noqa: E731
    q, r = shift(q_img), shift(r_img)
    c = args.k + default_extra(args.k)
    out = {"queries": len(q), "refs": len(r), "k": args.k, "c": c, "near_copies": n_copies, "rates": {}}
    pairs = [tuple(int(x) for x in pair.split(":")) for pair in args.tiles.split(",")]
    flagged = {pair: [0, 0] for pair in pairs}  # all queries, near copies
    for lo in range(0, len(q), args.block):
        scores = exact_scores(q[lo:lo + args.block], r)
        for block_n, keep in pairs:
            inc = knn_fused.select(knn_fused.reference_keys(scores, block_n, keep), c)[2]
            flagged[block_n, keep][0] += int(inc.sum())
            flagged[block_n, keep][1] += int(inc[:max(0, n_copies - lo)].sum())
    for (block_n, keep), (all_q, copies) in flagged.items():
        out["rates"][f"{block_n}x{keep}"] = {"recomputed_fraction": all_q / len(q),
                                             "recomputed_fraction_of_copies": copies / max(1, n_copies)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
