"""Tracing: one trace from the API request through the worker to the LLM call, and trace ids with tracing off."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import redis

from events.store import keyspace
from events.telemetry import tracing
from tests.conftest import create_user
from tests.llmsim import SimControl, run_simulator
from tests.otlp import Receiver, Span
from tests.sse import read_events
from tests.stack import Proc, RedisServer, Stack, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (TRACEPARENT, TRACE_ID),
        (f" {TRACEPARENT} ", TRACE_ID),
        (f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-00", TRACE_ID),  # not sampled is still a trace
        (TRACEPARENT.upper(), ""),  # W3C: lowercase hex only
        (f"00-{'0' * 32}-{CLIENT_SPAN_ID}-01", ""),
        (f"00-{TRACE_ID}-{'0' * 16}-01", ""),
        (f"ff-{TRACE_ID}-{CLIENT_SPAN_ID}-01", ""),
        (f"00-{TRACE_ID[:-1]}-{CLIENT_SPAN_ID}-01", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_trace_id_is_read_only_from_a_valid_traceparent(header: str | None, trace_id: str) -> None:
    assert tracing.trace_id(header) == trace_id


def test_a_new_job_keeps_a_valid_incoming_trace_and_otherwise_gets_fresh_ids() -> None:
    assert tracing.new_traceparent(TRACEPARENT) == TRACEPARENT
    fresh = {tracing.trace_id(tracing.new_traceparent(bad)) for bad in (None, "", "nonsense", TRACEPARENT.upper())}
    assert len(fresh) == 4 and all(HEX32.match(t) for t in fresh)


def test_a_new_job_keeps_the_vendor_tracestate_of_a_valid_incoming_trace() -> None:
    kept = tracing.new_trace_context(TRACEPARENT, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert kept == {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}
    assert tracing.new_trace_context(TRACEPARENT) == {"traceparent": TRACEPARENT}
    assert "tracestate" not in tracing.new_trace_context("nonsense", "congo=t61rcWkgMzE")
    remote = tracing.parse(TRACEPARENT, "congo=t61rcWkgMzE")
    assert remote is not None and tracing.carrier(remote)["tracestate"] == "congo=t61rcWkgMzE"


def json_lines(proc: Proc) -> Iterator[dict[str, Any]]:
    """The JSON log lines a process printed (Celery's banner and the like are skipped)."""
    for line in proc.log().splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


@contextlib.contextmanager
def lifecycle_watch(redis_url: str) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """Keeps the lifecycle stream's new entries from being trimmed (a consumer group of its own that reads
    nothing) and gives a function returning a job's entries' data, oldest first."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    group = f"test-watch-{uuid.uuid4().hex[:8]}"
    client.xgroup_create(keyspace.LIFECYCLE_STREAM, group, id="$", mkstream=True)

    def entries(job_id: str) -> list[dict[str, Any]]:
        return [
            json.loads(fields["data"])
            for _, fields in client.xrange(keyspace.LIFECYCLE_STREAM)
            if fields.get("job_id") == job_id
        ]

    try:
        yield entries
    finally:
        client.xgroup_destroy(keyspace.LIFECYCLE_STREAM, group)
        client.close()


@pytest.fixture(scope="module")
def traced(logdir: Path) -> Iterator[tuple[Stack, SimControl, Receiver]]:
    """An API and a worker exporting spans to a stand-in collector; the worker calls the LLM simulator."""
    with Receiver() as receiver, run_simulator() as base_url:
        server = RedisServer(logdir).start()
        stack = Stack(
            server.url,
            logdir,
            OPENAI_API_KEY="sk-test-provider-key-0123456789",
            OPENAI_BASE_URL=base_url,
            DEFAULT_MODEL="gpt-4o-mini",
            LLM_TIMEOUT_S="5",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        )
        control = SimControl(base_url)
        try:
            stack.worker(concurrency=1, name="traced")
            stack.api()
            yield stack, control, receiver
        finally:
            control.close()
            stack.stop()
            server.stop()


def test_one_trace_joins_the_request_the_worker_and_each_llm_call(traced) -> None:
    stack, control, receiver = traced
    control.reset()
    control.config(tokens_per_s=0)
    control.script({"kind": "error", "status": 503}, {"kind": "text", "text": "traced answer"})
    _, key = create_user(stack.env["REDIS_URL"])
    with (
        lifecycle_watch(stack.env["REDIS_URL"]) as lifecycle,
        httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api,
    ):
        submitted = api.post(
            "/api/v1/jobs", json={"agent_type": "query", "query": "follow me"}, headers={"traceparent": TRACEPARENT}
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert submitted.json()["trace_id"] == TRACE_ID
        done = api.get(f"/api/v1/jobs/{job_id}", params={"wait": 30}).json()
        assert done["status"] == "succeeded" and done["result"] == "traced answer", done
        assert done["trace_id"] == TRACE_ID
        _, events = read_events(api, f"/api/v1/jobs/{job_id}/events")
        [queued] = [d for d in lifecycle(job_id) if d["status"] == "queued"]

    def whole_trace(spans: list[Span]) -> list[Span] | None:
        mine = [s for s in spans if s.trace_id == TRACE_ID]
        return (
            mine
            if sum(s.kind == "CLIENT" for s in mine) == 2
            and any(s.kind == "CONSUMER" for s in mine)
            and any(s.kind == "SERVER" for s in mine)
            else None
        )

    spans = receiver.wait_for(whole_trace)
    [server] = [s for s in spans if s.kind == "SERVER"]
    assert (server.service, server.name, server.parent_span_id) == ("agentic-api", "POST /api/v1/jobs", CLIENT_SPAN_ID)
    assert server.attributes["http.response.status_code"] == 202
    [worker] = [s for s in spans if s.kind == "CONSUMER"]
    assert (worker.service, worker.name, worker.parent_span_id) == ("agentic-worker", "run_agent query", server.span_id)
    assert worker.attributes["agentic.job.id"] == job_id and worker.attributes["agentic.job.attempt"] == 1
    assert worker.attributes["agentic.job.outcome"] == "succeeded" and worker.status == "UNSET"
    calls = [s for s in spans if s.kind == "CLIENT"]
    assert all(c.service == "agentic-worker" and c.name == "chat gpt-4o-mini" for c in calls)
    assert all(c.parent_span_id == worker.span_id for c in calls)
    failed, answered = sorted(calls, key=lambda c: c.status != "ERROR")
    assert failed.status == "ERROR" and failed.attributes["error.type"] == "server_error"
    assert answered.status == "UNSET" and answered.attributes["gen_ai.usage.output_tokens"] == 2
    assert answered.attributes["gen_ai.request.model"] == "gpt-4o-mini"

    # The LLM service was told which span called it.
    sent = [r["traceparent"] for r in control.requests()]
    assert sorted(sent) == sorted(f"00-{TRACE_ID}-{c.span_id}-01" for c in calls)

    # The job's events and the worker's log lines carry the trace id.
    assert queued["trace_id"] == TRACE_ID
    [start] = [e.data["data"] for e in events if e.event == "start"]
    assert start["trace_id"] == TRACE_ID
    [worker_proc] = [p for p in stack.procs if p.name.startswith("worker-traced")]
    finished = [line for line in json_lines(worker_proc) if line.get("job_id") == job_id and "status" in line]
    assert finished and finished[0]["trace_id"] == TRACE_ID and finished[0]["span_id"] == worker.span_id


def test_with_tracing_off_a_job_still_gets_a_trace_id_and_nothing_is_exported(
    stack: Stack, alice: httpx.Client
) -> None:
    with lifecycle_watch(stack.env["REDIS_URL"]) as lifecycle:
        submitted = alice.post("/api/v1/jobs", json={"agent_type": "query", "query": "no tracing here"})
        assert submitted.status_code == 202, submitted.text
        [queued] = [d for d in lifecycle(submitted.json()["id"]) if d["status"] == "queued"]
    job_id, trace_id = submitted.json()["id"], submitted.json()["trace_id"]
    assert HEX32.match(trace_id), trace_id
    done = alice.get(f"/api/v1/jobs/{job_id}", params={"wait": 30}).json()
    assert done["status"] == "succeeded" and done["trace_id"] == trace_id
    _, events = read_events(alice, f"/api/v1/jobs/{job_id}/events")
    [start] = [e.data["data"] for e in events if e.event == "start"]
    assert start["trace_id"] == trace_id
    assert queued["trace_id"] == trace_id
    workers = [p for p in stack.procs if p.name.startswith("worker-")]
    # The worker logs the outcome just after recording it: the client can see it first.
    lines = wait_for(
        lambda: [line for p in workers for line in json_lines(p) if line.get("job_id") == job_id],
        timeout=10,
        what="the worker's log lines of the job",
    )
    assert all(line["trace_id"] == trace_id and "span_id" not in line for line in lines)
    for proc in stack.procs:
        log = proc.log()
        assert "tracing on" not in log and "opentelemetry" not in log, proc.name


def test_with_tracing_off_a_job_keeps_the_callers_trace_id(alice: httpx.Client) -> None:
    mine = "4bf92f3577b34da6a3ce929d0e0e4736"
    submitted = alice.post(
        "/api/v1/jobs",
        json={"agent_type": "query", "query": "whose trace?"},
        headers={"traceparent": f"00-{mine}-00f067aa0ba902b7-01"},
    )
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["trace_id"] == mine
    malformed = alice.post(
        "/api/v1/jobs",
        json={"agent_type": "query", "query": "whose trace?"},
        headers={"traceparent": f"00-{mine.upper()}-00f067aa0ba902b7-01"},
    )
    assert malformed.json()["trace_id"] not in (mine, mine.upper())
