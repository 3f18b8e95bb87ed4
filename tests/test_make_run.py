"""`make run`'s script (ops/run.sh) as a user starts it: every process comes up on the ports it is given,
a job runs, Prometheus scrapes the API, the worker and Flower, and Ctrl-C (SIGTERM) stops it all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import BIN, ROOT, SECRET, free_port, wait_for

pytestmark = pytest.mark.slow
FLOWER_AUTH = ("ops", "flower-pw-make-run")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_starts_everything_runs_a_job_is_scraped_and_stops_on_sigterm(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("PORT", "REDIS", "FLOWER_PORT", "WORKER_METRICS_PORT", "PROMETHEUS_PORT")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OTEL_", "PROMETHEUS_MULTIPROC"))}
    env.update(PORT=str(ports["PORT"]), REDIS_URL=f"redis://127.0.0.1:{ports['REDIS']}/0",
               FLOWER_PORT=str(ports["FLOWER_PORT"]), WORKER_METRICS_PORT=str(ports["WORKER_METRICS_PORT"]),
               PROMETHEUS_PORT=str(ports["PROMETHEUS_PORT"]), VAR_DIR=str(tmp_path / "var"),
               AGENTIC_SECRET_KEY=SECRET, FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH), WORKER_AUTOSCALE="2,1",
               WEB_CONCURRENCY="2", OFFLINE_TOKEN_DELAY_MS="1")
    out = (tmp_path / "run.out").open("w")
    run = subprocess.Popen(["bash", "ops/run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        wait_for(lambda: "Ctrl-C stops everything" in (tmp_path / "run.out").read_text() or run.poll() is not None,
                 timeout=120, what="make run to come up")
        banner = (tmp_path / "run.out").read_text()
        assert run.poll() is None, banner
        assert f"http://127.0.0.1:{ports['PORT']}/api/v1/health" in banner

        made = subprocess.run([str(BIN / "agentic"), "users", "create", "runner", "--role", "user"], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
        key = json.loads(made.stdout)["api_key"]
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['PORT']}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as api:
            job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "what is 6*7?"}).json()
            done = api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done

        flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}"
        workers = wait_for(lambda: httpx.get(f"{flower}/api/workers", params={"refresh": 1}, auth=FLOWER_AUTH,
                                             timeout=10).json(), timeout=30, what="the worker in Flower")
        assert len(workers) == 1

        if shutil.which("prometheus"):
            prom = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1"
            assert f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}" in banner

            def all_up() -> bool:
                targets = httpx.get(f"{prom}/targets", timeout=5).json()["data"]["activeTargets"]
                return {t["labels"]["job"] for t in targets if t["health"] == "up"} == \
                    {"api", "workers", "flower", "prometheus"}

            # The file's interval is 15 s: allow for a first scrape of every target.
            wait_for(all_up, timeout=60, interval=1, what="every target up in Prometheus")
            query = 'sum(http_requests_total{route="/api/v1/jobs",status="202"})'
            wait_for(lambda: httpx.get(f"{prom}/query", params={"query": query}, timeout=5).json()["data"]["result"],
                     timeout=40, interval=1, what="the submit counted in Prometheus")
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            raise
        out.close()
    log = (tmp_path / "run.out").read_text()
    assert "run: stopped." in log, log[-2000:]
    deadline = time.monotonic() + 20
    while any(listening(p) for p in ports.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [name for name, port in ports.items() if listening(port)], "a process outlived make run"
