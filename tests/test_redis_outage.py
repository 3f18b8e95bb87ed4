"""Redis goes away and comes back: the API answers 503 with Retry-After meanwhile, then works with no restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_user
from tests.sse import SSE, parse
from tests.stack import RedisServer, Stack, wait_for

pytestmark = pytest.mark.slow


def test_api_answers_503_while_redis_is_down_and_recovers_by_itself(logdir: Path) -> None:
    server = RedisServer(logdir, appendonly=True, fsync_always=True).start()
    stack = Stack(server.url, logdir, OFFLINE_TOKEN_DELAY_MS="5")
    try:
        stack.events()
        stack.api()
        _, key = create_user(server.url)
        api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        queued = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "2+2"}).json()["id"]

        # A client already streaming the queued job stays connected through the outage.
        streamed: dict[str, object] = {}
        opened = threading.Event()

        def follow() -> None:
            events = []
            with api.stream("GET", f"/api/v1/jobs/{queued}/events", timeout=60) as resp:
                streamed["status"] = resp.status_code
                for item in parse(resp.iter_lines()):
                    opened.set()  # the first item is the "stream open" comment
                    if isinstance(item, SSE):
                        events.append(item)
            streamed["events"] = events

        reader = threading.Thread(target=follow)
        reader.start()
        assert opened.wait(10)

        server.stop()
        checks = {
            ("POST", "/api/v1/jobs"): {"json": {"agent_type": "query", "query": "x"}},
            ("GET", f"/api/v1/jobs/{queued}"): {},
            ("GET", "/api/v1/jobs"): {},
            ("POST", f"/api/v1/jobs/{queued}/cancel"): {},
            ("GET", f"/api/v1/jobs/{queued}/events"): {},
            ("GET", "/api/v1/health"): {},
            ("GET", "/api/v1/monitoring/ready"): {},
            ("GET", "/api/v1/monitoring/health"): {},
            ("GET", "/api/v1/monitoring/metrics"): {},  # the key cannot be checked: Prometheus sees the 503
        }
        for (method, path), kwargs in checks.items():
            started = time.monotonic()
            resp = api.request(method, path, **kwargs)
            assert resp.status_code == 503, (method, path, resp.status_code, resp.text)
            assert resp.headers["retry-after"] == "2"
            assert "Traceback" not in resp.text
            assert time.monotonic() - started < 8, (method, path)
        assert api.get("/api/v1/monitoring/live").status_code == 200
        assert api.get("/api/v1/monitoring/health").json()["checks"]["redis"]["status"] == "down"

        server.proc.start()  # same port, same AOF
        wait_for(lambda: api.get("/api/v1/health").status_code == 200, timeout=30, what="the API to recover")
        stack.worker(concurrency=1)
        job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "3*3"}).json()
        assert api.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30}).json()["status"] == "succeeded"
        assert api.get(f"/api/v1/jobs/{queued}", params={"wait": 30}).json()["status"] == "succeeded"
        reader.join(timeout=60)
        assert streamed["status"] == 200
        events = streamed["events"]
        assert events[0].event == "start" and events[-1].event == "done"  # type: ignore[index,union-attr]
        api.close()
    finally:
        stack.stop()
        server.stop()
