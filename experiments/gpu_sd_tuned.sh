#!/usr/bin/env bash
# Stable Diffusion with inductor's autotuning, in ONE device call (600 s at most):
#   tests  the CUDA-marked fused-kNN tests (tests/test_knn_fused.py),
#   sd     bench/bench_sd.py at 512 x 512, batch $BATCH (default 8), 20 steps: the stock pipeline, the
#          compiled source (`sample --fast --compile`) and the compiled source built again with
#          bench_sd.TUNED_INDUCTOR (max-autotune without CUDA graphs, 1x1 convolutions as matrix
#          products, coordinate-descent tuning, no epilogue fusion); each side's warm-up (compile) seconds.
# Files under $OUT: bench-sd-tuned.json (written as each side finishes: "partial": true if cut off),
# bench-sd-tuned.stderr, gpu-tests.log. Run with carry [".whl"] (`bash experiments/gpu_carry.sh`).
# It last ran in the 39th session (2026-11-25): the tuned side's compilation outlasted SD_LIMIT (480 s), so
# only the other two sides were timed; the stderr lists the autotuning choices it had benchmarked
# (docs/results/gpu-2026-11-25/, docs/performance.md).
set -uo pipefail
T0=$SECONDS
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)  # absolute: the bench runs from bench/
source "$(dirname "$0")/_env.sh"
run_gpu_tests "${TEST_LIMIT:-60}" tests/test_knn_fused.py
rc=$?
echo "tests done after $((SECONDS - T0))s"
cd bench
DIFFAUDIT_BENCH_RESULT="$OUT/bench-sd-tuned.json" timeout -k 10 "${SD_LIMIT:-480}" "$PY" bench_sd.py --size 512 \
    --batch "${BATCH:-8}" --steps 20 --repeats 2 --peak-tflops 989 --tuned \
    --sides diffaudit_source_compiled,diffaudit_source_compiled_tuned >/dev/null 2>"$OUT/bench-sd-tuned.stderr"
echo "bench exit $? after $((SECONDS - T0))s"; grep -v Warning "$OUT/bench-sd-tuned.stderr" | tail -8
exit $rc
