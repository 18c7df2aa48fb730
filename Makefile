# cfclassify developer tasks. Everything installs into .venv, so a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install test lint demo bench soak clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install cfclassify with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install ## run the test suite
	$(PY) -m pytest -q

lint: install ## ruff and mypy --strict
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

demo: install ## the whole job on a sample folder against the local stand-in
	bash demo/demo.sh

bench: install ## benchmarks; figures go to bench/RESULTS.md
	$(PY) bench/run.py

soak: install ## the fault suite (kills, fault mix, hostile files)
	$(PY) bench/soak.py

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
