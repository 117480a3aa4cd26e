#!/usr/bin/env bash
# The canary curve at CPU scale (one core, about 10 minutes): a tiny UNet on 1,000 CIFAR-10 images
# at 16x16, with held-out CIFAR-10 test images inserted as canaries 1, 4, 16 and 64 times (4 each);
# exposure from the loss at t = 100 and extraction checked on 1,024 generations. Resumable.
set -euo pipefail
OUT=${OUT:-cpu-canaries-cifar}
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"  # DA, PY: the .venv's when present
export OMP_NUM_THREADS=1
$DA canaries --data cifar10 --image-size 16 --subset 1000 --kind "${KIND:-heldout}" --canary-pool cifar10-test \
    --repeats 1,4,16,64 --per-repeat 4 --preset tiny --steps ${STEPS:-6000} --batch-size 32 --lr 1e-3 --warmup-steps 50 \
    --checkpoint-every 1000 --n-samples 1024 --device cpu --out "$OUT"
