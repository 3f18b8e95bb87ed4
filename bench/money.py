"""Cost benchmarks: price of a call, budget holds through the Lua script, the ledger consumer's rate, and what
reading a month of the ledger costs."""

from __future__ import annotations

import asyncio
import time
import timeit

import redis
import redis.asyncio

from api.cost_service import CostService
from bench.common import fresh_stack, line, median
from events.envelope import Event
from events.money.periods import hour_buckets
from events.money.prices import PriceBook
from events.process.consumer import ConsumerGroup, Handler
from events.process.ledger import BATCH as LEDGER_BATCH
from events.process.ledger import GROUP as LEDGER_GROUP
from events.process.ledger import Ledger, read_usage
from events.store import budget_scripts, keyspace
from events.store.scripts import Scripts

HOLDS = 5000
EVENTS = 20000
MONTH_HOURS = 30 * 24
READS = 30


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
    noop = client.register_script("return 1")  # the baseline: the cheapest script there is, not one of ours
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


def _consumed_per_second(client: redis.Redis, stream: str, handler: Handler) -> float:
    """Events/s of one consumer of `stream` set up as the events process sets up the ledger's."""
    _fill(client, stream)
    group = ConsumerGroup(client, stream, LEDGER_GROUP, "bench", handler, batch=LEDGER_BATCH, block_ms=10)
    group.ensure_group()
    started = time.perf_counter()
    while group.stats.applied < EVENTS:
        group.run_once()
    return EVENTS / (time.perf_counter() - started)


class _Idle:
    """A ledger that reads each entry as the ledger does and then does nothing."""

    decode = staticmethod(read_usage)

    def __call__(self, entries: object) -> None:
        pass


def _ledger_rate(client: redis.Redis) -> tuple[float, float, float]:
    """The ledger consumer's events/s, bare XREADGROUP + XACK's, and the same consumer's with a handler that does
    nothing (what reading, decoding and acking entries cost: the most the ledger could reach)."""
    _fill(client, "bench:raw")
    client.xgroup_create("bench:raw", "raw", id="0")
    started = time.perf_counter()
    while True:
        reply = client.xreadgroup("raw", "c", {"bench:raw": ">"}, count=100)
        if not reply:
            break
        client.xack("bench:raw", "raw", *[entry_id for entry_id, _ in reply[0][1]])
    raw = EVENTS / (time.perf_counter() - started)
    ours = _consumed_per_second(client, keyspace.USAGE_STREAM, Ledger(client))
    idle = _consumed_per_second(client, "bench:idle", _Idle())
    return ours, raw, idle


def _fill_month(client: redis.Redis) -> None:
    """Apply, through the ledger's handler, a month of usage: every hour, 10 users (`r0` among them) on 2 models,
    2 agents and 3 sessions."""
    ledger = Ledger(client)
    now = time.time()
    for hour in range(MONTH_HOURS):
        entries = []
        for i in range(10):
            data = {
                "user_id": f"r{i}",
                "model": ("gpt-4o", "gpt-4o-mini")[i % 2],
                "input_tokens": 100 + i,
                "output_tokens": 20,
                "cost_micros": 450 + i,
                "agent": ("query", "rag")[hour % 2],
                "session_id": f"s{hour % 3}",
                "call": 0,
            }
            ts = now - hour * 3600
            entries.append((f"{int(ts * 1000)}-{i}", Event("usage", f"j{hour}-{i}", 0, ts, 1, data)))
        ledger.apply_events(entries)


def _stats_reads(url: str) -> list[tuple[str, float, float, int]]:
    """For one user (`r0`) and for everyone: the median time of a month's stats (CostService.stats, as
    GET /costs/stats?period=month reads them) and, as its baseline, the bare cost of reading as many buckets:
    HGETALL of one of the owner's buckets, once per bucket the stats read, in one pipeline."""

    async def measure() -> list[tuple[str, float, float, int]]:
        client = redis.asyncio.Redis.from_url(url)
        service = CostService(client, PriceBook())
        now = time.time()
        buckets = hour_buckets(now - 30 * 86400, now)
        found = []
        for who, owner in (("one user", "r0"), ("all", None)):
            await service.stats(owner, "month", None)
            times = []
            for _ in range(READS):
                started = time.perf_counter()
                await service.stats(owner, "month", None)
                times.append(time.perf_counter() - started)
            one = keyspace.ledger_hour(owner or "all", buckets[-2])
            bare = []
            for _ in range(READS):
                pipe = client.pipeline(transaction=False)
                for _ in buckets:
                    pipe.hgetall(one)
                started = time.perf_counter()
                await pipe.execute()
                bare.append(time.perf_counter() - started)
            found.append((who, median(times), median(bare), len(buckets)))
        await client.aclose()
        return found

    return asyncio.run(measure())


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
        ledger, raw, idle = _ledger_rate(client)
        line(
            "ledger consumer events/s",
            f"{ledger:,.0f}/s",
            f"{raw:,.0f}/s XREADGROUP+XACK",
            f"{ledger / raw:.2f}x (no-op handler {idle / raw:.2f}x)",
        )
        _fill_month(client)
        for who, took, bare, buckets in _stats_reads(server.url):
            line(
                f"stats of a month ({who}), median",
                f"{took * 1e3:.2f} ms",
                f"{bare * 1e3:.2f} ms {buckets} x HGETALL",
                f"{took / bare:.2f}x",
            )
        client.close()
