"""The job pipeline end to end: real Redis, real Celery workers, the real API over HTTP."""

from __future__ import annotations

import threading

import httpx
import redis

from events.process.lifecycle import read_counts
from events.store import keyspace
from tests.sse import read_events
from tests.stack import Stack, run_all, wait_for


def submit(client: httpx.Client, query: str = "What is (2+3)*4?", **extra: object) -> dict:
    resp = client.post("/api/v1/jobs", json={"agent_type": "query", "query": query, **extra})
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_submit_then_poll_returns_the_answer_and_token_usage(alice: httpx.Client) -> None:
    job = submit(alice)
    assert job["status"] == "queued"
    done = alice.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()
    assert done["status"] == "succeeded"
    assert "(2+3)*4 = 20" in done["result"]
    assert done["result"].startswith("[offline model]")
    assert done["usage"]["output_tokens"] > 0 and done["usage"]["input_tokens"] > 0
    assert done["usage"]["llm_calls"] == 2
    assert done["attempts"] == 1
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]


def test_submit_answers_202_with_location_and_stream_url(alice: httpx.Client) -> None:
    resp = alice.post("/api/v1/jobs", json={"agent_type": "query", "query": "hello"})
    assert resp.status_code == 202
    job = resp.json()
    assert resp.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["stream_url"].startswith(f"/api/v1/jobs/{job['id']}/events?token=")
    assert "hold_usd" in job


