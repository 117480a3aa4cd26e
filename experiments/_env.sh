# Sourced by the GPU experiment scripts (from the repository root).
# - Installs the carried wheels (.whl/, filled by experiments/gpu_carry.sh: diffusers, opacus, webdataset,
#   faiss-cpu and the few of their dependencies the GPU image lacks) into
#   /tmp/site. opacus's wheel also installs top-level `benchmarks` and `examples` packages (its
#   repository's scripts, never imported at run time): they are removed so that they shadow nothing.
# - PYTHONPATH: the checkout's src/ first, then /tmp/site, then whatever PYTHONPATH already held.
# - PY (_venv.sh): the interpreter for everything here, the checkout's .venv/bin/python when present
#   (unless PY is set), else python3.
# - Helpers: `da` (the CLI, "$PY" -m diffaudit.cli.main), `run_gpu_tests`, `bundle_results` (below).
# What comes back from the device's $OUT: at most 8 files of at most 16 MiB each, no deeper than
# $OUT/a/b/file, names of letters, digits, '.', '_' and '-'. Every script here stays within that.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"  # PY: the .venv's python when present, else python3
SITE=
if ls .whl/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    rm -rf /tmp/site/benchmarks /tmp/site/examples
    SITE=/tmp/site
  else
    echo "warning: installing the carried wheels (.whl/) failed" >&2
  fi
fi
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
da() { "$PY" -m diffaudit.cli.main "$@"; }

# run_gpu_tests SECONDS FILE...: the CUDA-marked tests of FILE... within SECONDS, skips listed (-rs),
# the whole log in $OUT/gpu-tests.log. Returns non-zero, and says why on stderr, when a test failed,
# when any test was skipped (e.g. no CUDA, a missing package or data), when none ran, or on time-out.
# The CIFAR-10 tests read shard 0 only: $DIFFAUDIT_CIFAR10, else .gpu/ when it holds the carried shard;
# without a test shard there, the last train images of shard 0 stand in for test images (tests/helpers.py).
run_gpu_tests() {
  local limit=$1; shift
  local log="$OUT/gpu-tests.log" cifar=${DIFFAUDIT_CIFAR10:-} rc summary
  if [ -z "$cifar" ] && [ -f .gpu/cifar10-train-000000.tar ]; then cifar="$PWD/.gpu"; fi
  echo "== gpu tests (limit ${limit}s): $*"
  DIFFAUDIT_CIFAR10="$cifar" DIFFAUDIT_TEST_CIFAR_STAND_IN=1 timeout -k 10 "$limit" "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider "$@" >"$log" 2>&1
  rc=$?
  tail -25 "$log"
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected)|no tests ran' "$log" | tail -1)
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "GPU TESTS TIMED OUT after ${limit}s (see $log)" >&2; return 124
  fi
  if [ "$rc" -ne 0 ]; then
    echo "GPU TESTS FAILED (pytest exit $rc): $summary" >&2; return "$rc"
  fi
  if echo "$summary" | grep -Eq '[0-9]+ skipped' || ! echo "$summary" | grep -Eq '[0-9]+ passed'; then
    echo "GPU TESTS SKIPPED OR NOT RUN: $summary (the reasons are in the 'short test summary' above)" >&2; return 3
  fi
  echo "gpu tests: $summary"
}

# bundle_results DIR NAME: $OUT/NAME-summary.json (every *.json under DIR, keyed by its path there)
# and $OUT/NAME.tar.gz (all of DIR; without *.png if it would exceed 15 MiB), two files whatever DIR holds.
bundle_results() {
  local dir=$1 name=$2
  "$PY" - "$dir" "$OUT/$name-summary.json" <<'PY'
import json, pathlib, sys
d, out = pathlib.Path(sys.argv[1]), {}
for p in sorted(d.rglob("*.json")):
    try:
        out[str(p.relative_to(d))] = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        out[str(p.relative_to(d))] = {"unreadable": str(exc)}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=2) + "\n")
PY
  tar -czf "$OUT/$name.tar.gz" -C "$dir" .
  if [ "$(stat -c %s "$OUT/$name.tar.gz")" -gt $((15 << 20)) ]; then
    echo "warning: $name.tar.gz over 15 MiB: images left out" >&2
    tar -czf "$OUT/$name.tar.gz" -C "$dir" --exclude='*.png' .
  fi
}
