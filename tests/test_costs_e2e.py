"""Costs end to end: prices, holds that never overspend, the ledger, and the cost endpoints over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from events.envelope import Event
from events.money.amounts import micros_to_usd
from events.money.forecast import forecast
from events.money.periods import period_bounds
from events.store import keyspace
from tests.conftest import create_user
from tests.stack import ROOT, RedisServer, Stack, wait_for

PRICES = str(ROOT / "tests" / "data" / "prices.yaml")


@pytest.fixture(scope="module")
def money_stack(logdir: Path) -> Iterator[tuple[Stack, redis.Redis]]:
    """A stack whose offline model costs money, so budgets and holds bite."""
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, PRICES_FILE=PRICES, OFFLINE_TOKEN_DELAY_MS="2", HOLD_TTL_S="10")
    stack.events(wait=False)
    stack.worker(concurrency=2, wait=False)
    stack.api(workers=2, wait=False)
    stack.ready()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    yield stack, client
    client.close()
    stack.stop()
    server.stop()


_open: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client_for(stack: Stack, role: str = "user") -> tuple[str, httpx.Client]:
    user_id, key = create_user(stack.env["REDIS_URL"], role)
    client = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    _open.append(client)
    return user_id, client


def test_seed_price_example_through_track(money_stack) -> None:
    stack, _ = money_stack
    _, admin = client_for(stack, "admin")
    user_id, _ = client_for(stack)
    resp = admin.post(
        "/api/v1/costs/track", json={"user_id": user_id, "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["cost_usd"] == "0.007500" and resp.json()["cost_micros"] == 7500
    assert resp.json()["price_source"].startswith("genai-prices")


def test_unknown_model_is_refused_with_how_to_price_it(money_stack) -> None:
    stack, _ = money_stack
    _, admin = client_for(stack, "admin")
    user_id, _ = client_for(stack)
    resp = admin.post(
        "/api/v1/costs/track",
        json={"user_id": user_id, "model": "no-such-model-9", "input_tokens": 1, "output_tokens": 1},
    )
    assert resp.status_code == 400 and resp.json()["code"] == "unpriced_model"
    assert "no-such-model-9" in resp.json()["description"] and "prices.yaml" in resp.json()["description"]


def test_a_job_is_charged_and_its_hold_settled(money_stack) -> None:
    stack, r = money_stack
    user_id, api = client_for(stack)
    job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "What is 2+2?", "max_tokens": 64}).json()
    assert float(job["hold_usd"]) > 0
    done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()
    assert done["status"] == "succeeded"
    cost = int(r.hget(keyspace.job(job["id"]), "cost_micros"))
    assert cost > 0 and done["cost_usd"] == f"{cost / 1e6:.6f}"
    assert done["usage"]["cost_usd"] == done["cost_usd"]
    wait_for(lambda: not r.exists(keyspace.budget_hold(user_id, job["id"])), what="settlement")
    wait_for(lambda: int(r.hget(keyspace.ledger_total(user_id), "cost") or 0) == cost, what="the ledger")


def test_concurrent_submits_never_overspend_and_leave_no_hold(money_stack) -> None:
    stack, r = money_stack
    user_id, api = client_for(stack)
    _, admin = client_for(stack, "admin")
    limit_usd = "0.060000"
    assert (
        admin.post(
            "/api/v1/costs/budget", json={"user_id": user_id, "limit_usd": limit_usd, "period": "monthly"}
        ).status_code
        == 200
    )
    body = {"agent_type": "query", "query": "What is 6*7?", "max_tokens": 64}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=stack.url, headers=dict(api.headers), timeout=60, limits=httpx.Limits(max_connections=200)
        ) as client:
            return await asyncio.gather(*(client.post("/api/v1/jobs", json=body) for _ in range(200)))

    answers = asyncio.run(flood())
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    rejected = [a for a in answers if a.status_code != 202]
    assert accepted and rejected
    for answer in rejected:
        assert answer.status_code == 402, answer.text
        error = answer.json()
        assert error["code"] == "budget_exceeded" and error["blocked_by"] in ("running_jobs", "spent")
        assert {"spent_usd", "held_usd", "remaining_usd", "hold_usd", "limit_usd"} <= set(error)
    # Each admitted job held its first call; a later call that no longer fits stops it (a hold per model call).
    ended = [api.get(f"/api/v1/jobs/{job_id}", params={"wait": 60}).json() for job_id in accepted]
    assert all(e["status"] == "succeeded" or e["error"]["code"] == "budget_exhausted" for e in ended)
    wait_for(lambda: not r.keys(f"budget:{{{user_id}}}:hold:*"), timeout=30, what="every hold settled")
    [budget] = api.get("/api/v1/costs/budget").json()["budgets"]
    spent = sum(int(r.hget(keyspace.job(j), "cost_micros") or 0) for j in accepted)
    assert budget["spent_micros"] == spent <= budget["limit_micros"]
    assert budget["held_micros"] == 0
    assert not [m for m in r.zrange(keyspace.HOLDS_INDEX, 0, -1) if m.startswith(f"{user_id}\t")]


def test_budget_endpoint_validates_and_needs_admin(money_stack) -> None:
    stack, _ = money_stack
    user_id, api = client_for(stack)
    assert api.post("/api/v1/costs/budget", json={"user_id": user_id, "limit_usd": 1}).status_code == 403
    _, admin = client_for(stack, "admin")
    for bad in (
        {"user_id": user_id, "limit_usd": -1},
        {"user_id": user_id, "limit_usd": "abc"},
        {"user_id": user_id, "limit_usd": 1, "period": "hourly"},
        {"user_id": user_id, "limit_usd": 1, "scope": "planet"},
        {"user_id": user_id, "limit_usd": 1, "scope": "session"},
        {"limit_usd": 1},
    ):
        resp = admin.post("/api/v1/costs/budget", json=bad)
        assert resp.status_code == 400, (bad, resp.text)
    ok = admin.post(
        "/api/v1/costs/budget",
        json={
            "user_id": user_id,
            "scope": "agent",
            "agent": "query",
            "limit_usd": "2.5",
            "period": "daily",
            "alert_pct": 50,
        },
    )
    assert ok.status_code == 200 and ok.json()["budget"]["limit_usd"] == "2.500000"
    assert (
        admin.post(
            "/api/v1/costs/budget", json={"user_id": user_id, "scope": "agent", "agent": "query", "limit_usd": None}
        ).json()["removed"]
        is True
    )


def test_cost_read_endpoints_answer_for_the_caller_only(money_stack) -> None:
    stack, _ = money_stack
    user_id, api = client_for(stack)
    other_id, _ = client_for(stack)
    for path in (
        "/api/v1/costs/stats",
        "/api/v1/costs/forecast",
        "/api/v1/costs/recommendations",
        "/api/v1/costs/models",
        "/api/v1/costs/health",
        f"/api/v1/costs/usage/{user_id}",
        "/api/v1/costs/budget",
    ):
        assert api.get(path).status_code == 200, path
    assert api.get(f"/api/v1/costs/usage/{other_id}").status_code == 404
    assert api.get("/api/v1/costs/stats", params={"user_id": other_id}).status_code == 404
    assert api.get("/api/v1/costs/stats", params={"group_by": "user"}).status_code == 403
    assert api.get("/api/v1/costs/stats", params={"period": "year"}).status_code == 400
    models = {m["model"]: m for m in api.get("/api/v1/costs/models").json()["models"]}
    assert "offline" in models and "gpt-4o" in models


def add_usage(r: redis.Redis, user_id: str, ts: float, **data: object) -> None:
    fields = {
        "user_id": user_id,
        "model": "gpt-4o",
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_micros": 0,
        "agent": "query",
        "call": 0,
        **data,
    }
    r.xadd(keyspace.USAGE_STREAM, Event("usage", "synthetic", 0, ts, 1, fields).to_fields())


def test_forecast_on_a_synthetic_history_matches_the_model(money_stack) -> None:
    stack, r = money_stack
    user_id, api = client_for(stack)
    now = time.time()
    today = datetime.fromtimestamp(now, UTC).date()
    for days_ago in range(10):  # a ramp: 10,000 micros ten days ago, up by 1,000 a day
        noon = datetime(today.year, today.month, today.day, 12, tzinfo=UTC) - timedelta(days=days_ago)
        add_usage(r, user_id, min(noon.timestamp(), now), cost_micros=10_000 + 1_000 * (9 - days_ago))
    wait_for(lambda: int(r.hget(keyspace.ledger_total(user_id), "calls") or 0) == 10, what="the ledger")
    got = api.get("/api/v1/costs/forecast").json()
    history = [(today - timedelta(days=13 - i), 0 if i < 4 else 10_000 + 1_000 * (i - 4)) for i in range(14)]
    _, end = period_bounds("monthly", now)
    spent = sum(c for d, c in history if d >= today.replace(day=1))
    want = forecast(history, today=today, period_end=end - timedelta(days=1), limit_micros=None, spent_micros=spent)
    assert got["method"] == want["method"] == "ols_daily_14d"
    assert got["slope_micros_per_day"] == want["slope_micros_per_day"]
    assert got["projected_remaining_usd"] == micros_to_usd(want["projected_remaining_micros"])
    assert got["interval_high_usd"] == micros_to_usd(want["interval_high_micros"])
    assert got["history_days"] == 14 and got["days_until_exhausted"] is None


def test_recommendations_from_real_usage_give_the_expected_savings(money_stack) -> None:
    stack, r = money_stack
    user_id, api = client_for(stack)
    now = time.time()
    add_usage(r, user_id, now, model="gpt-4o", input_tokens=1_000_000, output_tokens=100_000, cost_micros=3_500_000)
    for _ in range(3):
        add_usage(r, user_id, now, model="offline", cost_micros=1_000, query_hash="q-same")
    wait_for(lambda: int(r.hget(keyspace.ledger_total(user_id), "calls") or 0) == 4, what="the ledger")
    got = api.get("/api/v1/costs/recommendations").json()
    by_kind = {item["kind"]: item for item in got["recommendations"]}
    swap = by_kind["model_swap"]
    # gpt-4o-mini: 1M × $0.15/M + 100k × $0.60/M = $0.21, against $3.50 on gpt-4o
    assert swap["suggested_model"] == "gpt-4o-mini" and swap["savings_micros"] == 3_290_000
    assert swap["savings_usd"] == "3.290000"
    assert by_kind["cache_repeats"]["savings_micros"] == 2_000  # two of three identical runs
    assert got["total_savings_usd"] == "3.292000"
    assert [i["kind"] for i in got["recommendations"]] == ["model_swap", "cache_repeats"]


def test_stats_group_spend_by_model_and_admins_see_everyone(money_stack) -> None:
    stack, r = money_stack
    user_id, api = client_for(stack)
    _, admin = client_for(stack, "admin")
    now = time.time()
    add_usage(r, user_id, now, model="gpt-4o", input_tokens=10, output_tokens=5, cost_micros=75)
    add_usage(r, user_id, now, model="house-model", input_tokens=10, output_tokens=5, cost_micros=60)
    wait_for(lambda: int(r.hget(keyspace.ledger_total(user_id), "calls") or 0) == 2, what="the ledger")
    stats = api.get("/api/v1/costs/stats", params={"period": "day", "group_by": "model"}).json()
    assert stats["cost_micros"] == 135 and stats["input_tokens"] == 20 and stats["calls"] == 2
    assert [(g["key"], g["cost_micros"]) for g in stats["groups"]] == [("gpt-4o", 75), ("house-model", 60)]
    everyone = admin.get("/api/v1/costs/stats", params={"period": "day", "group_by": "user"}).json()
    assert any(g["key"] == user_id and g["cost_micros"] == 135 for g in everyone["groups"])
    usage = admin.get(f"/api/v1/costs/usage/{user_id}").json()
    assert usage["all_time"]["cost_usd"] == "0.000135"


def test_soft_alert_fires_once_when_spend_crosses_the_threshold(money_stack) -> None:
    stack, r = money_stack
    user_id, _ = client_for(stack)
    _, admin = client_for(stack, "admin")
    admin.post("/api/v1/costs/budget", json={"user_id": user_id, "limit_usd": "0.010000", "alert_pct": 50})
    before = r.xlen(keyspace.ALERTS_STREAM) if r.exists(keyspace.ALERTS_STREAM) else 0
    track = {"user_id": user_id, "model": "house-model", "input_tokens": 1000, "output_tokens": 0}  # $0.003
    for _ in range(3):
        assert admin.post("/api/v1/costs/track", json=track).status_code == 201
    alerts = [f for _, f in r.xrange(keyspace.ALERTS_STREAM)][before:]
    mine = [json.loads(f["data"]) for f in alerts if json.loads(f["data"])["user_id"] == user_id]
    assert len(mine) == 1 and mine[0]["spent_micros"] == 6_000 and mine[0]["limit_micros"] == 10_000


def test_a_budget_set_while_jobs_wait_in_the_queue_binds_their_calls(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, PRICES_FILE=PRICES, OFFLINE_TOKEN_DELAY_MS="1", HOLD_TTL_S="10")
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        stack.events()
        stack.api()
        user_id, api = client_for(stack)
        _, admin = client_for(stack, "admin")
        body = {"agent_type": "query", "query": "What is 6*7? Please show the working.", "max_tokens": 64}
        jobs = [api.post("/api/v1/jobs", json=body).json()["id"] for _ in range(40)]  # no worker yet: all queued
        limit = "0.002000"
        assert (
            admin.post(
                "/api/v1/costs/budget", json={"user_id": user_id, "limit_usd": limit, "period": "monthly"}
            ).status_code
            == 200
        )
        stack.worker(concurrency=2)
        ended = [api.get(f"/api/v1/jobs/{j}", params={"wait": 60}).json() for j in jobs]
        assert all(e["status"] in ("succeeded", "failed") for e in ended), [e["status"] for e in ended]
        stopped = [e for e in ended if e["status"] == "failed"]
        assert stopped and all(e["error"]["code"] == "budget_exhausted" for e in stopped)
        wait_for(lambda: not r.keys(f"budget:{{{user_id}}}:hold:*"), timeout=30, what="every hold settled")
        [budget] = api.get("/api/v1/costs/budget").json()["budgets"]
        spent = sum(int(r.hget(keyspace.job(j), "cost_micros") or 0) for j in jobs)
        assert spent == budget["spent_micros"] <= budget["limit_micros"], (spent, budget)
        assert budget["held_micros"] == 0
    finally:
        r.close()
        stack.stop()
        server.stop()
