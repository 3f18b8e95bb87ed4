.DEFAULT_GOAL := help
PY := .venv/bin/python

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install:  ## Debian packages, venv and the pip packages of requirements.lock, the runtime ones (idempotent)
	@bash ops/install.sh

install-dev:  ## install, but requirements-dev.lock: the runtime lock plus the dev extra (tests, linters, uv)
	@bash ops/install.sh dev

# The runtime lock first, then the dev lock constrained by it: a package both name has the same version in each.
lock: install-dev  ## rewrite requirements.lock and requirements-dev.lock from pyproject.toml (LOCK_ARGS=--upgrade for newer versions)
	$(PY) -m uv pip compile pyproject.toml --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --generate-hashes --custom-compile-command "make lock" -q \
		$(LOCK_ARGS) -o requirements.lock
	$(PY) -m uv pip compile pyproject.toml --extra dev -c requirements.lock --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --generate-hashes --custom-compile-command "make lock" -q \
		$(LOCK_ARGS) -o requirements-dev.lock

run: install  ## set up and run the whole system (Ctrl-C stops it)
	@bash ops/run.sh

rolling-restart:  ## restart a running make run's API instances one at a time, each drained first
	@lock="$${VAR_DIR:-var}/run.lock"; pid=$$(head -n1 "$$lock" 2>/dev/null); \
	if [ -z "$$pid" ] || ! kill -0 "$$pid" 2>/dev/null; then echo "no make run is running with VAR_DIR=$${VAR_DIR:-var}"; exit 1; fi; \
	kill -HUP "$$pid" && echo "asked make run (pid $$pid) for a rolling restart; its terminal shows the progress"

test:  ## set up and run lint and the whole test suite
	@bash ops/install.sh test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -p no:cacheprovider

lint: install-dev  ## ruff (lint and format) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy api events workers settings.py

bench: install-dev  ## run the benchmarks (prints figures beside same-run baselines)
	$(PY) -m bench

.PHONY: help install install-dev lock run rolling-restart test lint bench
