# Each target sets up everything it needs on a fresh machine (python3 with venv).
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: test lint

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test,dev]'
	touch $@

test: $(VENV)/installed
	$(PYTHON) -m pytest -q

lint: $(VENV)/installed
	$(VENV)/bin/ruff check vae_jax tests
