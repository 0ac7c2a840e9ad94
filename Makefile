# Each target sets up everything it needs on a fresh machine (python3 with venv).
VENV ?= .venv
PYTHON := $(VENV)/bin/python

WORKDIR ?= workdirs/default

.PHONY: test train bench lint

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test,dev,prepare]'
	touch $@

test: $(VENV)/installed
	$(PYTHON) -m pytest -q --numprocesses=auto --dist=worksteal

train: $(VENV)/installed
	$(PYTHON) -m experiments.train --config=experiments/configs/default.py --workdir=$(WORKDIR)

bench: $(VENV)/installed
	$(PYTHON) scripts/bench.py

lint: $(VENV)/installed
	$(VENV)/bin/ruff check vae_jax tests experiments scripts
