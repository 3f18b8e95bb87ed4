.DEFAULT_GOAL := help
PY := .venv/bin/python

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install:  ## Debian packages, venv and pip packages (idempotent)
	@bash ops/install.sh

run: install  ## set up and run the whole system (Ctrl-C stops it)
	@bash ops/run.sh

test:  ## set up and run lint and the whole test suite
	@bash ops/install.sh test
	$(PY) -m ruff check .
	$(PY) -m pytest -p no:cacheprovider

lint: install  ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m mypy api events workers settings.py

bench: install  ## run the benchmarks (prints figures beside same-run baselines)
	$(PY) -m bench

.PHONY: help install run test lint bench
