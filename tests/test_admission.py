"""Admission against budgets (issue 13): a job holds only its first model call's worst case at submit, each agent's
declared prompt overhead matches its real first request, the 402 tells running jobs' holds from money spent, and
jobs that race for one budget in the middle of their runs never overspend it; a job stopped by its budget keeps
what it answered and says what it spent."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any, Iterator

import httpx
import pytest
import redis

from events.catalog import AGENT_TYPES
from events.money.budgets import first_call_micros
from events.money.prices import PriceBook
from events.store import keyspace
from tests.conftest import create_user
from tests.llmsim import SimControl
from tests.simstack import fresh_user
from tests.sse import read_events
from tests.stack import ROOT, RedisServer, Stack, wait_for

PRICES = ROOT / "tests" / "data" / "prices.yaml"  # the offline model at $1 / $2 per million tokens
QUESTION = "What is the capital of France, and how many people live there?"


def test_each_agents_first_request_fits_its_declared_overhead(sim_default: tuple[Stack, SimControl]) -> None:
    """The hold at submit counts the query plus `prompt_overhead_bytes`: the real first request (as the LLM service
    receives it) must never be larger, nor much smaller (a loose figure would hold money for nothing)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    image = {"type": "image", "media_type": "image/png", "data_base64": base64.b64encode(buf.getvalue()).decode()}
    stack, control = sim_default
    with fresh_user(stack, control) as client:
        for agent, spec in AGENT_TYPES.items():
            control.reset()
            control.config(tokens_per_s=0)
            body: dict[str, Any] = {"agent_type": agent, "query": QUESTION, "cache": False, "max_tokens": 50}
            if agent == "vision":
                body["attachments"] = [image]
            job = client.post("/api/v1/jobs", json=body).json()
            assert client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"
            first = control.requests()[0]["body"]
            size = len(json.dumps(first["messages"]).encode()) + len(json.dumps(first.get("tools", [])).encode())
            if agent == "vision":
                size -= len(image["data_base64"])  # the worker holds for the image when it sends it
            overhead = size - len(json.dumps(QUESTION).encode())
            assert overhead <= spec.prompt_overhead_bytes <= overhead + 64, (agent, overhead)


@pytest.fixture(scope="module")
def priced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, redis.Redis]]:
    """A stack whose offline model costs money and writes a token every 30 ms, with four worker processes."""
    logdir = tmp_path_factory.mktemp("admission")
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, PRICES_FILE=str(PRICES), OFFLINE_TOKEN_DELAY_MS="30", HOLD_TTL_S="10")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        stack.events(wait=False)
        stack.worker(concurrency=4, wait=False)
        stack.api(wait=False)
        stack.ready()
        yield stack, client
    finally:
        client.close()
        stack.stop()
        server.stop()


def _user_with_budget(stack: Stack, limit_usd: str, period: str = "monthly") -> tuple[str, httpx.Client]:
    user_id, key = create_user(stack.env["REDIS_URL"])
    _, admin_key = create_user(stack.env["REDIS_URL"], "admin")
    budget = {"user_id": user_id, "limit_usd": limit_usd, "period": period}
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        assert admin.post("/api/v1/costs/budget", json=budget).status_code == 200
    return user_id, httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


BODY = {"agent_type": "query", "query": "What is 6*7?", "max_tokens": 64}
HOLD = first_call_micros(PriceBook(PRICES).price("offline"), AGENT_TYPES["query"], query="What is 6*7?", max_tokens=64)


def test_a_402_blocked_by_running_jobs_says_so_and_when_to_retry(priced: tuple[Stack, redis.Redis]) -> None:
    stack, _ = priced
    _, client = _user_with_budget(stack, f"{(HOLD * 3 // 2) / 1e6:.6f}")
    with client:
        running = client.post("/api/v1/jobs", json=BODY)
        assert running.status_code == 202 and running.json()["hold_usd"] == f"{HOLD / 1e6:.6f}"
        refused = client.post("/api/v1/jobs", json=BODY)
        assert refused.status_code == 402
        error = refused.json()
        assert error["blocked_by"] == "running_jobs" and error["held_usd"] == f"{HOLD / 1e6:.6f}"
        assert error["spent_usd"] == "0.000000" and float(error["remaining_usd"]) < HOLD / 1e6
        assert 1 <= int(refused.headers["Retry-After"]) <= 300 and "running jobs" in error["description"]
        [budget] = client.get("/api/v1/costs/budget").json()["budgets"]
        assert (budget["held_usd"], budget["remaining_usd"]) == (error["held_usd"], error["remaining_usd"])
        client.get(f"/api/v1/jobs/{running.json()['id']}", params={"wait": 30})
        wait_for(lambda: client.post("/api/v1/jobs", json=BODY).status_code == 202, timeout=30, what="room again")


