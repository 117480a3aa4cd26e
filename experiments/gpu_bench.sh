#!/usr/bin/env bash
# All GPU benchmarks in one lease; JSON into $OUT (or ./bench-out). Needs diffusers on the machine
# (wheels in .whl/ are installed to /tmp/site when present).
set -uo pipefail
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
run() { local name=$1; shift; echo "== $name"; ( cd bench && timeout "${LIMIT:-150}" python3 "$@" ) > "$OUT/$name.json" 2> "$OUT/$name.err"; echo "rc=$?"; cat "$OUT/$name.json"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run sampling bench_sampling.py --preset ddpm-cifar10 --image-size 32 --channels 3 --batch 1024 --steps 50 --repeats 1
run training bench_training.py --preset ddpm-cifar10 --image-size 32 --channels 3 --batch 128 --steps 60 --n 4096
run knn bench_knn.py --synthetic --queries 1048576 --refs 50000 --k 50 --peak-tflops 989 --skip faiss_cpu,diffaudit_faiss,naive_numpy
run loss bench_loss.py --preset ddpm-cifar10 --image-size 32 --channels 3 --n 4096 --models 2 --draws 4 --batch 1024 --baseline-batches 256,1024
run inpaint bench_inpaint.py --preset ddpm-cifar10 --image-size 32 --channels 3 --targets 16 --baseline-targets 2 --n-inpaint 128 --batch 2048 --steps 20 --repeats 1
run filter bench_filter.py --prompts 50 --generations 500 --size 512
run sd bench_sd.py --size 512 --batch 8 --steps 20 --repeats 1
echo "== gpu tests"; python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15
