"""Redis goes away and comes back: the API answers 503 with Retry-After meanwhile, then works with no restart."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from bench.rawhttp import Connection
from events.store.clients import async_client, pool_exhausted
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


async def _burst(port: int, path: str, key: str, n: int, *, stream: bool = False) -> list[int]:
    """`n` GETs at once (or `n` event streams opened at once, all held until every one has answered), each on
    its own connection; returns their statuses."""
    conns = [Connection("127.0.0.1", port) for _ in range(n)]

    async def one(conn: Connection) -> int:
        await conn.open()
        headers = {"Authorization": f"Bearer {key}"}
        if stream:
            return await conn.open_stream(path, headers)
        status, _, _ = await conn.request("GET", path, headers)
        return status

    try:
        return list(await asyncio.gather(*(one(c) for c in conns)))
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.writer.wait_closed() for c in conns if c.writer), return_exceptions=True)


def test_a_burst_of_a_thousand_requests_or_streams_waits_for_redis_connections(logdir: Path) -> None:
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, RATE_LIMIT_PER_MIN="100000")
    try:
        stack.api(workers=2)
        _, key = create_user(server.url)
        api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "burst"}).json()["id"]
        statuses = asyncio.run(_burst(stack.port, f"/api/v1/jobs/{job}", key, 1000))
        assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
        # The job stays queued (no worker): each stream opens and stays open, 1,000 of them at once.
        statuses = asyncio.run(_burst(stack.port, f"/api/v1/jobs/{job}/events", key, 1000, stream=True))
        assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
        api.close()
    finally:
        stack.stop()
        server.stop()


def test_after_a_redis_restart_pooled_connections_recover_without_a_burst_of_503s(logdir: Path) -> None:
    server = RedisServer(logdir, appendonly=True, fsync_always=True).start()
    stack = Stack(server.url, logdir, RATE_LIMIT_PER_MIN="100000")
    try:
        stack.api(workers=2)
        _, key = create_user(server.url)
        api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        job = api.post("/api/v1/jobs", json={"agent_type": "query", "query": "restart"}).json()["id"]
        path = f"/api/v1/jobs/{job}"
        assert set(asyncio.run(_burst(stack.port, path, key, 200))) == {200}  # fill the pools with connections
        server.stop()
        server.proc.start()  # same port, same AOF
        wait_for(lambda: api.get("/api/v1/monitoring/ready").status_code == 200, timeout=30, what="ready again")
        for _ in range(3):
            statuses = asyncio.run(_burst(stack.port, path, key, 200))
            assert statuses.count(200) == 200, {s: statuses.count(s) for s in set(statuses)}
        api.close()
    finally:
        stack.stop()
        server.stop()


async def test_an_exhausted_pool_queues_requests_and_sheds_them_only_past_the_wait(redis_server: RedisServer) -> None:
    client = async_client(redis_server.url, socket_timeout=5, max_connections=2, pool_timeout=0.3)
    try:

        async def one(i: int) -> int:
            pipe = client.pipeline(transaction=False)
            pipe.incr("pool:test")
            pipe.get("pool:test")
            return int((await pipe.execute())[1])

        assert len(await asyncio.gather(*(one(i) for i in range(200)))) == 200  # 200 share 2 connections
        holders = [asyncio.create_task(client.blpop(["pool:never"], timeout=1)) for _ in range(2)]
        await asyncio.sleep(0.1)  # both connections now block in BLPOP for a second
        with pytest.raises(redis.ConnectionError) as shed:
            await client.get("pool:test")
        assert pool_exhausted(shed.value)
        await asyncio.gather(*holders)
        assert await client.get("pool:test") == b"200"  # freed again
    finally:
        await client.aclose()
