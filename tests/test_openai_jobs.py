"""Jobs on the OpenAI-compatible path: real workers, the real `openai` client, the simulator as the service."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from events.catalog import AGENT_TYPES
from events.store import keyspace
from tests.llmsim import SimControl
from tests.simstack import PROVIDER_KEY, fresh_user, simulated_stack
from tests.sse import read_events
from tests.stack import Stack, wait_for


@pytest.fixture(scope="module")
def sim_stack(logdir: Path) -> Iterator[tuple[Stack, SimControl]]:
    with simulated_stack(logdir, DEFAULT_MODEL="gpt-4o-mini", LLM_MAX_RETRIES="2", LLM_TIMEOUT_S="5") as both:
        yield both


@pytest.fixture
def api(sim_stack: tuple[Stack, SimControl]) -> Iterator[httpx.Client]:
    with fresh_user(*sim_stack) as client:
        yield client


def run_job(api: httpx.Client, query: str) -> tuple[dict, list]:
    job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": query}).json()
    done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()
    _, events = read_events(api, f"/api/v1/jobs/{job['id']}/events")
    return done, events


def test_a_tool_call_from_the_model_runs_the_tool_and_the_answer_streams(sim_stack, api: httpx.Client) -> None:
    _, control = sim_stack
    control.script({"kind": "tool_call", "name": "calculator", "arguments": {"expression": "6*7"}})
    done, events = run_job(api, "what is six times seven")
    assert done["status"] == "succeeded", done
    assert done["model"] == "gpt-4o-mini" and done["provider"] == "openai"
    assert done["result"] == "Simulated answer using tool result: 6*7 = 42"
    ends = [e.data["data"] for e in events if e.event == "tool_end"]
    assert ends == [ends[0]] and ends[0]["result"] == "6*7 = 42" and ends[0]["ok"]
    usage = [e.data["data"] for e in events if e.event == "usage"]
    assert len(usage) == 2 and not any(u["estimated"] for u in usage)
    assert done["usage"]["output_tokens"] == sum(u["output_tokens"] for u in usage)
    requests = control.requests()
    assert all(r["body"]["max_tokens"] == 1024 and r["body"]["stream_options"]["include_usage"] for r in requests)
    assert len(requests) == 2 and all(r["body"]["tools"] for r in requests)


def test_tool_calls_past_the_agents_limit_per_step_are_answered_but_not_run(sim_stack, api: httpx.Client) -> None:
    _, control = sim_stack
    limit = AGENT_TYPES["query"].tool_results_per_call
    control.script({"kind": "tool_call", "name": "calculator", "arguments": {"expression": "6*7"}, "repeat": limit + 1})
    done, events = run_job(api, "what is six times seven, three times over")
    assert done["status"] == "succeeded", done
    assert len([e for e in events if e.event == "tool_start"]) == limit  # the budget hold counts on this bound
    answered = [m for m in control.requests()[1]["body"]["messages"] if m["role"] == "tool"]
    assert len(answered) == limit + 1  # every call id gets its answer, as the API requires
    assert answered[-1]["content"].startswith(f"error: not run: at most {limit} tool calls per step")


def test_a_429_is_retried_and_reported_as_a_metadata_event(sim_stack, api: httpx.Client) -> None:
    _, control = sim_stack
    control.script({"kind": "error", "status": 429, "retry_after": 0.2}, {"kind": "text", "text": "fine now"})
    done, events = run_job(api, "hello")
    assert done["status"] == "succeeded" and done["result"] == "fine now"
    retries = [e.data["data"] for e in events if e.event == "metadata"]
    assert retries == [retries[0]] and retries[0]["event"] == "llm_retry" and retries[0]["delay_s"] == 0.2
    usage = [e.data["data"] for e in events if e.event == "usage"]
    assert [u["estimated"] for u in usage] == [True, False]


def test_a_dropped_stream_is_retried_and_flagged_to_discard_the_partial_text(sim_stack, api: httpx.Client) -> None:
    _, control = sim_stack
    control.script({"kind": "drop", "after_tokens": 2})
    done, events = run_job(api, "drop me")
    assert done["status"] == "succeeded" and done["result"] == "Simulated answer to: drop me"
    [retry] = [e.data["data"] for e in events if e.event == "metadata"]
    assert retry["discard_partial"] is True


def test_a_service_that_keeps_failing_fails_the_job_without_leaking_the_key(sim_stack, api: httpx.Client) -> None:
    stack, control = sim_stack
    control.script(*[{"kind": "error", "status": 503}] * 3)
    done, events = run_job(api, "doomed")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "llm_unavailable"
    assert events[-1].event == "error" and events[-1].data["data"]["code"] == "llm_unavailable"
    assert len(control.requests()) == 3
    for proc in stack.procs:
        assert PROVIDER_KEY not in proc.log(), proc.name
    assert PROVIDER_KEY not in str(done) and all(PROVIDER_KEY not in str(e.data) for e in events)


def test_a_job_naming_an_unpriced_model_is_refused_at_submit(api: httpx.Client) -> None:
    resp = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "hi", "model": "mystery-model-3"})
    assert resp.status_code == 400 and resp.json()["code"] == "unpriced_model"
    assert "mystery-model-3" in resp.json()["description"] and "prices.yaml" in resp.json()["description"]
    priced = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "hi", "model": "gpt-4o"})
    assert priced.status_code == 202 and float(priced.json()["hold_usd"]) > 0
    # Let it finish here, so it does not take the next test's scripted answers.
    assert api.get(f"/api/v1/jobs/{priced.json()['id']}", params={"wait": 30}).json()["status"] == "succeeded"


def test_a_cancel_ends_a_long_retry_after_wait_at_once(sim_stack, api: httpx.Client) -> None:
    stack, control = sim_stack
    control.script({"kind": "error", "status": 429, "retry_after": 25}, {"kind": "text", "text": "too late"})
    job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "slow down"}).json()
    store = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    try:
        wait_for(
            lambda: any(fields.get("type") == "metadata" for _, fields in store.xrange(keyspace.job_stream(job["id"]))),
            timeout=20,
            what="the retry to be announced",
        )
    finally:
        store.close()
    assert api.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 202
    # The wait was 25 s; the long poll gives up after 10 s, so "cancelled" here means the wait was cut short.
    done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 10}).json()
    assert done["status"] == "cancelled", done
    ours = [r for r in control.requests() if "slow down" in str(r["body"]["messages"])]
    assert len(ours) == 1  # the retried call was never made
