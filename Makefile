# kdledger: `make demo` runs the quickstart, `make test` runs the tests. Both set up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Another torch for GPU users, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.kdledger-setup

.PHONY: setup datasets browser demo lint test test-all bench clean

FMNIST := /usr/share/datasets/fashion-mnist

setup: $(STAMP) node_modules/.package-lock.json datasets browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# Fashion-MNIST from Debian (for benchmarks and the fmnist scenarios); skipped where apt is not ours.
datasets:
	@if [ -d $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "note: could not install dataset-fashion-mnist; fashion-mnist runs need data.path"; \
	else echo "note: no root apt here; for fashion-mnist install Debian's dataset-fashion-mnist or set data.path"; fi

# Debian's Chromium for the explorer's browser tests (Playwright drives it; its own download host is unreachable)
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: could not install chromium; the browser tests will skip"; \
	else echo "note: no root apt here; install Debian's chromium for the browser tests (they skip without it)"; fi

demo: setup
	$(VENV)/bin/kdledger run simulations/scenarios/quickstart.yaml

# ruff (lint and format) and mypy gate every test run, and so CI
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

test-all: lint
	$(PY) -m pytest -q -m ""

# Accuracy against time of the default method on Fashion-MNIST, with the floor and the ceiling (about an hour on 2 CPU cores)
bench: setup
	$(VENV)/bin/kdledger bench dfkd --dataset fashion-mnist --teacher lenet5-bn --student lenet5-half-bn \
	  --methods "noise,fast,kd" --minutes 1,5,15 --seeds 0 \
	  --loop samples=1000000 --loop steps=3000000 --loop mixup=1.0 --teacher-epochs 5 --out runs/bench-fmnist-main

clean:
	rm -rf runs .pytest_cache
