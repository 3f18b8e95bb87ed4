"""The seed's streaming routes: submit-and-stream in one response, the demo page, the relay's health."""

from __future__ import annotations

import httpx

from tests.sse import SSE, parse, read_events
from tests.stack import Stack


def test_post_stream_submits_and_streams_with_the_job_id_first(alice: httpx.Client) -> None:
    events = []
    with alice.stream("POST", "/api/v1/stream/query", json={"query": "What is 9*9?"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [e for e in parse(resp.iter_lines()) if isinstance(e, SSE)]
    assert events[0].event == "job"
    job_id = events[0].data["job_id"]
    assert resp.headers["location"] == f"/api/v1/jobs/{job_id}"
    assert events[1].event == "start" and events[-1].event == "done"
    assert "9*9 = 81" in events[-1].data["data"]["result"]
    _, resumed = read_events(alice, f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[2].id})
    assert [e.id for e in resumed] == [e.id for e in events[3:]]


def test_the_seeds_general_route_runs_the_agent_its_body_names(alice: httpx.Client) -> None:
    """The seed's own example: POST /stream/query with agent_type "math" is answered by the math agent."""
    body = {"query": "What is 2+2?", "agent_type": "math", "cache": False}
    with alice.stream("POST", "/api/v1/stream/query", json=body) as resp:
        events = [e for e in parse(resp.iter_lines()) if isinstance(e, SSE)]
    assert resp.status_code == 200 and events[-1].event == "done"
    assert alice.get(f"/api/v1/jobs/{events[0].data['job_id']}").json()["agent_type"] == "math"
    assert any(e.event == "tool_start" for e in events)  # the math agent's tools, not the query agent
    refused = alice.post("/api/v1/stream/code", json={"query": "print(1)", "agent_type": "math"})
    assert refused.status_code == 400 and "agent_type" in refused.json()["description"]  # the path names it


def stream_once(client: httpx.Client, path: str, body: dict, key: str) -> tuple[httpx.Response, list[SSE]]:
    with client.stream("POST", path, json=body, headers={"Idempotency-Key": key}) as resp:
        return resp, [e for e in parse(resp.iter_lines()) if isinstance(e, SSE)]


def test_post_stream_honours_idempotency_key_like_post_jobs(alice: httpx.Client) -> None:
    """A retried stream POST gets the same job, streamed again from its first event, and is never run twice."""
    body = {"query": "What is 6*7?", "cache": False}
    first, events = stream_once(alice, "/api/v1/stream/query", body, "stream-retry-1")
    again, replayed = stream_once(alice, "/api/v1/stream/query", body, "stream-retry-1")
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert replayed[0].data["job_id"] == events[0].data["job_id"]
    assert [e.id for e in replayed[1:]] == [e.id for e in events[1:]] and replayed[-1].event == "done"
    # The path names the agent, so the same key and body on another agent's route is another request.
    other = alice.post("/api/v1/stream/math", json=body, headers={"Idempotency-Key": "stream-retry-1"})
    assert other.status_code == 422 and other.json()["code"] == "idempotency_conflict"
    for bad in ("é".encode(), b"x" * 10_000, b"two words"):
        refused = alice.post("/api/v1/stream/query", json=body, headers={"Idempotency-Key": bad})
        assert refused.status_code == 400, (bad, refused.text)


def test_post_stream_to_an_unknown_agent_is_404(alice: httpx.Client) -> None:
    resp = alice.post("/api/v1/stream/astrology", json={"query": "hi"})
    assert resp.status_code == 404 and "query" in resp.json()["description"]


def test_post_stream_needs_a_key_and_validates_the_body(stack: Stack, alice: httpx.Client) -> None:
    assert httpx.post(f"{stack.url}/api/v1/stream/query", json={"query": "hi"}).status_code == 401
    assert alice.post("/api/v1/stream/query", json={"query": 3}).status_code == 400


def test_demo_page_and_stream_health_are_open(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/api/v1/stream/demo")
    assert page.status_code == 200 and "EventSource" in page.text
    assert page.headers["content-type"].startswith("text/html")
    health = httpx.get(f"{stack.url}/api/v1/stream/health").json()
    assert health["status"] == "ok" and "query" in health["agents"]
