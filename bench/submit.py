"""(a) Jobs submitted per second through the HTTP API vs raw Celery apply_async from one process."""

from __future__ import annotations

import asyncio
import time

from bench.common import celery_app, fresh_stack, line, user_key
from bench.rawhttp import Connection

REQUESTS = 6000
CONNECTIONS = 48
RAW_TASKS = 4000


async def _http_rate(port: int, key: str, total: int, connections: int) -> tuple[float, int]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"agent_type": "query", "query": "What is 6*7?", "cache": False}  # every job runs: no cache hit, no sharing
    conns = [await Connection("127.0.0.1", port).open() for _ in range(connections)]
    remaining = total
    failures = 0

    async def drive(conn: Connection) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            status, _, _ = await conn.request("POST", "/api/v1/jobs", headers, body)
            failures += status != 202

    await asyncio.gather(*(drive(c) for c in conns[: min(connections, 8)]))  # warm-up round
    remaining = total
    started = time.perf_counter()
    await asyncio.gather(*(drive(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return total / elapsed, failures


def _raw_rate(redis_url: str, total: int) -> float:
    app = celery_app(redis_url)
    for _ in range(200):  # warm the producer pool
        app.send_task("agentic.ping", args=["bench:void"], queue="bench-raw")
    started = time.perf_counter()
    for _ in range(total):
        app.send_task("agentic.ping", args=["bench:void"], queue="bench-raw")
    return total / (time.perf_counter() - started)


def run() -> None:
    """Measure and print."""
    with fresh_stack() as (stack, server):
        stack.api(workers=2)
        key = user_key(stack)
        http, failures = asyncio.run(_http_rate(stack.port, key, REQUESTS, CONNECTIONS))
        raw = _raw_rate(server.url, RAW_TASKS)
    ratio = http / raw
    line(
        "(a) submits/s, HTTP API (2 uvicorn workers)",
        f"{http:,.0f}/s",
        f"{raw:,.0f}/s apply_async",
        f"{ratio:.2f}x (target >= 0.5x){'' if not failures else f', {failures} non-202'}",
    )
