#!/usr/bin/env bash
# Membership inference and the inpainting attack at CPU scale (2 cores, minutes): 8 tiny UNets on
# random halves of a small dataset (default: 400 digits); loss threshold, LiRA (online, offline, fixed
# variance) and Strong LiRA at t = 100, the timestep sweep; inpainting of 10 members and 10
# non-members of model 0. Another dataset: DATA="--data cifar10 --image-size 16 --subset 400".
# Resumable: re-running the same command continues where it stopped.
set -euo pipefail
OUT=${OUT:-cpu-mia-out}; mkdir -p "$OUT"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"  # DA, PY: the .venv's when present
read -r -a D <<< "${DATA:---data digits --subset 400}"
export OMP_NUM_THREADS=1
$DA membership "${D[@]}" --models 8 --seed 0 --out "$OUT/shadows/membership.npz"
$DA shadows "${D[@]}" --membership "$OUT/shadows/membership.npz" --out "$OUT/shadows" --preset tiny --steps ${STEPS:-2000} \
    --batch-size 32 --lr 1e-3 --warmup-steps 50 --checkpoint-every 1000 --workers ${WORKERS:-2} --device cpu
common=("${D[@]}" --shadows "$OUT/shadows" --loss-cache "$OUT/losses" --device cpu --bootstrap 200)
$DA mia "${common[@]}" --attack loss --sweep 10,50,100,200,300,500,1000 --out "$OUT/mia-loss"
$DA mia "${common[@]}" --attack lira --sweep 10,50,100,200,300,500,1000 --out "$OUT/mia-lira"
$DA mia "${common[@]}" --attack lira-offline --out "$OUT/mia-lira-offline"
$DA mia "${common[@]}" --attack lira-fixed --out "$OUT/mia-lira-fixed"
$DA mia "${common[@]}" --attack strong-lira --draws 8 --flips --out "$OUT/mia-strong-lira"
$DA mia "${common[@]}" --attack strong-lira-fixed --draws 8 --flips --out "$OUT/mia-strong-lira-fixed"
$DA inpaint --model "$OUT/shadows/model-00" --shadows "$OUT/shadows" --membership "$OUT/shadows/membership.npz" "${D[@]}" \
    --targets 10,10 --mask left --n-inpaint 64 --steps 25 --device cpu --out "$OUT/inpaint"
