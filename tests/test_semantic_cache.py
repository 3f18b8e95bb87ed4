"""Semantic matching of the response cache (docs/cache.md, "Semantic matching"): the partition and the word
vectors, pure; then end to end on the stack with CACHE_SEMANTIC_THRESHOLD=0.9 that tests/conftest.py shares with the
hybrid search tests (real Redis, API and workers, the LLM simulator counting model calls)."""

from __future__ import annotations

import math
from typing import Any, Iterator

import httpx
import pytest
import redis

from events.cache_key import CacheRequest, semantic
from events.semantic_cache import register, similarity, unit_vector
from events.store import keyspace
from tests.conftest import CACHE_MAX_ENTRIES, create_user
from tests.llmsim import SimControl
from tests.stack import Stack, wait_for
from tests.test_cache import cache_operations

BASE = CacheRequest("u1", "query", "m", "What is the capital of France?", 100, "0", "openai", ())


def test_the_partition_is_the_digest_without_the_query() -> None:
    reworded = CacheRequest("u1", "query", "m", "capital of france, what is", 100, "0", "openai", ())
    assert reworded.partition() == BASE.partition() and reworded.digest() != BASE.digest()
    assert BASE.partition() != BASE.digest()


@pytest.mark.parametrize(
    "other",
    [
        CacheRequest("u2", "query", "m", BASE.query, 100, "0", "openai", ()),
        CacheRequest("u1", "rag", "m", BASE.query, 100, "0", "openai", ()),
        CacheRequest("u1", "query", "m2", BASE.query, 100, "0", "openai", ()),
        CacheRequest("u1", "query", "m", BASE.query, 101, "0", "openai", ()),
        CacheRequest("u1", "query", "m", BASE.query, 100, "1", "openai", ()),
        CacheRequest("u1", "query", "m", BASE.query, 100, "0", "offline", ()),
        CacheRequest("u1", "query", "m", BASE.query, 100, "0", "openai", ({"name": "a.png"},)),
    ],
)
def test_every_field_but_the_query_changes_the_partition(other: CacheRequest) -> None:
    assert other.partition() != BASE.partition()


@pytest.mark.parametrize(
    ("agent", "threshold", "expected"),
    [("query", 0.9, True), ("rag", 0.5, True), ("math", 0.9, False), ("code", 0.9, False), ("query", 0.0, False)],
)
def test_only_query_and_rag_match_semantically_and_only_with_a_threshold(agent, threshold, expected) -> None:
    assert semantic(agent, threshold) is expected


@pytest.mark.parametrize(
    ("other", "low", "high"),
    [
        ("what is the capital of france", 1.0, 1.0),  # case and punctuation
        ("France: the capital is what?", 1.0, 1.0),  # order
        ("What is the capital of France? What is the capital of France?", 1.0, 1.0),  # the question repeated
        ("what is the capital city of France", 0.86, 0.87),  # one word more
        ("What is the capital of Germany?", 0.66, 0.67),  # one word of three changed
        ("Why is the capital of France?", 0.66, 0.67),  # question words count
        ("Tell me a joke", 0.0, 0.0),
    ],
)
def test_the_score_is_the_cosine_of_word_counts(other: str, low: float, high: float) -> None:
    assert low - 1e-9 <= similarity(unit_vector(BASE.query), unit_vector(other)) <= high + 1e-9


def test_a_word_vector_has_length_one_and_a_query_without_words_has_none() -> None:
    vector = unit_vector("capital capital of France, or the capital of Spain?")
    assert math.isclose(sum(v * v for v in vector.values), 1.0)
    assert math.isclose(similarity(vector, vector), 1.0)
    assert unit_vector("is it the?").indices == ()


@pytest.fixture(scope="module")
def sim_stack(sim_semantic: tuple[Stack, SimControl]) -> Iterator[tuple[Stack, SimControl, redis.Redis]]:
    stack, control = sim_semantic
    client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    yield stack, control, client
    client.close()


def user_client(stack: Stack) -> httpx.Client:
    _, key = create_user(stack.env["REDIS_URL"])
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def api(sim_stack) -> Iterator[httpx.Client]:
    stack, control, _ = sim_stack
    control.reset()
    control.config(tokens_per_s=0)
    with user_client(stack) as client:
        yield client


def submit(api: httpx.Client, query: str, agent: str = "query", **extra: Any) -> dict[str, Any]:
    resp = api.post("/api/v1/jobs", json={"agent_type": agent, "query": query, **extra})
    assert resp.status_code == 202, resp.text
    return resp.json()


def run(api: httpx.Client, query: str, agent: str = "query", **extra: Any) -> dict[str, Any]:
    done = api.get(f"/api/v1/jobs/{submit(api, query, agent, **extra)['id']}", params={"wait": 30}).json()
    assert done["status"] == "succeeded", done
    return done


def stored(r: redis.Redis, job: dict[str, Any]) -> dict[str, Any]:
    """The job's record, once its answer is in the cache and its query registered (the worker does both)."""
    record = r.hgetall(keyspace.job(job["id"]))
    partition = keyspace.cache_semantic(record["cache_partition"])
    wait_for(lambda: r.hexists(partition, record["cache_digest"]), what="the query registered in its partition")
    return record


