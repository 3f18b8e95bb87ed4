"""gunicorn settings for the API: uvicorn workers, sized from the environment.

Metrics: every worker process writes its samples under PROMETHEUS_MULTIPROC_DIR and `/metrics` adds them
up, so the directory is set (one per instance), emptied when the master starts, and a dead worker's live
gauges are dropped when it exits.
"""

import multiprocessing
import os
import shutil
import tempfile

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

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                      os.path.join(tempfile.gettempdir(), f"agentic-metrics-api-{port}-{os.getpid()}"))


def on_starting(server):
    """Start with an empty metrics directory: old samples would be counted again."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def child_exit(server, worker):
    """Drop the exited worker's live gauges (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove a metrics directory this master made for itself."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.path.basename(path).endswith(f"-{os.getpid()}"):
        shutil.rmtree(path, ignore_errors=True)
