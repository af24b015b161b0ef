# Two entry points for a new user: `make run` and `make test`.
# Each creates or updates .venv itself (Python 3.11+ is the only requirement).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
UNAME_S := $(shell uname -s)
# MLX backend: Metal comes with plain mlx on macOS; Linux takes the CPU wheel,
# or CUDA when an NVIDIA driver is present (override: make run MLX_EXTRA=cpu).
ifeq ($(UNAME_S),Darwin)
MLX_EXTRA ?=
else
MLX_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
endif
EXTRAS = $(if $(MLX_EXTRA),$(MLX_EXTRA),)
STAMP  = $(VENV)/.installed-$(MLX_EXTRA)

.PHONY: run test headless bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

PLUGIN_DIRS = $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)$(if $(EXTRAS),$(comma))test]"
	$(foreach d,$(PLUGIN_DIRS),$(BIN)/python -m pip install -q -e $(d) &&) true
	@rm -f $(VENV)/.installed-*; touch $@

comma := ,

install: $(STAMP)

## The main job: the app on the embedded SmolLM2 model.
run: $(STAMP)
	$(BIN)/tui-trainer

## A short headless training run (no TUI).
headless: $(STAMP)
	$(BIN)/tui-trainer train --headless --steps 4 --run-dir runs/headless-$$(date +%Y%m%d-%H%M%S)

## The test suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/rollout.py

clean:
	rm -rf $(VENV) .pytest_cache
