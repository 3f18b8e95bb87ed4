"""GET /monitoring/metrics with 100 custom label series on top of the built-in ones, vs GET /monitoring/live."""

from __future__ import annotations

import time

import httpx

from bench.common import fresh_stack, line, percentile, user_key

SERIES = 100
SAMPLES = 300


def _timed(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    reply = client.get(path)
    elapsed = time.perf_counter() - started
    reply.raise_for_status()
    return elapsed


def run() -> None:
    """Record SERIES label sets, then time scrapes against the liveness probe on the same API."""
    with fresh_stack() as (stack, _):
        stack.events()
        stack.api(workers=2)
        key = user_key(stack, "admin")
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for i in range(SERIES):
                client.post(
                    "/api/v1/monitoring/record", json={"name": "bench_events_total", "labels": {"tenant": f"t{i}"}}
                ).raise_for_status()
            for _ in range(20):  # warm up both gunicorn workers
                _timed(client, "/api/v1/monitoring/metrics")
                _timed(client, "/api/v1/monitoring/live")
            body = client.get("/api/v1/monitoring/metrics").text
            scrape, live = [], []
            for _ in range(SAMPLES):
                scrape.append(_timed(client, "/api/v1/monitoring/metrics"))
                live.append(_timed(client, "/api/v1/monitoring/live"))
    series = sum(1 for row in body.splitlines() if row and not row.startswith("#"))
    p50, l50 = percentile(scrape, 50) * 1e3, percentile(live, 50) * 1e3
    line(
        f"/metrics scrape p50 ({series} series, {len(body) // 1024} KB)",
        f"{p50:.2f} ms",
        f"{l50:.2f} ms GET /live",
        f"{p50 / l50:.1f}x (seed claims < 100 ms)",
    )
    line(
        "/metrics scrape p99",
        f"{percentile(scrape, 99) * 1e3:.2f} ms",
        f"{percentile(live, 99) * 1e3:.2f} ms GET /live",
        "",
    )