def test_a_reworded_or_reordered_query_is_answered_from_the_similar_entry(sim_stack, api) -> None:
    _, control, r = sim_stack
    first = run(api, "What is the capital of France?")
    assert not first["cached"] and len(control.requests()) == 1
    stored(r, first)
    for query in ("what is the capital of france", "France, the capital: what is it"):
        job = submit(api, query)
        assert job["status"] == "succeeded" and job["cached"] and job["cache_source"] == first["id"], query
        assert job["result"] == first["result"] and float(job["cost_usd"]) == 0
        record = r.hgetall(keyspace.job(job["id"]))
        assert (record["cache_match"], record["cache_score"]) == ("semantic", "1.0000")
    assert len(control.requests()) == 1  # no second model call
    assert not run(api, "what is the capital of france", cache=False)["cached"]
    assert len(control.requests()) == 2


def test_a_different_question_misses_and_calls_the_model(sim_stack, api) -> None:
    _, control, r = sim_stack
    stored(r, run(api, "What is the capital of Italy?"))
    other = run(api, "What is the capital of Portugal?")  # scores 0.67
    assert not other["cached"] and len(control.requests()) == 2
    assert "cache_match" not in r.hgetall(keyspace.job(other["id"]))


def test_a_math_job_is_never_matched_semantically(sim_stack, api) -> None:
    _, control, r = sim_stack
    first = run(api, "Differentiate sin(x) times y", agent="math")
    assert not first["cached"] and "cache_partition" not in r.hgetall(keyspace.job(first["id"]))
    calls = len(control.requests())
    assert run(api, "differentiate sin(x) times y", agent="math")["cached"] is False
    assert len(control.requests()) > calls


def test_another_users_near_identical_query_misses(sim_stack, api) -> None:
    stack, control, r = sim_stack
    stored(r, run(api, "What is the capital of Spain?"))
    with user_client(stack) as other:
        assert not run(other, "what is the capital of spain")["cached"]
    assert len(control.requests()) == 2


def test_a_match_whose_entry_was_evicted_misses_and_is_dropped(sim_stack, api) -> None:
    _, control, r = sim_stack
    record = stored(r, run(api, "What is the capital of Norway?"))
    for n in range(CACHE_MAX_ENTRIES):  # newer entries push it out of the response cache
        run(api, f"tell me about eviction number {n}")
    assert not r.hexists(keyspace.CACHE_ENTRIES, record["cache_digest"])
    calls = len(control.requests())
    job = submit(api, "what is the capital of norway")
    assert not job["cached"]
    assert not r.hexists(keyspace.cache_semantic(record["cache_partition"]), record["cache_digest"])
    assert api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    assert len(control.requests()) == calls + 1


def test_a_full_partition_drops_requests_whose_entries_are_gone_then_takes_no_more(sim_stack, api) -> None:
    _, _, r = sim_stack
    live = [stored(r, run(api, f"tell me about full partitions {n}"))["cache_digest"] for n in range(2)]
    partition = "f" * 64
    version = keyspace.cache_semantic_version(partition)

    def add(digest: str, query: str = "a question about bounds") -> str:
        return register(r, partition=partition, digest=digest, query=query, ttl_s=60, max_entries=2)

    assert [add(live[0]), add("0" * 64)] == ["stored", "stored"]
    before = r.get(version)
    assert add(live[1]) == "stored"  # the request whose entry is gone made room
    assert r.get(version) != before and sorted(r.hkeys(keyspace.cache_semantic(partition))) == sorted(live)
    assert add("1" * 64) == "full"
    assert add(live[0], "a reworded question about bounds") == "stored"  # already there: replaced
    assert add("2" * 64, "is it the?") == "empty"
    assert 0 < r.ttl(version) <= 60 and 0 < r.ttl(keyspace.cache_semantic(partition)) <= 60


def test_an_idempotency_key_still_compares_the_body_not_the_matched_request(sim_stack, api) -> None:
    _, _, r = sim_stack
    first = stored(r, run(api, "What is the capital of Peru?"))
    body = {"agent_type": "query", "query": "what is the capital of peru"}
    made = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "peru"})
    assert made.status_code == 202 and made.json()["cache_source"] == first["id"]
    again = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "peru"})
    assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
    first_body = {"agent_type": "query", "query": "What is the capital of Peru?"}
    assert api.post("/api/v1/jobs", json=first_body, headers={"Idempotency-Key": "peru"}).status_code == 422


def test_semantic_lookups_are_counted(sim_stack, api) -> None:
    stack, _, r = sim_stack
    stored(r, run(api, "What is the capital of Chile?"))
    assert run(api, "the capital of chile is what")["cached"]
    found = cache_operations(stack)
    # The API's counts; the workers' (`semantic_store`) are served on their own metrics port.
    assert found.get(("semantic_lookup", "hit"), 0) >= 1 and found.get(("semantic_lookup", "miss"), 0) >= 1, found
