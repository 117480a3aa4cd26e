"""Extraction against the number of duplicates: per group, how many training images a verify
(and, optionally, a black-box extract) result found. Prints JSON; writes a PNG of pairs.

    python experiments/extraction_by_group.py --groups DIR/groups.json --verify VERIFY_DIR \
        [--extract EXTRACT_DIR] --samples STORE --data SPEC --subset 1000 --out pairs.png
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from diffaudit.core.io import read_json
from diffaudit.data import load_dataset
from diffaudit.store import read_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--groups", required=True)
    ap.add_argument("--verify", required=True)
    ap.add_argument("--extract", default=None)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None, help="the size training used (--image-size)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    groups = json.load(open(a.groups))
    v = read_json(f"{a.verify}/result.json")
    extracted_keys = {e.get("train_key") for e in v.get("extracted") or []}
    out = {"n_samples": v.get("n_samples"), "unique_extracted": v.get("unique_extracted"),
           "baseline_unique_extracted": v.get("baseline_unique_extracted"), "by_repeats": {}}
    blackbox_keys = set()
    if a.extract:
        # A black-box clique counts for the training image nearest to its medoid, if verify matched that medoid.
        e = read_json(f"{a.extract}/result.json")
        by_sample = {x["sample"]: x.get("train_key") for x in v.get("extracted") or []}
        for grp in e.get("groups", []):
            members = set(grp.get("members", []))
            keys = {by_sample[s] for s in members if s in by_sample}
            blackbox_keys |= keys
        out["blackbox_cliques"] = len(e.get("groups", []))
    for t, keys in sorted(groups.items(), key=lambda kv: int(kv[0])):
        row = {"n": len(keys), "extracted": sum(k in extracted_keys for k in keys)}
        if a.extract:
            row["found_by_blackbox_clique"] = sum(k in blackbox_keys for k in keys)
        out["by_repeats"][t] = row
    print(json.dumps(out, indent=1))
    if a.out and v.get("extracted"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        samples = read_samples(a.samples, lazy=True)
        data = load_dataset(a.data, subset=a.subset, image_size=a.image_size)
        s_idx, d_idx = samples.index_of(), data.index_of()
        pairs = sorted(v["extracted"], key=lambda x: x["l2"])[:16]
        fig, ax = plt.subplots(2, len(pairs), figsize=(1.2 * len(pairs), 2.6))
        ax = np.atleast_2d(ax).reshape(2, -1)
        rep = {k: t for t, ks in groups.items() for k in ks}
        for j, p in enumerate(pairs):
            ax[0, j].imshow(samples.images[s_idx[p["sample"]]].squeeze())
            ax[1, j].imshow(data.images[d_idx[p["train_key"]]].squeeze())
            ax[0, j].set_title(f"x{rep.get(p['train_key'], '?')}\n{p['l2']:.3f}", fontsize=7)
            for r in (0, 1):
                ax[r, j].axis("off")
        fig.suptitle("generation (top) vs training image (bottom), repeats and l2", fontsize=8)
        fig.savefig(a.out, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
