#!/usr/bin/env bash
# The canary curve with and without DP-SGD (CPU, one core per run): a tiny UNet on all 1,797 digits,
# noise canaries inserted 1, 4, 16 and 64 times (4 each), trained plain and with DP-SGD at EPSILONS
# (each copy of a canary a training example of its own), exposure from the loss at t = 100 against
# 64 references, extraction on 512 generations; then `compare` of the plain run with each DP run.
# Resumable: a finished run is not trained again.
set -euo pipefail
OUT=${OUT:-cpu-canaries-dp}
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"  # DA, PY: the .venv's when present
export OMP_NUM_THREADS=1
COMMON=(canaries --data digits --kind noise --repeats 1,4,16,64 --per-repeat 4 --n-reference 64 --preset tiny
        --steps "${STEPS:-3000}" --batch-size 64 --lr 1e-3 --warmup-steps 50 --n-samples 512 --device cpu --quiet)
$DA "${COMMON[@]}" --out "$OUT/plain" &
for eps in ${EPSILONS:-50 8}; do
    $DA "${COMMON[@]}" --dp-epsilon "$eps" --out "$OUT/dp-eps$eps" &
done
wait
for eps in ${EPSILONS:-50 8}; do
    $DA compare "$OUT/plain" "$OUT/dp-eps$eps"
done
