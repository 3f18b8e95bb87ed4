"""Monitoring end to end: two API instances (two gunicorn workers each) and two Celery workers (two pool
processes each) serve their metrics; known traffic must add up exactly, in our own scrape, in a real
Prometheus scraping ops/prometheus/prometheus.yml's jobs, and in Flower."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import create_user
from tests.stack import ROOT, Proc, RedisServer, Stack, free_port, wait_for

PRICES = str(ROOT / "tests" / "data" / "prices.yaml")
JOBS = 8
BAD_KEYS = 5
DENIED = 3
FLOWER_PASSWORD = "flower-test-pw-7c1"
STALL_S = 5


class Cluster:
    """The processes of this module and the keys and figures the tests share."""

    def __init__(self, stack: Stack, api_ports: list[int], worker_ports: list[int], flower_port: int) -> None:
        self.stack = stack
        self.api_ports = api_ports
        self.worker_ports = worker_ports
        self.flower_port = flower_port
        self.keys: dict[str, str] = {}
        self.jobs: list[dict[str, Any]] = []

    def client(self, role: str, port: int) -> httpx.Client:
        """An HTTP client of one API instance with the key of `role`."""
        return httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {self.keys[role]}"}
        )

    def scrape_all(self) -> list[tuple[str, dict[str, str], float]]:
        """The samples of every API instance and every worker, as Prometheus would collect them."""
        found = []
        for port in self.api_ports:
            with self.client("readonly", port) as client:
                found += samples(client.get("/api/v1/monitoring/metrics").text)
        for port in self.worker_ports:
            found += samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        return found


def samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of one exposition."""
    return [
        (s.name, s.labels, s.value) for family in text_string_to_metric_families(exposition) for s in family.samples
    ]


