#!/usr/bin/env bash
# Issue 3's experiment (the paper's Figure 5 in miniature), end to end with diffaudit's commands:
# the DDPM CIFAR-10 UNet trained on 1,000 CIFAR-10 images of which groups of 10 are repeated
# 4, 16 and 64 times; 4,096 DDIM-100 samples; black-box extract; verify with the ratio rule
# against the training set and against 1,000 never-seen images. Resumable: re-run to continue.
# Files under $OUT (3, within the device's 8 files of 16 MiB): $NAME-summary.json (every JSON
# result: training, timing, extract, verify, by-group counts, bf16 vs fp32), $NAME.tar.gz (those,
# the loss log and pairs.png), $NAME-pairs.png. Rebuilt after each step and on exit, from $W/collect.
# NAME is extraction, or with CONTROL=1 control: the control of the paper's Figure 5, the same 1,000
# images without repeats and the same budget (the bf16 vs fp32 step left out). On an H100 the control
# took about 610 s (training 503 s with compilation, sampling 74 s): one device call of 600 s stops it
# during extract, and a second call on the still-warm machine resumes it.
set -uo pipefail
# The work folder lies outside carried folders: a later call that carries .gpu would replace it.
CONTROL=${CONTROL:-0}; NAME=extraction; [ "$CONTROL" = 1 ] && NAME=control
OUT=${OUT:-extraction-out}; W=${WORK:-/tmp/diffaudit-work-$NAME}; C="$W/collect"; mkdir -p "$OUT" "$W" "$C"
D=${DATA:-.gpu/cifar10-train-000000.tar}
STEPS=${STEPS:-5400}
source "$(dirname "$0")/_env.sh"
bundle() { bundle_results "$C" "$NAME"; [ -f "$C/pairs.png" ] && cp "$C/pairs.png" "$OUT/$NAME-pairs.png"; true; }
trap bundle EXIT
t0=$(date +%s)
"$PY" experiments/make_duplicates.py --data "$D" --subset 1000 --repeats 4,16,64 --group 10 --baseline 1000 --out "$W/dup"
repeat=(--repeat "$W/dup/repeats.txt"); [ "$CONTROL" = 1 ] && repeat=()
da train --data "$D" --subset 1000 "${repeat[@]}" --preset ddpm-cifar10 --steps "$STEPS" --batch-size 128 \
   --lr 2e-4 --warmup-steps 200 --checkpoint-every 900 --compile --device cuda --out "$W/run" || exit 1
t1=$(date +%s); echo "train seconds: $((t1 - t0))"
cp "$W/run/result.json" "$C/train-result.json"; cp "$W/run/timing.json" "$C/train-timing.json"; cp "$W/run/loss_log.jsonl" "$C/"
bundle
da sample --model "$W/run" --n 4096 --steps 100 --fast --micro-batch 1024 --shard-size 1024 --device cuda --out "$W/samples" || exit 1
t2=$(date +%s); echo "sample seconds: $((t2 - t1))"
da extract --samples "$W/samples" --device cuda --out "$W/extract" || exit 1
da verify --samples "$W/samples" --data "$D" --subset 1000 --baseline "$W/dup/baseline.view.json" --device cuda --out "$W/verify" || exit 1
t3=$(date +%s); echo "extract+verify seconds: $((t3 - t2))"
cp "$W/extract/result.json" "$C/extract-result.json"; cp "$W/verify/result.json" "$C/verify-result.json"
bundle
"$PY" experiments/extraction_by_group.py --groups "$W/dup/groups.json" --verify "$W/verify" --extract "$W/extract" \
   --samples "$W/samples" --data "$D" --subset 1000 --out "$C/pairs.png" | tee "$C/by_group.json"
bundle
[ "$CONTROL" = 1 ] && { echo "total seconds: $(( $(date +%s) - t0 ))"; exit 0; }
# bf16 fast path against fp32 on the trained model, same per-image seeds (first 256 generations).
da sample --model "$W/run" --n 256 --steps 100 --micro-batch 256 --shard-size 256 --device cuda --out "$W/samples-fp32" || exit 1
"$PY" - "$W" <<'PY' | tee "$C/bf16_vs_fp32.json"
import json, sys
import numpy as np
from diffaudit.store import SampleStore
w = sys.argv[1]
fast = SampleStore.open(f"{w}/samples").read_shard(0)[0][:256].astype(np.float64) / 255
ref = SampleStore.open(f"{w}/samples-fp32").read_shard(0)[0].astype(np.float64) / 255
l2 = np.sqrt(((fast - ref) ** 2).reshape(256, -1).mean(1))
print(json.dumps({"n": 256, "mean_l2": float(l2.mean()), "max_l2": float(l2.max()), "median_l2": float(np.median(l2))}))
PY
echo "total seconds: $(( $(date +%s) - t0 ))"
