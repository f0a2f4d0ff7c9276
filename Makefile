# softlabel: the two commands of the README's Quick start, and a few helpers.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= dev,datasets,docs,tensorboard,hf,gguf,submitit

.PHONY: install train test lint format docs bench clean

# (Re)install when the venv is missing or pyproject.toml / constraints.txt changed.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

train: install
	$(VENV)/bin/softlabel-train $(ARGS)

lint: install
	$(VENV)/bin/ruff check softlabel tests benchmarks recipes
	$(VENV)/bin/ruff format --check softlabel tests benchmarks recipes

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

format: install
	$(VENV)/bin/ruff check --fix softlabel tests benchmarks recipes
	$(VENV)/bin/ruff format softlabel tests benchmarks recipes

docs: install
	$(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) benchmarks/loss.py

clean:
	rm -rf $(VENV) outputs multirun site .pytest_cache .ruff_cache
