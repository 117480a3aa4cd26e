"""Pick groups of training examples to duplicate (the paper's Figure 5 in miniature).

    python experiments/make_duplicates.py --data SPEC --subset 1000 --repeats 4,16,64 --group 10 --out DIR

Writes DIR/repeats.txt (`KEY TIMES` lines for `diffaudit train --repeat`), DIR/groups.json
({times: [keys]}, times 1 listing every other example) and, with --baseline N, DIR/baseline.view.json
(N other images of --data: the never-seen set for `verify --baseline`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffaudit.core.seeds import derive_seed, numpy_rng
from diffaudit.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--subset", type=int, default=1000)
    ap.add_argument("--repeats", default="4,16,64")
    ap.add_argument("--group", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--baseline", type=int, default=0, help="also write baseline.view.json: this many other images of --data")
    ap.add_argument("--image-size", type=int, default=None, help="recorded in the baseline view (the size training used)")
    a = ap.parse_args()
    ds = load_dataset(a.data, subset=a.subset)
    times = [int(t) for t in a.repeats.split(",")]
    order = numpy_rng(derive_seed(a.seed, "duplicate-groups")).permutation(len(ds))
    groups: dict[str, list[str]] = {}
    for g, t in enumerate(times):
        groups[str(t)] = [ds.keys[i] for i in order[g * a.group:(g + 1) * a.group]]
    chosen = {k for ks in groups.values() for k in ks}
    groups["1"] = [k for k in ds.keys if k not in chosen]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "repeats.txt").write_text("".join(f"{k} {t}\n" for t in times for k in groups[str(t)]))
    (out / "groups.json").write_text(json.dumps(groups, indent=1))
    if a.baseline:
        from diffaudit.data.view import save_view

        full = load_dataset(a.data)
        members = set(ds.keys)
        others = [k for k in full.keys if k not in members]
        pick = sorted(numpy_rng(derive_seed(a.seed, "baseline")).choice(len(others), a.baseline, replace=False))
        options = {} if a.image_size is None else {"image_size": a.image_size}
        save_view(out / "baseline.view.json", a.data, options, [others[i] for i in pick])
    print(json.dumps({t: len(k) for t, k in groups.items()}))


if __name__ == "__main__":
    main()
