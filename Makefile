# Each target makes its own .venv. torch is pinned (constraints.txt) to the CPU build on disk:
# captum and monai depend on torch, and an unpinned resolve pulls a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
# setuptools prints a notice on every editable install of a package with mapped folders
# (nxrt.plugins and nxrt.converters live in plugins/ and converters/): "Editable installation ...
# be careful with folders ... with the same name as your package". It is not a configuration
# problem (strict mode prints another one), so that one notice is filtered; other warnings show.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: test demo bench lint browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(VENV)/.dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(EDITABLE) $(PIP) -e '.[dev]'
	touch $@

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(EDITABLE) $(PIP) -e .
	touch $@

lint: $(VENV)/.dev
	$(BIN)/ruff check .

# The report tests drive a real browser: Debian's chromium, installed here when it is missing.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium >/dev/null; }

test: lint browser
	$(BIN)/python -m pytest -q tests

demo: $(VENV)/.runtime
	$(BIN)/nxrt demo -o demo_out --overwrite

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/bench_gradient.py

clean:
	rm -rf $(VENV) build *.egg-info
