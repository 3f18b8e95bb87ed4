"""gunicorn settings for the API: uvicorn workers, sized from the environment.

Metrics: every worker process writes its samples to one directory per instance and `/metrics` adds them up;
`on_starting` sets it up explicitly before the workers fork, and a dead worker's live gauges are dropped when it
exits.
"""

import multiprocessing
import os

port = os.environ.get("PORT", "8000")
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{port}"
workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count())))
worker_class = "api.server.ApiWorker"  # uvicorn, without trusting X-Forwarded-For
# SSE streams stay open for minutes; the worker's own timeout must not kill them.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 75
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def on_starting(server):
    """Before the workers fork (and before any metric exists): share their samples through
    PROMETHEUS_MULTIPROC_DIR if set (emptied: old samples would be counted again), else a directory of our own."""
    from events.telemetry import multiprocess

    server.shared_metrics = multiprocess.use_directory(
        os.environ.get(multiprocess.ENV), prefix=f"agentic-metrics-api-{port}-"
    )


def child_exit(server, worker):
    """Drop the exited worker's live gauges (its counters stay in the sums)."""
    from events.telemetry import multiprocess

    multiprocess.process_dead(worker.pid)


def on_exit(server):
    """Remove a metrics directory this master made for itself."""
    server.shared_metrics.remove()
