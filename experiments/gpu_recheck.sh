#!/usr/bin/env bash
# After sessions without a GPU: every CUDA-marked test, the audit (the main job) on the GPU, and where
# the compiled Stable Diffusion source spends its GPU time, in ONE device call (600 s at most):
#   tests  every test marked gpu but Ray's (Ray is not carried; limit $TEST_LIMIT, default 150 s),
#   audit  `diffaudit audit --device cuda` on the built-in digits (limit $AUDIT_LIMIT, default 150 s),
#   sd     bench/bench_sd.py at 512 x 512, batch 8, 20 steps, the stock pipeline and the compiled source,
#          each profiled (kernel time by family: convolution, matrix product, attention, ...).
# Files under $OUT: gpu-tests.log, audit-result.json, audit.log, bench-sd-profile.json (written as each
# side finishes), bench-sd-profile.stderr. Run with carry [".whl", ".gpu"] (`bash experiments/gpu_carry.sh`).
set -uo pipefail
T0=$SECONDS
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
source "$(dirname "$0")/_env.sh"
run_gpu_tests "${TEST_LIMIT:-150}" tests --ignore-glob="tests/test_ray_*.py"  # Ray cannot be carried there
rc=$?
echo "tests done after $((SECONDS - T0))s"
A=$(mktemp -d)
timeout -k 10 "${AUDIT_LIMIT:-150}" "$PY" -m diffaudit.cli.main audit --device cuda --out "$A/audit" >"$OUT/audit.log" 2>&1
echo "audit exit $? after $((SECONDS - T0))s"; tail -12 "$OUT/audit.log"
cp "$A/audit/result.json" "$OUT/audit-result.json" 2>/dev/null || echo "(no audit result.json)"
cd bench
DIFFAUDIT_BENCH_RESULT="$OUT/bench-sd-profile.json" timeout -k 10 "${SD_LIMIT:-250}" "$PY" bench_sd.py --size 512 \
    --batch 8 --steps 20 --repeats 2 --peak-tflops 989 --profile --sides diffaudit_source_compiled \
    >/dev/null 2>"$OUT/bench-sd-profile.stderr"
echo "bench exit $? after $((SECONDS - T0))s"; grep -v Warning "$OUT/bench-sd-profile.stderr" | tail -5
exit $rc
