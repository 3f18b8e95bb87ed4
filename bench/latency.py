"""(b) Submit → first SSE event latency vs a raw Celery round trip of a no-op task."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis

from bench.common import celery_app, fresh_stack, line, percentile, user_key
from bench.rawhttp import Connection

SAMPLES = 300


async def _first_event_latencies(port: int, key: str, samples: int, token_lags: list[float]) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"agent_type": "query", "query": "What is 6*7?", "cache": False}  # every job runs: no cache hit, no sharing
    api = await Connection("127.0.0.1", port).open()
    latencies = []
    for i in range(samples + 20):
        started = time.perf_counter()
        status, _, data = await api.request("POST", "/api/v1/jobs", headers, body)
        assert status == 202, data
        job_id = data.split(b'"id": "', 1)[1].split(b'"', 1)[0].decode()
        sse = await Connection("127.0.0.1", port).open()
        assert await sse.open_stream(f"/api/v1/jobs/{job_id}/events", headers) == 200
        await sse.next_event()
        if i >= 20:  # the first ones warm the caches
            latencies.append(time.perf_counter() - started)
        while True:  # read to the end, so the next job never waits in the queue
            etype, data = await sse.next_event()
            if etype == "token" and i >= 20:
                token_lags.append(time.time() - data["ts"])
            if etype in ("done", "error", "cancelled"):
                break
        sse.close()
    api.close()
    return latencies


def _raw_round_trips(redis_url: str, queue: str, samples: int) -> list[float]:
    app = celery_app(redis_url)
    client = redis.Redis.from_url(redis_url)
    latencies = []
    for i in range(samples + 20):
        reply = f"bench:pong:{uuid.uuid4().hex}"
        started = time.perf_counter()
        app.send_task("agentic.ping", args=[reply], queue=queue)
        assert client.blpop([reply], timeout=10)
        if i >= 20:
            latencies.append(time.perf_counter() - started)
    return latencies


def run() -> None:
    """Measure and print."""
    with fresh_stack(OFFLINE_TOKEN_DELAY_MS="0") as (stack, server):
        stack.events()
        stack.worker(concurrency=1)
        stack.api(workers=1)
        key = user_key(stack)
        raw = _raw_round_trips(server.url, stack.env.get("AGENT_QUEUE", "agents"), SAMPLES)
        token_lags: list[float] = []
        ours = asyncio.run(_first_event_latencies(stack.port, key, SAMPLES, token_lags))
    p50, p99 = percentile(ours, 50) * 1000, percentile(ours, 99) * 1000
    r50, r99 = percentile(raw, 50) * 1000, percentile(raw, 99) * 1000
    line(
        "(b) submit -> first SSE event, p50",
        f"{p50:.2f} ms",
        f"{r50:.2f} ms celery rtt",
        f"{p50 / r50:.2f}x (target <= 3x)",
    )
    line("(b) submit -> first SSE event, p99", f"{p99:.2f} ms", f"{r99:.2f} ms celery rtt", f"{p99 / r99:.2f}x")
    t50, t99, tmax = (percentile(token_lags, q) * 1000 for q in (50, 99, 100))
    line(
        "(b) token emitted -> received by client",
        f"p50 {t50:.1f} / p99 {t99:.1f} ms",
        "bound 50 ms",
        f"max {tmax:.1f} ms, {len(token_lags):,} tokens",
    )
