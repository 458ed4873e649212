# Set-up and the two main commands. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without an NVIDIA GPU the CPU build of torch is installed first (a bare `torch` from PyPI is a
# multi-GB CUDA build). Elsewhere pass TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_CPU ?= torch==2.13.0
TORCH_CPU_INDEX ?=
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
DEMO_DIR ?= ceds-demo
# Extra `ceds demo` options, e.g. make demo DEMO_ARGS="--fresh"
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install demo test lint format clean

$(BIN)/ceds: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77" wheel
ifeq ($(HAS_GPU),yes)
	$(BIN)/python -m pip install -q "torch>=2.4,<3"
else ifneq ($(TORCH_CPU_INDEX),)
	$(BIN)/python -m pip install -q torch --index-url $(TORCH_CPU_INDEX)
else
	$(BIN)/python -m pip install -q "$(TORCH_CPU)"
endif
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/ceds

install: $(BIN)/ceds

demo: install
	$(BIN)/ceds demo --out $(DEMO_DIR) $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (lint and format) on everything, mypy on the library (configured in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build dist *.egg-info
