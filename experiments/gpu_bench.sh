#!/usr/bin/env bash
# All GPU benchmarks and the CUDA-marked tests, in three device calls (each fits one 600 s command):
#
#   bash experiments/gpu_bench.sh 1   # sampling, training, loss           (limits 160 + 160 + 160 s)
#   bash experiments/gpu_bench.sh 2   # inpaint, knn, rerank, filter       (limits 170 + 140 + 60 + 55 s)
#   bash experiments/gpu_bench.sh 3   # stable_diffusion (300 s), then the CUDA-marked tests (up to 150 s)
#
# (PART=N works too.) Each benchmark is killed at its limit and keeps what it measured so far; with pip
# (~10 s) and start-up every call stays under ~510 s. Override a part's limits with LIMITS="name=s,...".
# Files under $OUT (at most 6, within the device's 8): bench-<name>.json per benchmark (written as it
# goes), bench-all.json (this part's results), and in part 3 gpu-tests.log. Needs diffusers on the machine
# (carry .whl: the wheels are installed to /tmp/site) and, for the extraction tests, carry .gpu.
# Exit status of part 3: non-zero when the GPU tests failed, were skipped or timed out.
set -uo pipefail
T0=$SECONDS
PART=${1:-${PART:-}}
case "$PART" in
  1) ONLY=sampling,training,loss; DEFAULT_LIMITS=sampling=160,training=160,loss=160 ;;
  2) ONLY=inpaint,knn,rerank,filter; DEFAULT_LIMITS=inpaint=170,knn=140,rerank=60,filter=55 ;;
  3) ONLY=stable_diffusion; DEFAULT_LIMITS=stable_diffusion=300 ;;
  *) echo "usage: bash experiments/gpu_bench.sh 1|2|3 (one device call each; see the header)" >&2; exit 2 ;;
esac
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
source "$(dirname "$0")/_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "(no nvidia-smi)"
"$PY" bench/run_all.py --only "$ONLY" --limits "${LIMITS:-$DEFAULT_LIMITS}" --table "${TABLE:-auto}" --out-dir "$OUT"
rc=0
if [ "$PART" = 3 ]; then
  left=$((${BUDGET:-565} - (SECONDS - T0)))
  run_gpu_tests $(( left > 150 ? 150 : (left < 30 ? 30 : left) )) tests/test_reliability_determinism.py \
      tests/test_knn.py tests/test_extract.py tests/test_distances.py
  rc=$?
fi
echo "total seconds: $((SECONDS - T0))"
exit $rc
