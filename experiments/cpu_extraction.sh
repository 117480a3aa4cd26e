#!/usr/bin/env bash
# Issue 3's experiment at CPU scale (one core, about 15 minutes per run): a tiny UNet on 1,000
# CIFAR-10 images at 16x16 of which groups of 10 are repeated 4, 16 and 64 times, and the control
# on 1,000 distinct images with the same budget; 4,096 DDIM-20 samples each; black-box extract;
# verify (ratio rule) against the training set and 1,000 never-seen images. Resumable.
set -euo pipefail
OUT=${OUT:-cpu-extraction}; mkdir -p "$OUT"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"  # DA, PY: the .venv's when present
STEPS=${STEPS:-6000}; PRESET=${PRESET:-tiny}
D=(--data cifar10 --image-size 16)
export OMP_NUM_THREADS=1
$PY experiments/make_duplicates.py --data cifar10 --subset 1000 --repeats 4,16,64 --group 10 --baseline 1000 --image-size 16 --out "$OUT/dup"
for run in dup control; do
  repeat=(); [ "$run" = dup ] && repeat=(--repeat "$OUT/dup/repeats.txt")
  $DA train "${D[@]}" --subset 1000 "${repeat[@]}" --preset "$PRESET" --steps "$STEPS" --batch-size 32 --lr 1e-3 \
      --warmup-steps 50 --checkpoint-every 1000 --device cpu --out "$OUT/$run/model"
  $DA sample --model "$OUT/$run/model" --n 4096 --steps 20 --shard-size 1024 --device cpu --out "$OUT/$run/samples"
  $DA extract --samples "$OUT/$run/samples" --device cpu --out "$OUT/$run/extract"
  $DA verify --samples "$OUT/$run/samples" "${D[@]}" --subset 1000 --baseline "$OUT/dup/baseline.view.json" \
      --device cpu --out "$OUT/$run/verify"
  $PY experiments/extraction_by_group.py --groups "$OUT/dup/groups.json" --verify "$OUT/$run/verify" \
      --extract "$OUT/$run/extract" --samples "$OUT/$run/samples" "${D[@]}" --subset 1000 --out "$OUT/$run/pairs.png" \
      > "$OUT/$run/by_group.json"
done
