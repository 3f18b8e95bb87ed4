#!/usr/bin/env bash
# `make run`: Redis (AOF), the API (gunicorn + uvicorn workers), a Celery worker, the events process,
# Flower and Prometheus (when installed; PROMETHEUS=0 leaves it out), all in the foreground under a small
# supervisor (ops/run.py) that restarts a process that exits. Ctrl-C stops them all. Settings come from the
# environment (docs/operations.md); options of the supervisor itself: `bash ops/run.sh --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python ops/run.py "$@"
