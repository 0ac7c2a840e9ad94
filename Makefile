# Each target sets up everything it needs on a fresh machine (python3 with venv).
VENV ?= .venv
PYTHON := $(VENV)/bin/python

WORKDIR ?= workdirs/default

.PHONY: test docs train bench lint

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test,dev,prepare,docs]'
	touch $@

test: $(VENV)/installed
	$(PYTHON) -m pytest -q --numprocesses=auto --dist=worksteal

# The documentation site, into docs/_build/html; any warning fails the build.
docs: $(VENV)/installed
	$(PYTHON) -m sphinx -b html -W --keep-going -q docs docs/_build/html

train: $(VENV)/installed
	$(PYTHON) -m experiments.train --config=experiments/configs/default.py --workdir=$(WORKDIR)

bench: $(VENV)/installed
	$(PYTHON) scripts/bench.py

lint: $(VENV)/installed
	$(VENV)/bin/ruff check vae_jax tests experiments scripts docs conftest.py
