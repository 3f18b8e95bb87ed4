"""The Celery task: thin, like a web view. It takes ids, and running it twice is harmless."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from events.documents.records import DROP_VECTORS_TASK, INGEST_TASK
from events.money.prices import PriceBook
from events.store.cache_scripts import Bounds
from events.store.clients import sync_client
from events.store.taskmsg import RUN_AGENT_TASK
from events.telemetry import logs, tracing
from settings import Settings
from workers import app
from workers.agents import AGENTS
from workers.agents.rag import default_library
from workers.llm.configured import make_embedder, process_provider
from workers.runner import JobRunner


@functools.cache
def runner() -> JobRunner:
    """One runner per worker process, made after the fork so no connection is shared with the parent."""
    settings = Settings.from_env()
    client = sync_client(settings.redis, socket_timeout=30, connect_timeout=5)
    provider = process_provider()
    return JobRunner(
        client,
        provider,
        AGENTS,
        PriceBook(Path(settings.prices_file)),
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
        job_ttl_s=settings.job_ttl_s,
        stream_ttl_s=settings.stream_ttl_s,
        flush_ms=settings.token_flush_ms,
        worker=f"{socket.gethostname()}-{os.getpid()}",
        cache=Bounds(settings.cache_ttl_s, settings.cache_max_entries, settings.cache_max_bytes),
        embedder=make_embedder(settings, provider),
    )


@setup_logging.connect
def _json_logs(**_: object) -> None:
    """Celery's logs and ours, as one JSON object per line (connecting here stops Celery's own setup)."""
    logs.setup(Settings.from_env().log_level)


@worker_process_init.connect
def _child_started(**_: object) -> None:
    runner.cache_clear()
    process_provider.cache_clear()
    default_library.cache_clear()
    tracing.configure(Settings.from_env(), "worker")  # after the fork: the span export thread is this child's


@worker_process_shutdown.connect
def _child_stopping(**_: object) -> None:
    tracing.shutdown()  # pool processes end without running atexit handlers: send the queued spans now


@app.task(name=RUN_AGENT_TASK, acks_late=True)
def run_agent(job_id: str, attempt: int) -> str:
    """Run attempt `attempt` of job `job_id`."""
    return runner().run(str(job_id), int(attempt))


@app.task(name=INGEST_TASK, acks_late=True)
def ingest_document(user_id: str, doc_id: str) -> str:
    """Extract, chunk, embed and index an uploaded document (idempotent: a ready one is left alone)."""
    return default_library().ingest(str(user_id), str(doc_id))


@app.task(name=DROP_VECTORS_TASK, acks_late=True)
def drop_document_vectors(user_id: str, doc_id: str) -> None:
    """Remove a deleted document's points from the Qdrant server (searches already skip it)."""
    default_library().drop_vectors(str(user_id), str(doc_id))


@app.task(name="agentic.ping", acks_late=False)
def ping(reply_key: str) -> None:
    """A no-op round trip (benchmarks' baseline): answers by pushing to `reply_key`."""
    pipe = runner().client.pipeline(transaction=False)
    pipe.lpush(reply_key, "pong")
    pipe.expire(reply_key, 60)
    pipe.execute()
