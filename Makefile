# Each target makes its own .venv. torch is pinned (constraints.txt) to the CPU build on disk:
# captum and monai depend on torch, and an unpinned resolve pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
# Editable installs as a link tree in build/ (strict mode): setuptools' default for this layout
# (nxrt.plugins and nxrt.converters live in plugins/ and converters/) is a meta-path finder that
# prints a warning on every install. A new module (or entry point) needs `make` to run the install
# again: touch pyproject.toml.
EDITABLE := --config-settings editable_mode=strict

.PHONY: test demo bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(VENV)/.dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) $(EDITABLE) -e '.[dev]'
	touch $@

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(PIP) $(EDITABLE) -e .
	touch $@

lint: $(VENV)/.dev
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q tests

demo: $(VENV)/.runtime
	$(BIN)/nxrt demo -o demo_out --overwrite

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/bench_gradient.py

clean:
	rm -rf $(VENV) build *.egg-info
