"""What a worker tells the monitoring: its metrics over HTTP and a heartbeat in Redis.

The main process serves `/metrics` (every pool process's samples, added up) on WORKER_METRICS_PORT and
marks the worker as seen in Redis every few seconds, which `/monitoring/health` and `agentic_workers_up`
read. A pool process that exits has its live gauges dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import redis
from celery.signals import worker_init, worker_process_shutdown, worker_ready, worker_shutdown
from prometheus_client import start_http_server

import workers
from events.store import keyspace
from events.store.clients import sync_client
from events.telemetry import metrics, multiprocess
from settings import Settings

log = logging.getLogger("workers.worker_metrics")

_stop = threading.Event()
_state: dict[str, Any] = {}


def mark_seen(client: Any, hostname: str, now: float) -> None:
    """Record that `hostname` is alive now and forget workers gone for an hour."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keyspace.WORKERS_SEEN, {hostname: now})
    pipe.zremrangebyscore(keyspace.WORKERS_SEEN, "-inf", now - 3600)
    pipe.execute()


def _heartbeat(client: Any, hostname: str) -> None:
    while not _stop.is_set():
        try:
            mark_seen(client, hostname, time.time())
        except redis.RedisError as ex:  # Redis away: try again next round
            log.warning("could not record the worker heartbeat: %s", ex)
        _stop.wait(keyspace.WORKER_BEAT_S)


@worker_init.connect
def _start_metrics(**_: Any) -> None:
    """Serve the pool's metrics (shared through the directory the worker set up at start)."""
    settings = Settings.from_env()
    if not settings.worker_metrics_port:
        return
    try:
        server, _thread = start_http_server(
            settings.worker_metrics_port, settings.worker_metrics_host, registry=metrics.registry()
        )
    except OSError as ex:
        log.error(
            "worker metrics not served: %s:%d is taken (%s); give each worker on a host its own WORKER_METRICS_PORT",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            ex,
        )
        return
    _state["server"] = server
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, server.server_port)


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    settings = Settings.from_env()
    client = sync_client(settings.redis, socket_timeout=5)
    hostname = getattr(sender, "hostname", None) or f"worker@{os.uname().nodename}"
    _state.update(client=client, hostname=hostname)
    threading.Thread(target=_heartbeat, args=(client, hostname), name="worker-seen", daemon=True).start()


@worker_process_shutdown.connect
def _child_exited(pid: int | None = None, **_: Any) -> None:
    multiprocess.process_dead(pid or os.getpid())


@worker_shutdown.connect
def _stopped(**_: Any) -> None:
    _stop.set()
    client, hostname = _state.get("client"), _state.get("hostname")
    if client is not None:
        with contextlib.suppress(redis.RedisError):
            client.zrem(keyspace.WORKERS_SEEN, hostname)
    if "server" in _state:
        _state["server"].shutdown()
    if workers.shared_metrics is not None:
        workers.shared_metrics.remove()
