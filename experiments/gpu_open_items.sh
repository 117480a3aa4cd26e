#!/usr/bin/env bash
# The GPU checks and measurements issue 8 still lacks, in ONE device call (600 s at most), most
# important first:
#   tests    the CUDA-marked kNN, distance, extraction, DP-SGD and batch-fit tests (reported, and failing loudly if
#            skipped),
#   stable_diffusion  the stock pipeline against diffaudit's SD source: eager bf16 (what --fast gives),
#            eager channels-last, compiled channels-last (--fast --compile), and compiled with fused q/k/v
#            projections; each side's TFLOP/s and fraction of the bf16 peak,
#   filter   the filter's tiled-l2 graph (500 generations at 512 x 512 per prompt; host and
#            device-resident inputs; pipelined and one by one; the previous paths beside),
#   knn      the exact kNN (2^20 x 50,000) with and without prefetch, beside cdist; profile.
#
# Time budget (seconds): pip ~10, tests at most 90, benchmarks at most 300 + 60 + 100 = 460 (each one
# is killed at its limit and keeps what it measured so far). Override with
# LIMITS="stable_diffusion=...,filter=...,knn=..." and TEST_LIMIT.
#
# Files under $OUT (5, within the device's 8): bench-<name>.json for each benchmark (written as it goes:
# partial results carry "partial": true and the stage reached; errors carry "error" and stderr's tail),
# bench-all.json (rewritten after each benchmark), gpu-tests.log.
# Run with carry [".whl", ".gpu"] (filled by `bash experiments/gpu_carry.sh`): the wheels the GPU image
# lacks, and the CIFAR-10 train shard 0 that the extraction tests read. It last ran in the 28th session
# (2026-11-24, 414 s; results in docs/results/gpu-2026-11-24/). Exit status: non-zero when the GPU tests failed, were skipped or timed out.
set -uo pipefail
T0=$SECONDS
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
TEST_LIMIT=${TEST_LIMIT:-90}
LIMITS=${LIMITS:-stable_diffusion=300,filter=60,knn=100}
source "$(dirname "$0")/_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "(no nvidia-smi)"
run_gpu_tests "$TEST_LIMIT" tests/test_knn.py tests/test_distances.py tests/test_extract.py tests/test_dp.py tests/test_batch_fit.py
rc=$?
echo "tests done after $((SECONDS - T0))s"
"$PY" bench/run_all.py --only stable_diffusion,filter,knn --limits "$LIMITS" --table "${TABLE:-auto}" \
    --out-dir "$OUT"
echo "benchmarks done after $((SECONDS - T0))s; results in $OUT/bench-*.json"
echo "total seconds: $((SECONDS - T0))"
exit $rc
