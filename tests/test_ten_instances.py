"""Ten API instances behind nginx on one machine (the seed's "10+ instances"): a short load of jobs and streams
all completes, and a real Prometheus adds the instances' metrics up to exactly what was sent, while the figures
every instance reads from Redis agree and are taken once (max), not ten times."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Iterator

import httpx
import pytest

from tests.balancer import Nginx
from tests.conftest import create_user
from tests.prom import Prometheus
from tests.sse import SSE, read_events
from tests.stack import RedisServer, Stack, free_port, run_all, wait_for

INSTANCES = 10
JOBS = 60
STREAMS = 20


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, Prometheus, list[int], str]]:
    logdir = tmp_path_factory.mktemp("ten-logs")
    server = RedisServer(logdir).start()
    stack = Stack(
        server.url, logdir, TRUSTED_PROXIES="127.0.0.1", RATE_LIMIT_PER_MIN="100000", OFFLINE_TOKEN_DELAY_MS="5"
    )
    prometheus = None
    try:
        stack.events(wait=False)
        worker_port = free_port()
        stack.worker(concurrency=4, metrics_port=worker_port, wait=False)
        ports = [free_port() for _ in range(INSTANCES)]
        for port in ports:
            stack.api(workers=1, port=port, wait=False)
        stack.ready()  # all of them started side by side
        nginx = Nginx(tmp_path_factory.mktemp("ten-nginx"), ports).start()
        prometheus = Prometheus(
            stack, tmp_path_factory.mktemp("ten-prom"), {"api": ports, "workers": [worker_port]}
        ).start()
        _, key = create_user(server.url, "user", prefix="ten")
        yield nginx, prometheus, ports, key
        nginx.stop()
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()
        server.stop()


def test_ten_instances_serve_a_short_load_and_prometheus_adds_them_up(fleet) -> None:
    nginx, prometheus, ports, key = fleet
    headers = {"Authorization": f"Bearer {key}"}
    jobs: list[dict[str, Any]] = []
    streamed: list[list[SSE]] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        with httpx.Client(base_url=nginx.url, headers=headers, timeout=60) as c:
            for i in range(n):
                resp = c.post(
                    "/api/v1/jobs",
                    json={"agent_type": "query", "query": f"ten instances {i}"},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                assert resp.status_code == 202, resp.text
                job = resp.json()
                with lock:
                    jobs.append(job)
                    follow = len(jobs) <= STREAMS
                if follow:
                    status, events = read_events(c, f"/api/v1/jobs/{job['id']}/events", timeout=60)
                    assert status == 200
                    with lock:
                        streamed.append(events)

    run_all([threading.Thread(target=submit, args=(JOBS // 10,)) for _ in range(10)])
    assert len(jobs) == JOBS
    with httpx.Client(base_url=nginx.url, headers=headers, timeout=60) as c:
        finished = [c.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json() for job in jobs]
    assert [job["status"] for job in finished] == ["succeeded"] * JOBS
    assert len(streamed) == STREAMS
    for events in streamed:
        assert [e.data["seq"] for e in events] == list(range(len(events))) and events[-1].event == "done"
    # Every instance takes submits. An instance nginx's passive health check set aside for a moment during the short
    # load (a slow start on a busy machine) may have missed it: a few more submits reach it, or the test fails.
    everyone = {f"127.0.0.1:{port}" for port in ports}
    sent = JOBS
    with httpx.Client(base_url=nginx.url, headers=headers, timeout=60) as c:
        for n in range(100):
            served = {line["up"] for line in nginx.access_log() if line["path"] == "/api/v1/jobs"}
            if served == everyone:
                break
            more = c.post("/api/v1/jobs", json={"agent_type": "query", "query": f"one more {n}"})
            assert more.status_code == 202, more.text
            assert c.get(f"/api/v1/jobs/{more.json()['id']}", params={"wait": 30}).json()["status"] == "succeeded"
            sent += 1
    assert served == everyone

    submits = 'http_requests_total{route="/api/v1/jobs",method="POST",status="202"}'
    wait_for(lambda: prometheus.value('count(up{job="api"} == 1)') == INSTANCES, timeout=60, what="ten targets up")
    # Per-process counters add up across instances to exactly what was sent ...
    wait_for(lambda: prometheus.value(f"sum({submits})") == sent, timeout=60, what="every submit counted once")
    assert prometheus.value(f"count({submits} > 0)") == INSTANCES
    # ... and the workers' count of finished jobs matches.
    assert prometheus.value('sum(agent_queries_total{status="succeeded"})') == sent
    # The figures read from Redis are the same on every instance: max == min == the truth, never a ten-fold sum.
    succeeded = 'agentic_jobs_total{status="succeeded"}'

    def agreed() -> bool:
        return prometheus.value(f"max({succeeded})") == prometheus.value(f"min({succeeded})") == sent

    wait_for(agreed, timeout=60, what="every instance reporting the lifecycle count")
    assert prometheus.value(f"sum({succeeded})") == sent * INSTANCES  # which is why dashboards take max
