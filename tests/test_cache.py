"""The response cache and in-flight sharing, end to end: real Redis, API, workers and events process, with the
LLM simulator counting model calls (docs/cache.md)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from events.cache_key import CacheRequest, cacheable, normalise_query
from events.store import keyspace
from tests.conftest import create_user
from tests.llmsim import SimControl
from tests.simstack import simulated_stack
from tests.sse import read_events
from tests.stack import Stack, wait_for

CACHE_TTL_S = 3


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("  What is 2+2?  ", "What is 2+2?"),
        ("a\r\nb\t \nc", "a\nb\nc"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFC
        ("X  +  x", "X  +  x"),  # case and inner spacing are kept
        ("def f():\n    return 1", "def f():\n    return 1"),
    ],
)
def test_queries_are_normalised_only_where_the_answer_cannot_change(raw: str, normal: str) -> None:
    assert normalise_query(raw) == normal


def test_every_field_that_changes_an_answer_changes_the_digest() -> None:
    base = CacheRequest("u1", "query", "m", "hi", 100, "0", "openai", ())
    same = CacheRequest("u1", "query", "m", "  hi \n", 100, "0", "openai", ())
    assert base.digest() == same.digest()
    others = [
        CacheRequest("u2", "query", "m", "hi", 100, "0", "openai", ()),
        CacheRequest("u1", "math", "m", "hi", 100, "0", "openai", ()),
        CacheRequest("u1", "query", "m2", "hi", 100, "0", "openai", ()),
        CacheRequest("u1", "query", "m", "Hi", 100, "0", "openai", ()),
        CacheRequest("u1", "query", "m", "hi", 101, "0", "openai", ()),
        CacheRequest("u1", "query", "m", "hi", 100, "1", "openai", ()),
        CacheRequest("u1", "query", "m", "hi", 100, "0", "offline", ()),
        CacheRequest("u1", "query", "m", "hi", 100, "0", "openai", ({"name": "a.png"},)),
    ]
    assert len({base.digest(), *(o.digest() for o in others)}) == len(others) + 1


@pytest.mark.parametrize(
    ("enabled", "ttl", "session", "expected"),
    [(True, 60, "", True), (False, 60, "", False), (True, 0, "", False), (True, 60, "s1", False)],
)
def test_only_sessionless_requests_with_the_cache_on_are_cached(enabled, ttl, session, expected) -> None:
    assert cacheable(enabled=enabled, ttl_s=ttl, session_id=session) is expected


@pytest.fixture(scope="module")
def sim_stack(logdir: Path) -> Iterator[tuple[Stack, SimControl, redis.Redis]]:
    settings = {"DEFAULT_MODEL": "gpt-4o-mini", "LLM_MAX_RETRIES": "0", "LLM_TIMEOUT_S": "5"}
    cache = {"CACHE_TTL_S": str(CACHE_TTL_S), "CACHE_MAX_ENTRIES": "3"}
    with simulated_stack(logdir, workers=2, **settings, **cache) as (stack, control):
        client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
        yield stack, control, client
        client.close()


@pytest.fixture
def user(sim_stack) -> Iterator[tuple[str, httpx.Client]]:
    stack, control, _ = sim_stack
    control.reset()
    control.config(tokens_per_s=0)
    user_id, key = create_user(stack.env["REDIS_URL"])
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield user_id, client


def submit(api: httpx.Client, query: str, **extra: Any) -> dict[str, Any]:
    resp = api.post("/api/v1/jobs", json={"agent_type": "query", "query": query, **extra})
    assert resp.status_code == 202, resp.text
    return resp.json()


def finished(api: httpx.Client, job_id: str) -> dict[str, Any]:
    done = api.get(f"/api/v1/jobs/{job_id}", params={"wait": 30}).json()
    assert done["status"] in ("succeeded", "failed", "cancelled"), done
    return done


def run(api: httpx.Client, query: str, **extra: Any) -> dict[str, Any]:
    return finished(api, submit(api, query, **extra)["id"])


def events_of(api: httpx.Client, job_id: str) -> list[Any]:
    _, events = read_events(api, f"/api/v1/jobs/{job_id}/events")
    return events


def chat_calls(control: SimControl) -> int:
    return len(control.requests())


def test_an_identical_request_is_answered_from_the_cache_at_no_cost(sim_stack, user) -> None:
    _, control, r = sim_stack
    user_id, api = user
    first = run(api, "what is the capital of France")
    assert first["status"] == "succeeded" and not first["cached"] and float(first["cost_usd"]) > 0
    calls = chat_calls(control)
    second = submit(api, "  what is the capital of France \n")
    assert second["status"] == "succeeded" and second["cached"] and second["cache_source"] == first["id"]
    done = finished(api, second["id"])
    assert done["result"] == first["result"] and float(done["cost_usd"]) == 0 and done["usage"]["llm_calls"] == 0
    assert chat_calls(control) == calls  # no model call
    events = events_of(api, second["id"])
    assert [e.event for e in events] == ["start", "metadata", "token", "done"]
    assert [e.data["seq"] for e in events] == [0, 1, 2, 3]
    assert events[1].data["data"] == {"event": "cache_hit", "kind": "stored", "source_job": first["id"]}
    assert events[2].data["data"]["text"] == first["result"] and events[3].data["data"]["cached"] is True
    assert not r.exists(keyspace.budget_hold(user_id, second["id"]))  # a hit holds nothing
    wait_for(lambda: r.hget(keyspace.ledger_total(user_id), "calls") is not None, what="the ledger")
    usage = api.get(f"/api/v1/costs/usage/{user_id}").json()["all_time"]
    assert usage["cost_usd"] == first["cost_usd"]  # the hit added no spend


def test_a_changed_user_agent_model_query_max_tokens_or_docs_version_misses(sim_stack, user) -> None:
    stack, control, r = sim_stack
    user_id, api = user
    base = {"query": "tell me about owls", "max_tokens": 50}
    assert not run(api, **base)["cached"]
    assert run(api, **base)["cached"]
    variants: list[dict[str, Any]] = [
        {**base, "query": "tell me about Owls"},
        {**base, "max_tokens": 51},
        {**base, "model": "gpt-4o"},
    ]
    for body in variants:
        assert not run(api, **body)["cached"], body
    r.incr(keyspace.docs_version(user_id))  # the user's documents changed
    assert not run(api, **base)["cached"]
    _, other_key = create_user(stack.env["REDIS_URL"])
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30) as other:
        assert not run(other, **base)["cached"]
    calls = chat_calls(control)
    assert run(api, **base)["cached"] and chat_calls(control) == calls


def test_a_reworded_query_misses_while_semantic_matching_is_off(sim_stack, user) -> None:
    _, control, r = sim_stack
    _, api = user
    first = run(api, "What is the capital of Spain?")  # CACHE_SEMANTIC_THRESHOLD is 0 by default
    assert "cache_partition" not in r.hgetall(keyspace.job(first["id"]))
    assert run(api, "What is the capital of Spain?")["cached"]
    assert not run(api, "what is the capital of spain")["cached"]
    assert chat_calls(control) == 2


def test_cache_false_neither_reads_nor_writes_nor_shares(sim_stack, user) -> None:
    _, control, _ = sim_stack
    _, api = user
    assert not run(api, "tell me about bees")["cached"]
    before = chat_calls(control)
    opted = run(api, "tell me about bees", cache=False)
    assert not opted["cached"] and chat_calls(control) == before + 1
    assert not run(api, "tell me about wasps", cache=False)["cached"]
    assert not run(api, "tell me about wasps")["cached"]  # the opted-out run stored nothing


def test_a_session_job_is_never_cached(sim_stack, user) -> None:
    _, api = user
    assert not run(api, "remember my name is Ada", session_id="s-cache")["cached"]
    assert not run(api, "remember my name is Ada", session_id="s-cache")["cached"]


def test_an_entry_expires_after_its_ttl(user) -> None:
    _, api = user
    first = run(api, "tell me about the moon")
    assert run(api, "tell me about the moon")["cached"]
    wait_for(lambda: not submit(api, "tell me about the moon")["cached"], timeout=CACHE_TTL_S + 5, interval=0.5)
    assert first["status"] == "succeeded"


def test_the_oldest_entries_are_evicted_past_the_bound(sim_stack, user) -> None:
    _, _, r = sim_stack
    _, api = user
    for n in range(5):
        run(api, f"evict me {n}")
    assert r.hlen(keyspace.CACHE_ENTRIES) <= 3 and r.zcard(keyspace.CACHE_EXPIRY) <= 3
    assert int(r.hget(keyspace.CACHE_STATS, "bytes")) == sum(len(v.encode()) for v in r.hvals(keyspace.CACHE_ENTRIES))
    assert not run(api, "evict me 0")["cached"]  # evicted
    assert run(api, "evict me 0")["cached"]


def test_fifty_identical_concurrent_submits_make_one_model_run_and_one_charge(sim_stack, user) -> None:
    _, control, r = sim_stack
    user_id, api = user
    control.config(tokens_per_s=50)  # the leader runs for a while, so the others join it in flight
    query = "write a haiku about shared work"
    with concurrent.futures.ThreadPoolExecutor(max_workers=25) as pool:
        jobs = list(pool.map(lambda _: submit(api, query), range(50)))
    done = [finished(api, j["id"]) for j in jobs]
    assert all(d["status"] == "succeeded" for d in done), [d["error"] for d in done if d["status"] != "succeeded"]
    assert len({d["result"] for d in done}) == 1
    assert chat_calls(control) == 1  # one model run
    leaders = [d for d in done if not d["cached"]]
    assert len(leaders) == 1 and float(leaders[0]["cost_usd"]) > 0
    assert all(float(d["cost_usd"]) == 0 and d["cache_source"] == leaders[0]["id"] for d in done if d["cached"])
    wait_for(lambda: r.hget(keyspace.ledger_total(user_id), "calls") == "1", what="one charge in the ledger")
    usage = api.get(f"/api/v1/costs/usage/{user_id}").json()["all_time"]
    assert usage["cost_usd"] == leaders[0]["cost_usd"]
    follower = next(d for d in done if d["cached"])
    events = events_of(api, follower["id"])
    assert [e.event for e in events][-2:] == ["token", "done"] and events[0].event == "start"
    assert [e.data["seq"] for e in events] == list(range(len(events)))
    assert events[-1].data["data"]["result"] == leaders[0]["result"]
    assert not r.keys("budget:*:hold:*")  # every hold was returned


def test_followers_of_a_failed_leader_fail_with_the_reason_and_do_not_hang(sim_stack, user) -> None:
    _, control, _ = sim_stack
    _, api = user
    control.config(tokens_per_s=20)  # the leader streams for a while, then its connection drops
    control.script({"kind": "drop", "after_tokens": 10})
    query = "this one fails"
    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        jobs = list(pool.map(lambda _: submit(api, query), range(5)))
    done = [finished(api, j["id"]) for j in jobs]
    assert all(d["status"] == "failed" for d in done), done
    followers = [d for d in done if d["cached"] or d["cache_source"]]
    for d in followers:
        assert d["error"]["code"] == "shared_run_failed" and "Submit it again" in d["error"]["message"]
    assert chat_calls(control) == 1
    retry = run(api, query)  # nothing failed was stored: it runs anew
    assert retry["status"] == "succeeded" and not retry["cached"]


def test_followers_of_a_cancelled_queued_leader_end_at_once(sim_stack, user) -> None:
    _, control, _ = sim_stack
    _, api = user
    # Both worker slots are busy with slow jobs, so the leader stays queued until it is cancelled.
    control.config(tokens_per_s=5)
    slow = " ".join(["slow"] * 200)
    control.script({"kind": "text", "text": slow}, {"kind": "text", "text": slow})
    busy = [submit(api, f"busy {n}", cache=False) for n in range(2)]
    wait_for(lambda: all(api.get(f"/api/v1/jobs/{b['id']}").json()["status"] == "running" for b in busy))
    leader = submit(api, "queued until cancelled")
    follower = submit(api, "queued until cancelled")
    assert follower["cache_source"] == leader["id"] and follower["status"] == "queued"
    assert api.post(f"/api/v1/jobs/{leader['id']}/cancel").status_code < 300
    done = finished(api, follower["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "shared_run_failed"
    assert "cancelled" in done["error"]["message"]
    for b in busy:
        api.post(f"/api/v1/jobs/{b['id']}/cancel")
    assert finished(api, leader["id"])["status"] == "cancelled"


def test_cache_operations_are_counted(sim_stack, user) -> None:
    stack, _, _ = sim_stack
    _, api = user
    run(api, "count me")
    run(api, "count me")
    run(api, "count me", cache=False)
    found = cache_operations(stack)
    for result in ("hit", "miss", "bypass"):
        assert found.get(("response_lookup", result), 0) >= 1, found


def cache_operations(stack) -> dict[tuple[str | None, str | None], float]:  # type: ignore[no-untyped-def]
    """`cache_operations_total` by (operation, result), as the API's metrics show it to an admin."""
    _, admin_key = create_user(stack.env["REDIS_URL"], "admin")
    exposition = httpx.get(
        f"{stack.url}/api/v1/monitoring/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    ).text
    return {
        (s.labels.get("operation"), s.labels.get("result")): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == "cache_operations_total"
    }
