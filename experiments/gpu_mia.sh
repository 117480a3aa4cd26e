#!/usr/bin/env bash
# Issues 4 and 5's experiments in one lease: 8 DDPM UNets ("medium", 9.0M parameters) on random halves
# of 2,000 CIFAR-10 images; loss threshold, LiRA and Strong LiRA at t = 100 (leave-one-out over the 8
# models), the timestep sweep; then the inpainting attack on model 0 (50 members, 50 non-members,
# left-half masks) scored with a shadow that did not train on each target. Resumable.
# Files under $OUT (3, within the device's 8 files of 16 MiB): mia-summary.json (every JSON result:
# per-model timings, the four attacks, the inpainting attack), mia.tar.gz (those and the ROC, sweep and
# inpainting-grid PNGs), roc-strong-lira.png. Rebuilt after each stage and on exit, from $W/collect,
# which outlives the call (so STAGE=attack in a later call on the same machine bundles the timings too).
set -uo pipefail
# The work folder lies outside carried folders: a later call that carries .gpu would replace it.
OUT=${OUT:-mia-out}; W=${WORK:-/tmp/diffaudit-work-mia}; C="$W/collect"; mkdir -p "$OUT" "$W" "$C"
D=${DATA:-.gpu/cifar10-train-000000.tar}
STEPS=${STEPS:-2000}; MODELS=${MODELS:-8}; WORKERS=${WORKERS:-4}; STAGE=${STAGE:-all}
source "$(dirname "$0")/_env.sh"
bundle() { bundle_results "$C" mia; [ -f "$C/roc-strong-lira.png" ] && cp "$C/roc-strong-lira.png" "$OUT/"; true; }
trap bundle EXIT
DATA_FLAGS=(--data "$D" --subset 2000)
t0=$(date +%s)
if [ "$STAGE" = all ] || [ "$STAGE" = train ]; then
  da membership "${DATA_FLAGS[@]}" --models "$MODELS" --seed 0 --out "$W/shadows/membership.npz"
  da shadows "${DATA_FLAGS[@]}" --membership "$W/shadows/membership.npz" --out "$W/shadows" --preset medium \
     --steps "$STEPS" --batch-size 128 --lr 2e-4 --warmup-steps 100 --checkpoint-every 1000 --workers "$WORKERS" --device cuda || exit 1
  echo "shadows seconds: $(( $(date +%s) - t0 ))"
  for k in $(seq -f "%02g" 0 $((MODELS - 1))); do cp "$W/shadows/model-$k/timing.json" "$C/timing-model-$k.json"; done
  bundle
fi
if [ "$STAGE" = all ] || [ "$STAGE" = attack ]; then
  common=("${DATA_FLAGS[@]}" --shadows "$W/shadows" --loss-cache "$W/losses" --device cuda --bootstrap 200)
  da mia "${common[@]}" --attack loss --timesteps 100 --sweep 10,50,100,200,300,500,1000 --out "$W/mia-loss" || exit 1
  da mia "${common[@]}" --attack lira --timesteps 100 --sweep 10,50,100,200,300,500,1000 --out "$W/mia-lira" || exit 1
  da mia "${common[@]}" --attack lira-fixed --timesteps 100 --out "$W/mia-lira-fixed" || exit 1
  da mia "${common[@]}" --attack strong-lira --timesteps 100 --draws 10 --flips --out "$W/mia-strong-lira" || exit 1
  for a in loss lira lira-fixed strong-lira; do cp "$W/mia-$a/result.json" "$C/mia-$a.json"; cp "$W/mia-$a/roc.png" "$C/roc-$a.png"; done
  cp "$W/mia-loss/sweep.png" "$C/sweep-loss.png"; cp "$W/mia-lira/sweep.png" "$C/sweep-lira.png"
  bundle
  echo "mia seconds: $(( $(date +%s) - t0 ))"
  da inpaint --model "$W/shadows/model-00" --shadows "$W/shadows" --membership "$W/shadows/membership.npz" "${DATA_FLAGS[@]}" \
     --targets 50,50 --mask left --n-inpaint "${NINPAINT:-256}" --steps 50 --bf16 --device cuda --out "$W/inpaint" || exit 1
  cp "$W/inpaint/result.json" "$C/inpaint-result.json"; mkdir -p "$C/grids"; ls "$W/inpaint/grids" | head -6 | while read g; do cp "$W/inpaint/grids/$g" "$C/grids/"; done
  echo "total seconds: $(( $(date +%s) - t0 ))"
fi
