"""Authenticate + permission check per request vs a raw Redis GET round trip, in the same run."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from api.permissions import Permission, allowed
from api.users import UserStore
from bench.common import fresh_stack, line, percentile
from events.store import keyspace
from tests.stack import SECRET

SAMPLES = 5000


async def _measure(url: str) -> tuple[list[float], list[float]]:
    client = aioredis.Redis.from_url(url)
    store = UserStore(client, SECRET)
    await store.create_user("bench-auth", "user")
    key, _ = await store.create_key("bench-auth")
    await client.set("bench:plain", "x")
    ours, raw = [], []
    failures = (keyspace.auth_failures(0), "127.0.0.1")  # the middleware reads the address's failures in the same trip
    for _ in range(200):  # warm up
        await store.check_key(key, window_s=60, failures=failures)
        await client.get("bench:plain")
    for _ in range(SAMPLES):
        started = time.perf_counter()
        principal = (await store.check_key(key, window_s=60, failures=failures)).principal
        assert principal is not None and allowed(principal.role, Permission.JOBS_SUBMIT)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        await client.get("bench:plain")
        raw.append(time.perf_counter() - started)
    await client.aclose()
    return ours, raw


def run() -> None:
    """Measure and print."""
    with fresh_stack() as (_, server):
        ours, raw = asyncio.run(_measure(server.url))
    p50, r50 = percentile(ours, 50) * 1e6, percentile(raw, 50) * 1e6
    line(
        "authenticate + permission check, p50",
        f"{p50:.0f} µs",
        f"{r50:.0f} µs redis GET",
        f"{p50 / r50:.2f}x (seed claims < 5 ms)",
    )
    line(
        "authenticate + permission check, p99",
        f"{percentile(ours, 99) * 1e6:.0f} µs",
        f"{percentile(raw, 99) * 1e6:.0f} µs redis GET",
        "",
    )
