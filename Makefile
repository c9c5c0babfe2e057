# Quickstart targets: both work on a fresh machine (they install what is missing).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test demo data bench results docs lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first (the local 2.13.0 build), so nothing later pulls a CUDA build.
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $(STAMP)

setup: $(STAMP)

data:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
	  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist))
	@command -v bible >/dev/null || \
	  (apt-get install -y bible-kjv || (apt-get update && apt-get install -y bible-kjv))

test: setup
	$(PY) -m pytest -q

demo: setup data
	$(PY) -m lightning_ard.app.train experiment=mlp_fashion

bench: setup
	$(PY) -m lightning_ard.bench.step --quick --device cpu --json bench.json

# every speed and memory table of docs/results.md, quick mode (a few minutes on 2 cores): ard-results --full for more
results: setup
	$(PY) -m lightning_ard.bench.results

docs: setup
	$(VENV)/bin/mkdocs build --strict

lint: setup
	$(VENV)/bin/ruff check lightning_ard tests

clean:
	rm -rf $(VENV) site outputs multirun lightning_logs
