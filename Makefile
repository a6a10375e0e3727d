# Two commands on a fresh clone (see README, Quickstart):
#   make demo   set up a virtualenv and run the main job (glocal info, a worked example, the benchmark)
#   make test   set up the same virtualenv and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a plain `pip install torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,bench,triton,hf

.PHONY: setup demo test bench figures clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(VENV)/bin/glocal info
	$(PY) examples/quickstart.py
	$(VENV)/bin/glocal bench

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/glocal bench

figures: setup
	$(PY) docs/neighborhoods.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
