#!/usr/bin/env bash
# All GPU benchmarks in one lease, one JSON file ($OUT/bench.json), then the CUDA-marked tests.
# Needs diffusers on the machine (wheels in .whl/ are installed to /tmp/site when present).
set -uo pipefail
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
source "$(dirname "$0")/_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 bench/run_all.py --timeout "${LIMIT:-170}" | tee "$OUT/bench.json"
echo "== gpu tests"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_reliability_determinism.py tests/test_knn.py \
    tests/test_extract.py tests/test_distances.py 2>&1 | tail -15
