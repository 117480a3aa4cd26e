# Sourced by every experiment script: defaults for the CLI and the interpreter. `make install` puts
# both in the checkout's ./.venv without activating it, so when DA (the diffaudit command) or PY (the
# python) is not set, the .venv's is used where present, else `diffaudit` / `python3` from PATH.
# Set DA=... or PY=... to override.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DA="${DA:-$( [ -x "$ROOT/.venv/bin/diffaudit" ] && echo "$ROOT/.venv/bin/diffaudit" || echo diffaudit)}"
PY="${PY:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}"
