"""Money under faults: a killed ledger consumer loses and doubles nothing; a killed worker leaks no hold;
budgets reset on period boundaries (with an injected clock)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from api.cost_tracker import get_cost_tracker
from events.envelope import Event
from events.process.ledger import GROUP as LEDGER_GROUP
from events.store import keyspace
from settings import Settings
from tests.conftest import create_user
from tests.stack import ROOT, RedisServer, Stack, base_env, wait_for

pytestmark = pytest.mark.slow
PRICES = str(ROOT / "tests" / "data" / "prices.yaml")


def test_ledger_consumer_killed_mid_batch_loses_and_doubles_nothing(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        costs = [(i * 7919) % 1000 + 1 for i in range(6000)]
        pipe = r.pipeline(transaction=False)
        for i, cost in enumerate(costs):
            data = {
                "user_id": "ledger-user",
                "model": "gpt-4o",
                "input_tokens": i % 50,
                "output_tokens": 3,
                "cost_micros": cost,
                "agent": "query",
                "call": 0,
            }
            pipe.xadd(keyspace.USAGE_STREAM, Event("usage", f"j{i}", 0, time.time(), 1, data).to_fields())
        pipe.execute()
        events = stack.events()

        def applied() -> int:
            return int(r.hget(keyspace.ledger_total("ledger-user"), "calls") or 0)

        wait_for(lambda: applied() > 0, timeout=20, what="the ledger to start")
        events.kill()  # SIGKILL, mid-way through the backlog
        assert applied() < len(costs), "the consumer finished before it could be killed; add more events"
        stack.events()

        def drained() -> bool:
            group = next(g for g in r.xinfo_groups(keyspace.USAGE_STREAM) if g["name"] == LEDGER_GROUP)
            return group["lag"] == 0 and group["pending"] == 0

        wait_for(drained, timeout=60, what="the ledger to drain")
        assert applied() == len(costs)
        assert int(r.hget(keyspace.ledger_total("ledger-user"), "cost")) == sum(costs)
        assert int(r.hget(keyspace.ledger_total("ledger-user"), "in")) == sum(i % 50 for i in range(len(costs)))
    finally:
        stack.stop()
        r.close()
        server.stop()


def test_killed_worker_leaks_no_hold_and_all_attempts_are_charged(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, PRICES_FILE=PRICES, OFFLINE_TOKEN_DELAY_MS="100")
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        stack.events()
        stack.api()
        user_id, key = create_user(server.url)
        api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        doomed = stack.worker(concurrency=1, name="doomed")
        job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "Tell me about " + "x " * 80}).json()
        wait_for(
            lambda: int(r.hget(keyspace.job(job["id"]), "cost_micros") or 0) > 0, timeout=30, what="the first charge"
        )
        first_charge = int(r.hget(keyspace.job(job["id"]), "cost_micros"))
        doomed.kill()
        assert r.exists(keyspace.budget_hold(user_id, job["id"]))  # still held while the job is alive
        stack.worker(concurrency=1, name="rescuer")
        done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 60}).json()
        assert done["status"] == "succeeded" and done["attempts"] == 2
        total = int(r.hget(keyspace.job(job["id"]), "cost_micros"))
        assert total > first_charge  # attempt 1's calls stay charged
        wait_for(lambda: not r.exists(keyspace.budget_hold(user_id, job["id"])), what="settlement")
        period = r.keys(f"budget:{{{user_id}}}:p:m*")[0]
        assert int(r.hget(period, "spent:user")) == total
        assert int(r.hget(period, "held:user") or 0) == 0
        api.close()
    finally:
        stack.stop()
        r.close()
        server.stop()


def test_monthly_budget_resets_at_the_month_boundary(redis_server: RedisServer) -> None:
    settings = Settings.from_env(base_env(redis_server.url, PRICES_FILE=PRICES))
    now = [datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp()]
    tracker = get_cost_tracker(settings, clock=lambda: now[0])
    user_id = f"reset-{time.monotonic_ns()}"

    async def scenario() -> tuple[dict, dict]:
        await tracker.service.set_budget(user_id, "user", 10_000, "monthly", 80)
        cost = await tracker.track_usage(model="house-model", input_tokens=1000, output_tokens=1000, user_id=user_id)
        assert cost == 0.009  # 1,000 × $3/M + 1,000 × $6/M
        november = await tracker.check_budget(user_id, 0.002)
        now[0] += 120  # two minutes later it is December
        december = await tracker.check_budget(user_id, 0.002)
        await tracker.close()
        return november, december

    november, december = asyncio.run(scenario())
    assert november["allowed"] is False and november["remaining_usd"] == "0.001000"
    assert december["allowed"] is True and december["remaining_usd"] == "0.010000"
