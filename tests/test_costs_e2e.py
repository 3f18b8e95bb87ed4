"""Costs end to end: prices, holds that never overspend, the ledger, and the cost endpoints over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from events import keys
from tests.conftest import create_user
from tests.stack import ROOT, RedisServer, Stack, wait_for

PRICES = str(ROOT / "tests" / "data" / "prices.yaml")


@pytest.fixture(scope="module")
def money_stack(logdir: Path) -> Iterator[tuple[Stack, redis.Redis]]:
    """A stack whose offline model costs money, so budgets and holds bite."""
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, PRICES_FILE=PRICES, OFFLINE_TOKEN_DELAY_MS="2", HOLD_TTL_S="10")
    stack.events()
    stack.worker(concurrency=2)
    stack.api(workers=2)
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
    resp = admin.post("/api/v1/costs/track", json={"user_id": user_id, "model": "gpt-4o", "input_tokens": 1000,
                                                    "output_tokens": 500})
    assert resp.status_code == 201, resp.text
    assert resp.json()["cost_usd"] == "0.007500" and resp.json()["cost_micros"] == 7500
    assert resp.json()["price_source"].startswith("genai-prices")


def test_unknown_model_is_refused_with_how_to_price_it(money_stack) -> None:
    stack, _ = money_stack
    _, admin = client_for(stack, "admin")
    resp = admin.post("/api/v1/costs/track", json={"user_id": "x", "model": "no-such-model-9", "input_tokens": 1,
                                                    "output_tokens": 1})
    assert resp.status_code == 400 and resp.json()["code"] == "unpriced_model"
    assert "no-such-model-9" in resp.json()["description"] and "prices.yaml" in resp.json()["description"]


def test_a_job_is_charged_and_its_hold_settled(money_stack) -> None:
    stack, r = money_stack
    user_id, api = client_for(stack)
    job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "What is 2+2?", "max_tokens": 64}).json()
    assert float(job["hold_usd"]) > 0
    done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()
    assert done["status"] == "succeeded"
    cost = int(r.hget(keys.job(job["id"]), "cost_micros"))
    assert cost > 0 and done["cost_usd"] == f"{cost / 1e6:.6f}"
    assert done["usage"]["cost_usd"] == done["cost_usd"]
    wait_for(lambda: not r.exists(keys.budget_hold(user_id, job["id"])), what="settlement")
    wait_for(lambda: int(r.hget(keys.ledger_total(user_id), "cost") or 0) == cost, what="the ledger")


def test_concurrent_submits_never_overspend_and_leave_no_hold(money_stack) -> None:
    stack, r = money_stack
    user_id, api = client_for(stack)
    _, admin = client_for(stack, "admin")
    limit_usd = "0.060000"
    assert admin.post("/api/v1/costs/budget", json={"user_id": user_id, "limit_usd": limit_usd,
                                                     "period": "monthly"}).status_code == 200
    body = {"agent_type": "query", "query": "What is 6*7?", "max_tokens": 64}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.url, headers=dict(api.headers), timeout=60,
                                     limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(*(client.post("/api/v1/jobs", json=body) for _ in range(200)))

    answers = asyncio.run(flood())
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    rejected = [a for a in answers if a.status_code != 202]
    assert accepted and rejected
    for answer in rejected:
        assert answer.status_code == 402, answer.text
        error = answer.json()
        assert error["code"] == "budget_exceeded" and {"remaining_usd", "hold_usd", "limit_usd"} <= set(error)
    for job_id in accepted:
        assert api.get(f"/api/v1/jobs/{job_id}", params={"wait": 60}).json()["status"] == "succeeded"
    wait_for(lambda: not r.keys(f"budget:{{{user_id}}}:hold:*"), timeout=30, what="every hold settled")
    [budget] = api.get("/api/v1/costs/budget").json()["budgets"]
    spent = sum(int(r.hget(keys.job(j), "cost_micros") or 0) for j in accepted)
    assert budget["spent_micros"] == spent <= budget["limit_micros"]
    assert budget["held_micros"] == 0
    assert not [m for m in r.zrange(keys.HOLDS_INDEX, 0, -1) if m.startswith(f"{user_id}\t")]


def test_budget_endpoint_validates_and_needs_admin(money_stack) -> None:
    stack, _ = money_stack
    user_id, api = client_for(stack)
    assert api.post("/api/v1/costs/budget", json={"user_id": user_id, "limit_usd": 1}).status_code == 403
    _, admin = client_for(stack, "admin")
    for bad in ({"user_id": user_id, "limit_usd": -1}, {"user_id": user_id, "limit_usd": "abc"},
                {"user_id": user_id, "limit_usd": 1, "period": "hourly"},
                {"user_id": user_id, "limit_usd": 1, "scope": "planet"},
                {"user_id": user_id, "limit_usd": 1, "scope": "session"}, {"limit_usd": 1}):
        resp = admin.post("/api/v1/costs/budget", json=bad)
        assert resp.status_code == 400, (bad, resp.text)
    ok = admin.post("/api/v1/costs/budget", json={"user_id": user_id, "scope": "agent", "agent": "query",
                                                   "limit_usd": "2.5", "period": "daily", "alert_pct": 50})
    assert ok.status_code == 200 and ok.json()["budget"]["limit_usd"] == "2.500000"
    assert admin.post("/api/v1/costs/budget", json={"user_id": user_id, "scope": "agent", "agent": "query",
                                                     "limit_usd": None}).json()["removed"] is True


def test_cost_read_endpoints_answer_for_the_caller_only(money_stack) -> None:
    stack, _ = money_stack
    user_id, api = client_for(stack)
    other_id, _ = client_for(stack)
    for path in ("/api/v1/costs/stats", "/api/v1/costs/forecast", "/api/v1/costs/recommendations",
                 "/api/v1/costs/models", "/api/v1/costs/health", f"/api/v1/costs/usage/{user_id}",
                 "/api/v1/costs/budget"):
        assert api.get(path).status_code == 200, path
    assert api.get(f"/api/v1/costs/usage/{other_id}").status_code == 404
    assert api.get("/api/v1/costs/stats", params={"user_id": other_id}).status_code == 404
    assert api.get("/api/v1/costs/stats", params={"group_by": "user"}).status_code == 403
    assert api.get("/api/v1/costs/stats", params={"period": "year"}).status_code == 400
    models = {m["model"]: m for m in api.get("/api/v1/costs/models").json()["models"]}
    assert "offline" in models and "gpt-4o" in models