def test_a_402_when_the_money_is_spent_says_when_the_period_resets(priced: tuple[Stack, redis.Redis]) -> None:
    stack, _ = priced
    _, client = _user_with_budget(stack, f"{3 * HOLD / 1e6:.6f}", period="daily")
    with client:
        for _ in range(30):  # one job at a time, each settled before the next: nothing is held at the refusal
            refused = client.post("/api/v1/jobs", json=BODY)
            if refused.status_code != 202:
                break
            client.get(f"/api/v1/jobs/{refused.json()['id']}", params={"wait": 30})
            wait_for(lambda: client.get("/api/v1/costs/budget").json()["budgets"][0]["held_usd"] == "0.000000")
        error = refused.json()
        assert refused.status_code == 402 and error["blocked_by"] == "spent" and float(error["spent_usd"]) > 0
        assert error["resets_at"].endswith("T00:00:00Z") and error["resets_at"] in error["description"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 86_400
    _, small = _user_with_budget(stack, f"{(HOLD // 2) / 1e6:.6f}", period="total")
    with small:
        error = small.post("/api/v1/jobs", json=BODY).json()
        assert error["blocked_by"] == "limit" and "Retry-After" not in small.post("/api/v1/jobs", json=BODY).headers
        assert "more than the whole budget" in error["description"]


def test_fifty_multi_call_jobs_racing_mid_run_never_overspend(priced: tuple[Stack, redis.Redis]) -> None:
    """The budget holds all 50 first calls and a little more, but their second calls do not all fit: the jobs that
    run first extend their holds while the burst is still being admitted (so some of it answers 402, blocked by
    their holds), the first to need a second call without room is stopped, and what a stopped job returns lets
    others go on. Spend never passes the limit, every stopped job says why and what it spent, no hold is left."""
    stack, r = priced
    limit = 50 * HOLD + HOLD // 4
    user_id, client = _user_with_budget(stack, f"{limit / 1e6:.6f}")

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.url, headers=dict(client.headers), timeout=60) as burst:
            return await asyncio.gather(*(burst.post("/api/v1/jobs", json=BODY) for _ in range(50)))

    with client:
        burst = asyncio.run(flood())
        answers = [a for a in burst if a.status_code == 202]
        refused = [a.json() for a in burst if a.status_code != 202]
        assert len(answers) >= 10 and all(e["blocked_by"] == "running_jobs" for e in refused), refused[:1]
        ended = [client.get(f"/api/v1/jobs/{a.json()['id']}", params={"wait": 60}).json() for a in answers]
        assert all("status" in e for e in ended), [e for e in ended if "status" not in e][:1]
        stopped = [e for e in ended if e["status"] == "failed"]
        assert {e["status"] for e in ended} <= {"succeeded", "failed"} and stopped, [e["status"] for e in ended]
        assert all(e["error"]["code"] == "budget_exhausted" for e in stopped)
        assert any(e["status"] == "succeeded" for e in ended)  # money a stopped job returned let others finish
        _, events = read_events(client, f"/api/v1/jobs/{stopped[0]['id']}/events")
        [note] = [e.data["data"] for e in events if e.data["data"].get("event") == "budget_exhausted"]
        assert float(note["spent_usd"]) > 0 and events[-1].event == "error"
        assert events[-1].data["data"]["spent_usd"] == note["spent_usd"]
        wait_for(lambda: not r.keys(f"budget:{{{user_id}}}:hold:*"), timeout=30, what="every hold settled")
        [budget] = client.get("/api/v1/costs/budget").json()["budgets"]
        spent = sum(int(r.hget(keyspace.job(a.json()["id"]), "cost_micros") or 0) for a in answers)
        assert spent == budget["spent_micros"] <= limit and budget["held_micros"] == 0
