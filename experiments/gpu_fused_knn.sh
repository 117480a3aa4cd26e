#!/usr/bin/env bash
# The kNN's fused int8 product-and-selection kernel (src/diffaudit/distances/knn_fused.py) on a GPU,
# in ONE device call (600 s at most):
#   tests  the CUDA-marked kNN tests (the fused search against the unfused one at default tiles),
#   knn    the exact top-50 of $QUERIES (2^20) CIFAR-sized generations among $REFS (50,000), synthetic: the default
#          search (fused) beside the same search with the fusion turned off, both again with the
#          queries already in GPU memory (no host reads or copies: the GPU's own share), the cuBLAS
#          int8 GEMMs on resident operands, the fused kernel alone for each of $CONFIGS, and a profile.
# Files under $OUT: bench-knn-fused.json (written as it goes: "partial": true and the stage reached
# if it was cut off), gpu-tests.log.
# Run with carry [".whl"] (filled by `bash experiments/gpu_carry.sh`). It last ran in the 39th session (2026-11-25,
# 240 s; results in docs/results/gpu-2026-11-25/). A dry run on a CPU (the kernel
# through Triton's interpreter): TRITON_INTERPRET=1 QUERIES=256 REFS=3000 bash experiments/gpu_fused_knn.sh
set -uo pipefail
T0=$SECONDS
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)  # absolute: the bench runs from bench/
CONFIGS=${CONFIGS:-"128x128x128x8x4x8x3;128x128x128x8x4x8x4;128x128x128x8x4x4x4;128x128x128x8x5x8x4;128x256x128x8x6x8x3;256x128x128x8x4x8x3;128x128x64x8x4x4x5;64x128x128x8x4x4x4"}
source "$(dirname "$0")/_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "(no nvidia-smi)"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
run_gpu_tests "${TEST_LIMIT:-150}" tests/test_knn_fused.py tests/test_knn.py tests/test_knn_exactness.py
rc=$?
echo "tests done after $((SECONDS - T0))s"
cd bench
DIFFAUDIT_BENCH_RESULT="$OUT/bench-knn-fused.json" timeout -k 10 "${KNN_LIMIT:-400}" "$PY" bench_knn.py --synthetic \
    --queries "${QUERIES:-1048576}" --refs "${REFS:-50000}" --k 50 --peak-tflops 989 --peak-int8-tops 1979 --repeats 3 \
    --query-block 21845 --unfused --resident-queries --fused-configs "$CONFIGS" --profile \
    --skip cdist_topk,faiss_cpu,diffaudit_faiss,naive_numpy,gemm_only >"$OUT/bench-knn-fused.stdout" 2>"$OUT/bench-knn-fused.stderr"
echo "bench exit $? after $((SECONDS - T0))s"; tail -5 "$OUT/bench-knn-fused.stderr"
exit $rc
