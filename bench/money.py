"""Cost benchmarks: price of a call, budget holds through the Lua script, and the ledger consumer's rate."""

from __future__ import annotations

import time
import timeit

import redis

from bench.common import fresh_stack, line
from events.envelope import Event
from events.money.prices import PriceBook
from events.process.consumer import ConsumerGroup
from events.process.ledger import Ledger
from events.store import budget_scripts, keyspace
from events.store.scripts import Scripts

HOLDS = 5000
EVENTS = 20000


def _cost_per_call() -> tuple[float, float]:
    book = PriceBook()
    book.cost_micros("gpt-4o", 1000, 500)  # warm the price cache
    runs = 50_000
    ours = min(timeit.repeat(lambda: book.cost_micros("gpt-4o", 1000, 500, 200), number=runs, repeat=3)) / runs
    raw = min(timeit.repeat(lambda: (1000 * 2.5 + 500 * 10.0) / 1e6, number=runs, repeat=3)) / runs
    return ours * 1e6, raw * 1e6


def _holds_per_second(client: redis.Redis) -> tuple[float, float]:
    scripts = Scripts(client)
    user = "bench-holds"
    client.hset(
        keyspace.budget_config(user), "user", '{"limit_micros": 1000000000000, "period": "monthly", "alert_pct": 80}'
    )
    now = time.time()
    started = time.perf_counter()
    for i in range(HOLDS):
        scripts.run(
            budget_scripts.hold(
                user_id=user,
                job_id=f"j{i}",
                amount_micros=1000,
                scopes=["user", "session:s", "agent:query"],
                now=now,
                expires_at=now + 600,
            )
        )
    ours = HOLDS / (time.perf_counter() - started)
    noop = client.register_script("return 1")
    noop()
    started = time.perf_counter()
    for _ in range(HOLDS):
        noop(keys=[keyspace.budget_config(user)], args=[1])
    raw = HOLDS / (time.perf_counter() - started)
    return ours, raw


def _fill(client: redis.Redis, stream: str) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(EVENTS):
        data = {
            "user_id": f"u{i % 50}",
            "model": "gpt-4o",
            "input_tokens": 100,
            "output_tokens": 20,
            "cost_micros": 450,
            "agent": "query",
            "session_id": f"s{i % 7}",
            "call": 0,
        }
        pipe.xadd(stream, Event("usage", f"j{i}", 0, time.time(), 1, data).to_fields())
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def _ledger_rate(client: redis.Redis) -> tuple[float, float]:
    _fill(client, "bench:raw")
    client.xgroup_create("bench:raw", "raw", id="0")
    started = time.perf_counter()
    while True:
        reply = client.xreadgroup("raw", "c", {"bench:raw": ">"}, count=100)
        if not reply:
            break
        client.xack("bench:raw", "raw", *[entry_id for entry_id, _ in reply[0][1]])
    raw = EVENTS / (time.perf_counter() - started)
    _fill(client, keyspace.USAGE_STREAM)
    group = ConsumerGroup(client, keyspace.USAGE_STREAM, "ledger", "bench", Ledger(client), block_ms=10)
    group.ensure_group()
    started = time.perf_counter()
    while group.stats.applied < EVENTS:
        group.run_once()
    ours = EVENTS / (time.perf_counter() - started)
    return ours, raw


def run() -> None:
    """Measure and print."""
    ours, raw = _cost_per_call()
    line(
        "cost of one call (PriceBook.cost_micros)",
        f"{ours:.2f} µs",
        f"{raw:.3f} µs float math",
        "(seed claims < 10 ms)",
    )
    with fresh_stack() as (_, server):
        client = redis.Redis.from_url(server.url)
        held, noop = _holds_per_second(client)
        line(
            "budget holds/s (hold.lua, 3 scopes)",
            f"{held:,.0f}/s",
            f"{noop:,.0f}/s EVALSHA no-op",
            f"{held / noop:.2f}x",
        )
        ledger, raw = _ledger_rate(client)
        line("ledger consumer events/s", f"{ledger:,.0f}/s", f"{raw:,.0f}/s XREADGROUP+XACK", f"{ledger / raw:.2f}x")
        client.close()
