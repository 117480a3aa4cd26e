#!/usr/bin/env bash
# All GPU benchmarks in one lease, one JSON file ($OUT/bench.json), then the CUDA-marked tests.
# Needs diffusers on the machine (wheels in .whl/ are installed to /tmp/site when present).
set -uo pipefail
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 bench/run_all.py --timeout "${LIMIT:-170}" | tee "$OUT/bench.json"
echo "== gpu tests"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_reliability_determinism.py tests/test_knn.py \
    tests/test_extract.py tests/test_distances.py 2>&1 | tail -15
