"""Cancel and crash recovery with real workers: queued jobs never run, running ones stop, killed ones finish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from events.store import keyspace
from tests.conftest import create_user
from tests.sse import SSE, parse, read_events
from tests.stack import RedisServer, Stack, wait_for

pytestmark = pytest.mark.slow
LONG_QUERY = "Tell me about " + " ".join(f"w{i}" for i in range(60))


@pytest.fixture(scope="module")
def fault_stack(logdir: Path) -> Iterator[tuple[Stack, redis.Redis]]:
    """A stack of its own, slow tokens (100 ms), no worker until a test starts one."""
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, OFFLINE_TOKEN_DELAY_MS="100", SSE_HEARTBEAT_S="0.3")
    stack.events()
    stack.api()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    yield stack, client
    stack.stop()
    client.close()
    server.stop()


@pytest.fixture
def api(fault_stack: tuple[Stack, redis.Redis]) -> Iterator[httpx.Client]:
    stack, _ = fault_stack
    _, key = create_user(stack.env["REDIS_URL"])
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client


def submit(api: httpx.Client, query: str) -> str:
    resp = api.post("/api/v1/jobs", json={"agent_type": "query", "query": query})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def stream_types(r: redis.Redis, job_id: str) -> list[str]:
    return [fields["type"] for _, fields in r.xrange(keyspace.job_stream(job_id))]


def test_cancelling_a_queued_job_means_it_never_runs(fault_stack, api: httpx.Client) -> None:
    stack, r = fault_stack
    job_id = submit(api, "never run me")
    resp = api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200  # idempotent
    worker = stack.worker(concurrency=1, name="cancel")
    try:
        later = submit(api, "1+1")
        assert api.get(f"/api/v1/jobs/{later}", params={"wait": 30}).json()["status"] == "succeeded"
        wait_for(lambda: f"skipped job {job_id}" in worker.log(), timeout=10, what="the worker to skip the job")
        assert stream_types(r, job_id) == ["cancelled"]
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["started_at"] is None
        assert job["error"]["code"] == "cancelled"
    finally:
        worker.stop()


def test_an_idle_stream_gets_heartbeats_and_ends_with_the_cancel(fault_stack, api: httpx.Client) -> None:
    job_id = submit(api, "nobody runs me")  # no worker: the job stays queued
    comments, events = [], []
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
        assert resp.headers["cache-control"] == "no-cache" and resp.headers["x-accel-buffering"] == "no"
        for item in parse(resp.iter_lines()):
            if isinstance(item, SSE):
                events.append(item)
                continue
            comments.append(item)
            if comments.count("heartbeat") == 2:
                assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    assert comments[0] == "stream open" and comments.count("heartbeat") >= 2
    assert [e.event for e in events] == ["cancelled"]


def test_cancelling_a_running_job_stops_it_within_one_second(fault_stack, api: httpx.Client) -> None:
    stack, _ = fault_stack
    worker = stack.worker(concurrency=1, name="stopper")
    try:
        job_id = submit(api, LONG_QUERY)
        events: list[SSE] = []
        with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
            cancelled_at = None
            for item in parse(resp.iter_lines()):
                if not isinstance(item, SSE):
                    continue
                events.append(item)
                if item.event == "token" and cancelled_at is None:
                    answer = api.post(f"/api/v1/jobs/{job_id}/cancel")
                    assert answer.status_code == 202 and answer.json()["cancel_requested"]
                    cancelled_at = time.monotonic()
                if item.event in ("done", "error", "cancelled"):
                    stopped_after = time.monotonic() - cancelled_at
                    break
        assert events[-1].event == "cancelled"
        assert stopped_after < 1.0, f"the job stopped {stopped_after:.2f}s after the cancel"
        assert events[-1].data["data"]["usage"]["output_tokens"] >= 1  # the partial spend is reported
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled"
        assert api.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    finally:
        worker.stop()


def test_cancel_of_a_finished_job_is_a_conflict(fault_stack, api: httpx.Client) -> None:
    stack, _ = fault_stack
    worker = stack.worker(concurrency=1, name="conflict")
    try:
        job_id = submit(api, "2*3")
        assert api.get(f"/api/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
        resp = api.post(f"/api/v1/jobs/{job_id}/cancel")
        assert resp.status_code == 409 and resp.json()["code"] == "job_finished"
    finally:
        worker.stop()


def test_a_job_whose_worker_is_killed_finishes_as_attempt_two(fault_stack, api: httpx.Client) -> None:
    stack, r = fault_stack
    doomed = stack.worker(concurrency=1, name="doomed")
    job_id = submit(api, LONG_QUERY)
    wait_for(lambda: "token" in stream_types(r, job_id), timeout=30, what="the first token")
    doomed.kill()  # SIGKILL to the worker and its pool children: no goodbye, no ack
    started = time.monotonic()
    rescuer = stack.worker(concurrency=1, name="rescuer")
    try:
        job = api.get(f"/api/v1/jobs/{job_id}", params={"wait": 60}).json()
        assert job["status"] == "succeeded", job
        assert time.monotonic() - started < 60
        assert job["attempts"] == 2
        _, events = read_events(api, f"/api/v1/jobs/{job_id}/events")
        starts = [e.data["attempt"] for e in events if e.event == "start"]
        assert starts == [1, 2]
        notes = [e.data["data"] for e in events if e.event == "metadata"]
        lost = [n for n in notes if n.get("event") == "attempt_lost"]
        assert lost == [{"event": "attempt_lost", "attempt": 1, "next_attempt": 2}]
        assert events[-1].event == "done" and events[-1].data["attempt"] == 2
        assert [e.data["seq"] for e in events] == list(range(len(events)))
        assert not r.exists(keyspace.job_lease(job_id))
    finally:
        rescuer.stop()