def test_event_stream_is_complete_and_in_order(alice: httpx.Client) -> None:
    job = submit(alice)
    status, events = read_events(alice, f"/api/v1/jobs/{job['id']}/events")
    assert status == 200
    types = [e.event for e in events]
    assert types[0] == "start" and types[-1] == "done"
    assert [e.data["seq"] for e in events] == list(range(len(events)))
    ids = [tuple(map(int, e.id.split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {"tool_start", "tool_end", "token", "usage"} <= set(types)
    text = "".join(e.data["data"]["text"] for e in events if e.event == "token" and e.data["data"]["call"] == 1)
    assert text == events[-1].data["data"]["result"]


def test_resume_with_last_event_id_delivers_every_event_exactly_once(alice: httpx.Client) -> None:
    job = submit(alice, query="Please count the words of this rather long question about resuming streams.")
    url = f"/api/v1/jobs/{job['id']}/events"
    _, first = read_events(alice, url, limit=5)  # disconnect mid-stream
    assert len(first) == 5
    status, rest = read_events(alice, url, headers={"Last-Event-ID": first[-1].id})
    assert status == 200
    _, replay = read_events(alice, url)
    assert [e.id for e in first + rest] == [e.id for e in replay]
    assert [e.data["seq"] for e in first + rest] == list(range(len(replay)))


def test_a_last_event_id_with_leading_zeros_is_the_same_id(alice: httpx.Client) -> None:
    job = submit(alice)
    url = f"/api/v1/jobs/{job['id']}/events"
    _, replay = read_events(alice, url)
    ms, seq = replay[1].id.split("-")
    status, rest = read_events(alice, url, headers={"Last-Event-ID": f"00{ms}-000{seq}"})
    assert status == 200 and [e.id for e in rest] == [e.id for e in replay[2:]]
    status, everything = read_events(alice, url, headers={"Last-Event-ID": "00-000"})  # as from the start
    assert status == 200 and [e.id for e in everything] == [e.id for e in replay]


def test_late_subscriber_gets_the_whole_replay(alice: httpx.Client) -> None:
    job = submit(alice)
    live_status, live = read_events(alice, f"/api/v1/jobs/{job['id']}/events")
    assert alice.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    status, late = read_events(alice, f"/api/v1/jobs/{job['id']}/events")
    assert status == live_status == 200
    assert [(e.id, e.data) for e in late] == [(e.id, e.data) for e in live]


def test_stream_after_the_terminal_event_or_after_expiry_answers_204(alice: httpx.Client, r: redis.Redis) -> None:
    job = submit(alice)
    _, events = read_events(alice, f"/api/v1/jobs/{job['id']}/events")
    resp = alice.get(f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": events[-1].id})
    assert resp.status_code == 204
    r.delete(keyspace.job_stream(job["id"]))  # as when the stream's TTL runs out
    assert alice.get(f"/api/v1/jobs/{job['id']}/events").status_code == 204


def test_stream_url_token_works_without_an_api_key(alice: httpx.Client, stack: Stack) -> None:
    job = submit(alice)
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        status, events = read_events(anonymous, job["stream_url"])
        assert status == 200 and events[-1].event == "done"
        other = submit(alice)
        forged = f"/api/v1/jobs/{other['id']}/events?" + job["stream_url"].split("?")[1]
        assert anonymous.get(forged).status_code == 401
        assert anonymous.get(f"/api/v1/jobs/{job['id']}").status_code == 401


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(alice: httpx.Client) -> None:
    body = {"agent_type": "query", "query": "idempotent?"}
    first = alice.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = alice.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    other = alice.post("/api/v1/jobs", json={**body, "query": "something else"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_conflict"


def test_list_shows_only_own_jobs_with_status_filter_and_paging(alice: httpx.Client, user_factory, stack: Stack):
    mine = [submit(alice, query=f"q{i}")["id"] for i in range(5)]
    _, bob_key = user_factory("user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {bob_key}"}) as bob:
        submit(bob)
        assert all(j["id"] not in mine for j in bob.get("/api/v1/jobs").json()["jobs"])
    for job_id in mine:
        alice.get(f"/api/v1/jobs/{job_id}", params={"wait": 30})
    seen, cursor = [], None
    while True:
        page = alice.get("/api/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(mine) and len(seen) == len(set(seen))
    done = alice.get("/api/v1/jobs", params={"status": "succeeded", "limit": 100}).json()["jobs"]
    assert {j["id"] for j in done} == set(mine)
    assert alice.get("/api/v1/jobs", params={"status": "queued"}).json()["jobs"] == []


def test_admin_sees_every_users_jobs(alice: httpx.Client, user_factory, stack: Stack) -> None:
    job = submit(alice)
    _, admin_key = user_factory("admin")
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": admin_key}) as admin:
        assert admin.get(f"/api/v1/jobs/{job['id']}").status_code == 200
        ids = {j["id"] for j in admin.get("/api/v1/jobs", params={"limit": 100}).json()["jobs"]}
        assert job["id"] in ids


def test_lifecycle_consumer_counts_every_transition(alice: httpx.Client, r: redis.Redis) -> None:
    before = read_counts(r)
    jobs = [submit(alice, query=f"count {i}")["id"] for i in range(3)]
    for job_id in jobs:
        assert alice.get(f"/api/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"

    def counted() -> bool:
        now = read_counts(r)
        return all(now.get(k, 0) - before.get(k, 0) >= 3 for k in ("submitted", "started", "succeeded"))

    wait_for(counted, timeout=15, what="lifecycle counts")


def test_clients_opening_a_stream_right_after_submitting_each_get_every_event(alice: httpx.Client) -> None:
    def follow(job_id: str, results: list) -> None:
        results.append(read_events(alice, f"/api/v1/jobs/{job_id}/events", timeout=60)[1])

    for _ in range(10):
        job = submit(alice)
        results: list = []
        readers = [threading.Thread(target=follow, args=(job["id"], results)) for _ in range(4)]
        run_all(readers)
        assert len(results) == 4
        for events in results:
            assert events[0].event == "start", [e.event for e in events][:5]
            assert [e.data["seq"] for e in events] == list(range(len(events)))
            assert events[-1].event == "done"


def test_a_last_event_id_past_the_end_still_ends_when_the_job_does(alice: httpx.Client) -> None:
    job = submit(alice, query="Count the words of this question, which is long enough to run a while.")
    got: list = []
    reader = threading.Thread(
        daemon=True,
        target=lambda: got.append(
            read_events(
                alice,
                f"/api/v1/jobs/{job['id']}/events",
                headers={"Last-Event-ID": "999999999999999-999999999999999"},
                timeout=60,
            )
        ),
    )
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "the stream stayed open after the job ended"
    status, events = got[0]
    assert alice.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    assert status == 204 or events[-1].event == "done"