def total(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (what Prometheus' sum() gives)."""
    return sum(v for n, lab, v in found if n == name and all(lab.get(k) == x for k, x in labels.items()))


def largest(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Largest matching sample (what Prometheus' max() gives for the system gauges)."""
    values = [v for n, lab, v in found if n == name and all(lab.get(k) == x for k, x in labels.items())]
    return max(values) if values else float("nan")


@pytest.fixture(scope="module")
def cluster(logdir: Path) -> Iterator[Cluster]:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, PRICES_FILE=PRICES, OFFLINE_TOKEN_DELAY_MS="1", CONSUMER_STALL_S=str(STALL_S))
    api_ports, worker_ports, flower_port = [free_port(), free_port()], [free_port(), free_port()], free_port()
    try:
        stack.events(wait=False)
        for i, port in enumerate(worker_ports):
            stack.worker(concurrency=2, name=f"m{i}", metrics_port=port, wait=False)
        for port in api_ports:
            stack.api(workers=2, port=port, wait=False)
        stack.flower(flower_port, f"admin:{FLOWER_PASSWORD}", wait=False)
        stack.ready()
        found = Cluster(stack, api_ports, worker_ports, flower_port)
        for role in ("admin", "user", "readonly"):
            found.keys[role] = create_user(server.url, role)[1]
        _drive_traffic(found)
        yield found
    finally:
        stack.stop()
        server.stop()


def _drive_traffic(c: Cluster) -> None:
    """JOBS jobs split over both instances, BAD_KEYS unknown keys, DENIED submits by a read-only user."""
    ids = []
    for i in range(JOBS):
        with c.client("user", c.api_ports[i % 2]) as client:
            reply = client.post("/api/v1/jobs", json={"agent_type": "query", "query": f"what is {i} + 2?"})
            assert reply.status_code == 202, reply.text
            ids.append(reply.json()["id"])
    for i in range(BAD_KEYS):
        reply = httpx.post(
            f"http://127.0.0.1:{c.api_ports[i % 2]}/api/v1/jobs",
            json={"agent_type": "query", "query": "x"},
            headers={"Authorization": "Bearer sk_live_" + "A" * 43},
            timeout=10,
        )
        assert reply.status_code == 401
    for i in range(DENIED):
        with c.client("readonly", c.api_ports[i % 2]) as client:
            assert client.post("/api/v1/jobs", json={"agent_type": "query", "query": "x"}).status_code == 403
    with c.client("user", c.api_ports[0]) as client:
        for job_id in ids:
            job = wait_for(
                lambda j=job_id: when(
                    client.get(f"/api/v1/jobs/{j}", params={"wait": 5}).json(), lambda x: x["status"] == "succeeded"
                ),
                timeout=60,
                what=f"job {job_id}",
            )
            c.jobs.append(job)


def when(value: Any, test: Any) -> Any:
    """`value` if `test(value)`, else None (for wait_for)."""
    return value if test(value) else None


def test_sums_over_two_instances_and_two_workers_match_the_traffic(cluster: Cluster) -> None:
    tokens_in = sum(j["usage"]["input_tokens"] for j in cluster.jobs)
    tokens_out = sum(j["usage"]["output_tokens"] for j in cluster.jobs)
    cost = sum(float(j["usage"]["cost_usd"]) for j in cluster.jobs)
    assert cost > 0 and tokens_in > 0
    found = cluster.scrape_all()

    assert total(found, "http_requests_total", method="POST", route="/api/v1/jobs", status="202") == JOBS
    assert total(found, "http_requests_total", method="POST", route="/api/v1/jobs", status="401") == BAD_KEYS
    assert total(found, "http_requests_total", method="POST", route="/api/v1/jobs", status="403") == DENIED
    assert (
        total(found, "http_request_duration_seconds_count", method="POST", route="/api/v1/jobs")
        == JOBS + BAD_KEYS + DENIED
    )
    assert total(found, "auth_attempts_total", method="api_key", result="failure") == BAD_KEYS
    assert total(found, "permission_checks_total", permission="jobs:submit", result="allowed") == JOBS
    assert total(found, "permission_checks_total", permission="jobs:submit", result="denied") == DENIED
    # Both instances served requests, from more than one gunicorn worker in all.
    per_instance = []
    for port in cluster.api_ports:
        with cluster.client("readonly", port) as client:
            per_instance.append(
                total(
                    samples(client.get("/api/v1/monitoring/metrics").text),
                    "http_requests_total",
                    method="POST",
                    route="/api/v1/jobs",
                    status="202",
                )
            )
    assert per_instance == [JOBS / 2, JOBS / 2]

    assert total(found, "agent_queries_total", agent_type="query", status="succeeded") == JOBS
    assert total(found, "agent_query_duration_seconds_count", agent_type="query") == JOBS
    assert total(found, "api_tokens_total", type="input") == tokens_in
    assert total(found, "api_tokens_total", type="output") == tokens_out
    assert total(found, "api_cost_dollars_total") == pytest.approx(cost, abs=1e-9)
    assert total(found, "llm_calls_total") == sum(j["usage"]["llm_calls"] for j in cluster.jobs)

    # System state: every instance reports the same, so max() is the figure.
    wait_for(
        lambda: largest(cluster.scrape_all(), "agentic_jobs_total", status="succeeded") == JOBS,
        timeout=20,
        what="the lifecycle counts",
    )
    found = cluster.scrape_all()
    assert largest(found, "agentic_jobs_total", status="submitted") == JOBS
    assert largest(found, "agentic_workers_up") == 2
    assert largest(found, "agentic_queue_depth", queue="agents") == 0
    assert largest(found, "agentic_budget_holds") == 0
    assert largest(found, "agentic_dead_letters", group="ledger") == 0
    # The user and the read-only user made requests (the admin has not yet): two active sessions.
    wait_for(lambda: largest(cluster.scrape_all(), "active_sessions") == 2, timeout=10, what="two active users")


def children(pid: int) -> list[int]:
    """The PIDs of a process's children."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_counts_survive_a_killed_gunicorn_worker_and_a_killed_pool_process(cluster: Cluster) -> None:
    api_proc = next(p for p in cluster.stack.procs if p.name == f"api-{cluster.api_ports[0]}")
    worker_proc = next(p for p in cluster.stack.procs if p.name.startswith("worker-m0"))
    before = cluster.scrape_all()
    api_child, pool_child = children(api_proc.pid)[0], children(worker_proc.pid)[0]
    os.kill(api_child, signal.SIGKILL)
    os.kill(pool_child, signal.SIGKILL)
    wait_for(
        lambda: len(children(api_proc.pid)) == 2 and api_child not in children(api_proc.pid),
        timeout=30,
        what="gunicorn to replace its worker",
    )
    wait_for(
        lambda: len(children(worker_proc.pid)) == 2 and pool_child not in children(worker_proc.pid),
        timeout=30,
        what="Celery to replace its pool process",
    )
    after = cluster.scrape_all()
    for name, labels in (
        ("http_requests_total", {"route": "/api/v1/jobs", "status": "202"}),
        ("auth_attempts_total", {"result": "failure"}),
        ("agent_queries_total", {"status": "succeeded"}),
        ("api_tokens_total", {}),
        ("api_cost_dollars_total", {}),
    ):
        assert total(after, name, **labels) == total(before, name, **labels), name
    # The dead worker's live gauge went with it: only the scrape in flight is active on that instance.
    with cluster.client("readonly", cluster.api_ports[0]) as client:
        assert total(samples(client.get("/api/v1/monitoring/metrics").text), "active_requests") == 1


def test_worker_processes_that_ran_jobs_each_wrote_samples(cluster: Cluster) -> None:
    per_worker = [
        total(samples(httpx.get(f"http://127.0.0.1:{p}/metrics").text), "agent_queries_total")
        for p in cluster.worker_ports
    ]
    assert sum(per_worker) == JOBS


def test_promtool_check_metrics_accepts_our_exposition(cluster: Cluster) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (ops/install.sh test installs it)")
    with cluster.client("readonly", cluster.api_ports[0]) as client:
        api = client.get("/api/v1/monitoring/metrics")
    assert api.headers["content-type"].startswith("text/plain; version=0.0.4")
    worker = httpx.get(f"http://127.0.0.1:{cluster.worker_ports[0]}/metrics").text
    for text in (api.text, worker):
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr


def test_metrics_need_a_key_with_the_metrics_permission(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{cluster.api_ports[0]}/api/v1/monitoring"
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/summary").status_code == 401
    with cluster.client("user", cluster.api_ports[0]) as client:
        assert client.get("/api/v1/monitoring/metrics").status_code == 200
        assert client.post("/api/v1/monitoring/record", json={"name": "x_events"}).status_code == 403


def test_flower_sees_both_workers_behind_basic_auth(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{cluster.flower_port}"
    assert httpx.get(f"{url}/api/workers").status_code == 401
    auth = ("admin", FLOWER_PASSWORD)
    assert httpx.get(f"{url}/api/workers", auth=("admin", "wrong")).status_code == 401
    workers = wait_for(
        lambda: when(
            httpx.get(f"{url}/api/workers", params={"refresh": 1}, auth=auth, timeout=10).json(), lambda w: len(w) == 2
        ),
        timeout=30,
        what="both workers in Flower",
    )
    assert sorted(name.split("@")[0] for name in workers) == ["m0", "m1"]
    for info in workers.values():
        assert "agentic.run_agent" in info["registered"]
    assert "flower_" in httpx.get(f"{url}/metrics", auth=auth).text


def _prometheus_config(cluster: Cluster, workdir: Path, prom_port: int) -> Path:
    """ops/prometheus/prometheus.yml for this module's targets, by `agentic prometheus-config` (as make run does)."""
    password = workdir / "flower.pw"
    password.write_text(FLOWER_PASSWORD)
    args = [
        "prometheus-config",
        "--out",
        str(workdir),
        "--flower",
        f"127.0.0.1:{cluster.flower_port}",
        "--flower-password-file",
        str(password),
        "--self",
        f"127.0.0.1:{prom_port}",
        "--interval",
        "1s",
    ]
    args += [f"--api=127.0.0.1:{p}" for p in cluster.api_ports]
    args += [f"--workers=127.0.0.1:{p}" for p in cluster.worker_ports]
    done = cluster.stack.cli(*args)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((workdir / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["api", "workers", "flower", "prometheus"]
    return workdir / "prometheus.yml"


def test_a_real_prometheus_scrapes_the_stack_and_adds_up_the_traffic(cluster: Cluster, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (ops/install.sh test installs it)")
    port = free_port()
    config = _prometheus_config(cluster, tmp_path, port)
    proc = Proc(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
        ],
        {},
        tmp_path,
    ).start()
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def value(expr: str) -> float | None:
        result = query(expr)
        return float(result[0]["value"][1]) if result else None

    try:
        try:
            up = wait_for(
                lambda: when(query("up"), lambda r: len(r) == 6 and all(x["value"][1] == "1" for x in r)),
                timeout=60,
                what="every target up",
            )
        except TimeoutError as ex:
            raise AssertionError(json.dumps(_targets(api))) from ex
        assert sorted(x["metric"]["job"] for x in up) == ["api", "api", "flower", "prometheus", "workers", "workers"]
        tokens = sum(j["usage"]["input_tokens"] + j["usage"]["output_tokens"] for j in cluster.jobs)
        cost = sum(float(j["usage"]["cost_usd"]) for j in cluster.jobs)
        assert value('sum(http_requests_total{route="/api/v1/jobs",method="POST",status="202"})') == JOBS
        assert value("sum(api_tokens_total)") == tokens
        assert value("sum(api_cost_dollars_total)") == pytest.approx(cost, abs=1e-9)
        assert value('sum(auth_attempts_total{result="failure",method="api_key"})') == BAD_KEYS
        assert value('max(agentic_jobs_total{status="succeeded"})') == JOBS
        assert value("max(agentic_workers_up)") == 2
        assert value("count(flower_worker_online)") is not None
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert rules and all(rule["health"] != "err" for g in rules for rule in g["rules"])
    finally:
        proc.stop()


def _targets(api: str) -> list[dict[str, Any]]:
    try:
        active = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
    except httpx.HTTPError:
        return []
    return [{"job": t["labels"]["job"], "health": t["health"], "error": t["lastError"]} for t in active]


def test_custom_metrics_through_record_are_validated_bounded_and_exported(cluster: Cluster) -> None:
    with (
        cluster.client("admin", cluster.api_ports[0]) as admin,
        cluster.client("readonly", cluster.api_ports[1]) as reader,
    ):
        ok = admin.post("/api/v1/monitoring/record", json={"name": "signups_total", "labels": {"source": "web"}})
        assert ok.status_code == 201, ok.text
        admin.post("/api/v1/monitoring/record", json={"name": "signups_total", "labels": {"source": "web"}, "value": 2})
        assert admin.post("/api/v1/monitoring/record", json={"name": "signups", "kind": "gauge"}).status_code == 409
        assert (
            admin.post(
                "/api/v1/monitoring/record", json={"name": "signups_total", "labels": {"other": "x"}}
            ).status_code
            == 409
        )
        for bad in (
            {"name": "http_requests_total"},
            {"name": "agentic_x"},
            {"name": "9lives"},
            {"name": "ok_name", "value": -1},
            {"name": "ok_name", "labels": {"le": "1"}},
            {"name": "depth_sum", "kind": "gauge"},
            {"name": "ok_name", "kind": "summary"},
        ):
            reply = admin.post("/api/v1/monitoring/record", json=bad)
            assert reply.status_code == 400, (bad, reply.text)
            assert reply.json()["code"] in ("invalid_metric", "invalid_field", "invalid_request"), reply.text
        assert (
            admin.post(
                "/api/v1/monitoring/record", json={"name": "queue_size", "kind": "gauge", "value": 42}
            ).status_code
            == 201
        )
        for i in range(100):
            reply = admin.post(
                "/api/v1/monitoring/record", json={"name": "per_tenant_total", "labels": {"tenant": f"t{i}"}}
            )
            assert reply.status_code == 201
        # The 101st label set is refused on every instance: the bound is shared through Redis.
        reply = reader.post("/api/v1/monitoring/record", json={"name": "per_tenant_total", "labels": {"tenant": "x"}})
        assert reply.status_code == 403
        with cluster.client("admin", cluster.api_ports[1]) as other:
            reply = other.post(
                "/api/v1/monitoring/record", json={"name": "per_tenant_total", "labels": {"tenant": "t101"}}
            )
        assert reply.status_code == 422 and reply.json()["code"] == "too_many_series"
        found = samples(admin.get("/api/v1/monitoring/metrics").text)
        assert total(found, "signups_total", source="web") == 3
        assert total(found, "queue_size") == 42
        assert total(found, "per_tenant_total") == 100


def test_summary_health_and_info(cluster: Cluster) -> None:
    with cluster.client("readonly", cluster.api_ports[0]) as client:
        summary = client.get("/api/v1/monitoring/summary").json()
        info = client.get("/api/v1/monitoring/info").json()
    assert summary["instance"]["requests"] > 0
    assert summary["instance"]["auth"]["failure"] >= BAD_KEYS // 2
    assert summary["system"]["jobs"]["counts"]["succeeded"] == JOBS
    assert summary["system"]["workers_up"] == 2
    assert summary["system"]["usage"]["calls"] == sum(j["usage"]["llm_calls"] for j in cluster.jobs)
    health = httpx.get(f"http://127.0.0.1:{cluster.api_ports[1]}/api/v1/monitoring/health").json()
    assert health["status"] == "ok", health
    assert set(health["checks"]) == {"redis", "broker", "workers", "consumers"}
    assert health["checks"]["workers"]["seen"] == 2
    assert health["checks"]["consumers"]["groups"]["ledger"]["lag"] == 0
    assert all("latency_ms" in check for check in health["checks"].values() if check["status"] == "ok")
    assert info["provider"]["mode"] == "offline" and info["metrics"]["multiprocess"] is True
    assert cluster.stack.env["AGENTIC_SECRET_KEY"] not in json.dumps(info)


def test_price_cache_lookups_are_counted(cluster: Cluster) -> None:
    # Runs last: its tracked usage adds to the cost and token totals the tests above check.
    tracked, _ = create_user(cluster.stack.env["REDIS_URL"], "user")
    with cluster.client("admin", cluster.api_ports[0]) as admin:
        for _ in range(4):  # two gunicorn workers: one of them looks gpt-4o up at least twice
            reply = admin.post(
                "/api/v1/costs/track",
                json={"user_id": tracked, "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500},
            )
            assert reply.status_code == 201, reply.text
        found = samples(admin.get("/api/v1/monitoring/metrics").text)
    assert total(found, "cache_operations_total", operation="price_lookup", result="miss") >= 1
    assert total(found, "cache_operations_total", operation="price_lookup", result="hit") >= 1
    assert total(found, "cache_size_bytes", cache="prices") > 0
    assert total(found, "api_cost_dollars_total", model="gpt-4o") == pytest.approx(4 * 0.0075)


def test_consumers_that_stopped_reading_mark_health_degraded(cluster: Cluster) -> None:
    # Runs after the other tests of the cluster: it stops the events process for good.
    with cluster.client("readonly", cluster.api_ports[0]) as client:
        health = client.get("/api/v1/monitoring/health").json()
        assert health["checks"]["consumers"]["status"] == "ok", health
        assert health["checks"]["consumers"]["groups"]["lifecycle"]["consumers"] >= 1
        next(p for p in cluster.stack.procs if p.name == "events").kill()
        with cluster.client("user", cluster.api_ports[0]) as user:
            assert user.post("/api/v1/jobs", json={"agent_type": "query", "query": "1+1"}).status_code == 202

        def stalled() -> dict[str, Any] | None:
            found = client.get("/api/v1/monitoring/health").json()
            return found if found["checks"]["consumers"]["status"] == "degraded" else None

        health = wait_for(stalled, timeout=STALL_S + 15, interval=0.5, what="the consumers to count as stalled")
        lifecycle = health["checks"]["consumers"]["groups"]["lifecycle"]
        assert lifecycle["lag"] > 0 and lifecycle["idle_ms"] > STALL_S * 1000
        assert health["status"] == "degraded"
        found = samples(client.get("/api/v1/monitoring/metrics").text)
    assert total(found, "agentic_consumer_idle_seconds", group="lifecycle") > STALL_S
    assert total(found, "agentic_consumer_lag", group="lifecycle") > 0


def test_a_worker_given_a_metrics_directory_drops_a_previous_runs_samples(logdir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    stale = "from events.telemetry.metrics import AGENT_QUERIES; AGENT_QUERIES.labels('query', 'succeeded').inc(1000)"
    subprocess.run(
        [sys.executable, "-c", stale],
        cwd=ROOT,
        check=True,
        timeout=60,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)},
    )
    assert list(shared.glob("counter_*.db"))
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, OFFLINE_TOKEN_DELAY_MS="1")
    port = free_port()
    try:
        stack.worker(concurrency=1, name="given", metrics_port=port, PROMETHEUS_MULTIPROC_DIR=str(shared))
        stack.api(workers=1)
        key = create_user(server.url, "user")[1]
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            job = client.post("/api/v1/jobs", json={"agent_type": "query", "query": "1+1"}).json()
            assert client.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"
        found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        assert total(found, "agent_queries_total", status="succeeded") == 1
    finally:
        stack.stop()
        server.stop()
