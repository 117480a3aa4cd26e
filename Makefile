# Two entry points (README Quick start): `make demo` runs the audit on the built-in digits
# dataset, `make test` runs the test suite. Both create and reuse ./.venv.
PY ?= python3
# The torch to install first (pip arguments): 2.13.0 by default (a CPU build where the index offers one;
# plain PyPI's Linux wheel is the CUDA build); on a GPU machine e.g.
# `make TORCH=torch demo` (PyPI's newest Linux wheel, a CUDA build) or `make TORCH='torch --index-url URL' demo`.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# $(TORCH) first, so the loose `torch>=2.4` requirement pulls nothing bigger.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffaudit audit --out audit-out

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

.PHONY: install demo test test-slow bench
