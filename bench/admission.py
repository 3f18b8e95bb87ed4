"""Budgets that admit what they can afford (issue 13): the reference job's hold against what it really cost, and how
many of 200 concurrent submits a $0.05 budget admits.

The reference job: the `query` agent, `max_tokens: 200`, the offline model priced at $1 / $2 per million tokens
(tests/data/prices.yaml). The same-run baseline is the hold the earlier design took for the same job, the worst
case of every model call the agent may make with the conversation growing by each answer and tool result, and
the count of that hold that fits in $0.05 (a burst holds before any job ends).
"""

from __future__ import annotations

import asyncio

import httpx

from bench.common import fresh_stack, line, user_key
from events.catalog import AGENT_TYPES, AgentSpec
from events.money.budgets import call_cost_bound
from events.money.prices import ModelPrice, PriceBook
from tests.conftest import create_user
from tests.stack import ROOT

PRICES = ROOT / "tests" / "data" / "prices.yaml"
BODY = {"agent_type": "query", "query": "What is 6*7?", "max_tokens": 200, "cache": False}
BUDGET_USD = "0.050000"
BURST = 200


def envelope_micros(price: ModelPrice, spec: AgentSpec, query_bytes: int, max_tokens: int) -> int:
    """The earlier per-job hold: every call the agent may make, each prompt grown by every answer (4 bytes a
    token) and the tool results it lets through (64 bytes of framing each)."""
    growth = max_tokens * 4 + spec.tool_results_per_call * (spec.max_tool_result_chars + 64)
    first = query_bytes + 1024  # the prompt overhead the agents declared then
    calls = range(spec.max_llm_calls)
    return sum(call_cost_bound(price, prompt_bytes=first + k * growth, max_tokens=max_tokens) for k in calls)


def _burst(url: str, key: str) -> list[int]:
    async def flood() -> list[int]:
        headers = {"Authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=BURST)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
            answers = await asyncio.gather(*(client.post("/api/v1/jobs", json=BODY) for _ in range(BURST)))
        return [a.status_code for a in answers]

    return asyncio.run(flood())


def run() -> None:
    """Measure and print."""
    with fresh_stack(PRICES_FILE=str(PRICES), OFFLINE_TOKEN_DELAY_MS="15") as (stack, _):
        stack.events()
        stack.worker(concurrency=2)
        stack.api(workers=2)
        admin = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {user_key(stack, 'admin')}"})
        key = user_key(stack)
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            job = client.post("/api/v1/jobs", json=BODY).raise_for_status().json()
            done = client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 60}).json()
        hold, cost = float(job["hold_usd"]), float(done["usage"]["cost_usd"])
        old = envelope_micros(
            PriceBook(PRICES).price("offline"), AGENT_TYPES["query"], len(BODY["query"].encode()), 200
        )
        line(
            "reference job: hold at submit / real cost",
            f"{hold / cost:.1f}x",
            f"{old / 1e6 / cost:.1f}x per-job hold",
            f"(target <= 5x; ${hold:.6f} / ${cost:.6f})",
        )
        user_id, burst_key = create_user(stack.env["REDIS_URL"], prefix="burst")
        budget = {"user_id": user_id, "limit_usd": BUDGET_USD, "period": "total"}
        admin.post("/api/v1/costs/budget", json=budget).raise_for_status()
        statuses = _burst(stack.url, burst_key)
        admin.close()
    admitted = statuses.count(202)
    others = {s for s in statuses if s not in (202, 402)}
    line(
        f"$0.05 budget: admitted of {BURST} concurrent",
        f"{admitted}",
        f"{int(float(BUDGET_USD) * 1e6 // old)} per-job hold",
        f"(target >= 40){' other statuses: ' + str(sorted(others)) if others else ''}",
    )
