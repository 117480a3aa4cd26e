#!/usr/bin/env bash
# The kNN search's pipeline (src/diffaudit/distances/knn.py, _Caps and _Readback) on a GPU, in ONE
# device call (600 s at most):
#   tests  the CUDA-marked kNN tests, among them test_knn_pipeline.py's: a block's search runs under
#          torch.cuda.set_sync_debug_mode("error"), and the pipelined search equals the waiting one;
#   knn    the exact top-50 of $QUERIES (2^20) CIFAR-sized generations among $REFS (50,000), synthetic:
#          the default search (on CUDA: one query block ahead of its results, no host wait inside a
#          block) beside the same search with pipeline=False (--waiting: host waits inside and between
#          blocks, as through the 39th session), both with the queries on the host and in GPU memory,
#          both again at the query blocks $QUERY_BLOCKS (the default block is 5,368 queries: the fused
#          kernel writes no score matrix, so larger ones fit), and both profiled (host_waits: the
#          host's waits on the GPU); and the resumable chunked search verify runs, each chunk saved in
#          the background while the next is searched, beside saved in turn (--cached-chunks);
#   streamed  $STREAM_QUERIES (2^18) generations against the same reference given as a callable (never
#          cached, as a training set larger than the cache): read once per group of query blocks beside
#          once per block, and the resumable search in one call beside one per chunk (--streamed, 41st
#          session).
# Files under $OUT: bench-knn-pipeline.json and bench-knn-streamed.json (written as they go: "partial":
# true and the stage reached if cut off), gpu-tests.log.
# Run with carry [".whl"] (filled by `bash experiments/gpu_carry.sh`). Not yet run on a GPU (written in the
# 40th session, which had none). A dry run on a CPU (the kernel through Triton's interpreter):
#   TRITON_INTERPRET=1 QUERIES=256 REFS=3000 QUERY_BLOCKS=64,128 bash experiments/gpu_knn_pipeline.sh
set -uo pipefail
T0=$SECONDS
OUT=${OUT:-bench-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)  # absolute: the bench runs from bench/
source "$(dirname "$0")/_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "(no nvidia-smi)"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
run_gpu_tests "${TEST_LIMIT:-150}" tests/test_knn_pipeline.py tests/test_knn_fused.py tests/test_knn.py tests/test_knn_exactness.py
rc=$?
echo "tests done after $((SECONDS - T0))s"
cd bench
DIFFAUDIT_BENCH_RESULT="$OUT/bench-knn-pipeline.json" timeout -k 10 "${KNN_LIMIT:-330}" "$PY" bench_knn.py --synthetic \
    --queries "${QUERIES:-1048576}" --refs "${REFS:-50000}" --k 50 --peak-tflops 989 --peak-int8-tops 1979 --repeats 3 \
    --waiting --resident-queries --query-blocks "${QUERY_BLOCKS:-21845,65536}" --cached-chunks --profile \
    --skip cdist_topk,faiss_cpu,diffaudit_faiss,naive_numpy,gemm_only >"$OUT/bench-knn-pipeline.stdout" 2>"$OUT/bench-knn-pipeline.stderr"
echo "bench exit $? after $((SECONDS - T0))s"; tail -5 "$OUT/bench-knn-pipeline.stderr"
DIFFAUDIT_BENCH_RESULT="$OUT/bench-knn-streamed.json" timeout -k 10 "${STREAM_LIMIT:-90}" "$PY" bench_knn.py --synthetic \
    --queries "${STREAM_QUERIES:-262144}" --refs "${REFS:-50000}" --k 50 --peak-int8-tops 1979 --repeats 2 --streamed \
    --only none >"$OUT/bench-knn-streamed.stdout" 2>"$OUT/bench-knn-streamed.stderr"
echo "streamed bench exit $? after $((SECONDS - T0))s"; tail -3 "$OUT/bench-knn-streamed.stderr"
exit $rc
