"""SSE under load, through the real API over HTTP (issue 14): a thousand concurrent streams each get every event
once and in order; clients that stop reading are dropped once their buffer fills, without holding back the live
ones; many viewers of one job share its reads. Timing is the benchmark's business (bench/streams.py): these tests
check only what arrives."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from events import job_record
from events.envelope import Event
from events.store import keyspace
from tests.conftest import create_user
from tests.stack import RedisServer, Stack, wait_for

BUFFER = 64  # SSE_BUFFER: a stalled client is dropped after this many undelivered events


@pytest.fixture(scope="module")
def sse_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, redis.Redis, str, str]]:
    """One API process (the relay under test) on its own Redis; jobs are written straight into Redis."""
    logdir: Path = tmp_path_factory.mktemp("sse-load")
    server = RedisServer(logdir).start()
    stack = Stack(server.url, logdir, SSE_BUFFER=str(BUFFER), SSE_HEARTBEAT_S="30", RATE_LIMIT_PER_MIN="0")
    client = redis.Redis.from_url(server.url)
    try:
        stack.api(workers=1)
        user_id, key = create_user(server.url)
        yield stack, client, user_id, key
    finally:
        client.close()
        stack.stop()
        server.stop()


def make_jobs(client: redis.Redis, owner: str, count: int, first: int) -> list[str]:
    """Running jobs with empty streams, written straight into Redis (ids from `first` on)."""
    ids = [f"j_{i:032x}" for i in range(first, first + count)]
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        record = job_record.job_record(
            job_id=job_id, owner=owner, agent="query", model="offline", query="load", max_tokens=16, now=time.time()
        )
        pipe.hset(keyspace.job(job_id), mapping={**record, "status": "running"})
    pipe.execute()
    return ids


def publish(client: redis.Redis, job_ids: list[str], seq: int, text: str = "x") -> None:
    """One token event on each job's stream, as JobPublisher writes it: the entry, then the stream's notice."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        stream = keyspace.job_stream(job_id)
        pipe.xadd(stream, Event("token", job_id, seq, time.time(), 1, {"text": text}).to_fields())
        pipe.publish(stream, "")
    pipe.execute()


async def follow(port: int, key: str, job_id: str, want: int) -> list[int]:
    """The `seq` of each event a client of one job's stream receives, until it has `want` of them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    seqs: list[int] = []
    try:
        async with asyncio.timeout(60):
            while len(seqs) < want:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    seqs.append(json.loads(line[5:])["seq"])
    finally:
        writer.close()
    return seqs


def stream_health(stack: Stack) -> dict[str, int]:
    return dict(httpx.get(f"{stack.url}/api/v1/stream/health", timeout=5).json())


def streams_open(stack: Stack) -> int:
    return int(stream_health(stack)["streams_open"])


def test_a_thousand_concurrent_streams_get_every_event_once_and_in_order(sse_stack) -> None:  # type: ignore[no-untyped-def]
    stack, client, user_id, key = sse_stack
    jobs = make_jobs(client, user_id, 1000, first=1_000_000)

    async def run() -> list[list[int]]:
        readers = [asyncio.create_task(follow(stack.port, key, job_id, 5)) for job_id in jobs]
        await asyncio.to_thread(lambda: wait_for(lambda: streams_open(stack) >= 1000, timeout=60, what="streams"))
        # The streams' objects are frozen out of the collector's sight while they stream (api/heap.py) ...
        frozen = lambda: stream_health(stack)["heap_frozen_at_streams"] > 0  # noqa: E731
        await asyncio.to_thread(lambda: wait_for(frozen, timeout=20, what="the streams' objects frozen"))
        for seq in range(5):
            await asyncio.to_thread(publish, client, jobs, seq)
        return await asyncio.gather(*readers)

    got = asyncio.run(run())
    assert all(seqs == [0, 1, 2, 3, 4] for seqs in got), [s for s in got if s != [0, 1, 2, 3, 4]][:3]
    # Freed when each client left, not at the next heartbeat (30 s here): api/disconnects.py.
    wait_for(lambda: streams_open(stack) == 0, timeout=10, what="every stream closed")
    # ... and thawed and collected once they are gone.
    wait_for(lambda: stream_health(stack)["heap_frozen_at_streams"] == 0, timeout=20, what="the frozen objects thawed")


def test_stalled_clients_are_dropped_and_the_live_ones_get_everything(sse_stack) -> None:  # type: ignore[no-untyped-def]
    """10 clients open a stream and never read again, beside 100 that read: once a stalled client's socket and its
    queue of BUFFER events are full, the server drops it, and the live ones get every event meanwhile."""
    stack, client, user_id, key = sse_stack
    live_jobs, stalled_jobs = (
        make_jobs(client, user_id, 100, first=2_000_000),
        make_jobs(client, user_id, 10, first=3_000_000),
    )
    stalled = []
    for job_id in stalled_jobs:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, so the window stays small
        sock.connect(("127.0.0.1", stack.port))
        sock.sendall(
            f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        )
        stalled.append(sock)  # never read from again
    rounds, big = 3 * BUFFER, "y" * 16_000  # 3 MB per stalled stream: past its socket buffers and its queue

    async def run() -> list[list[int]]:
        readers = [asyncio.create_task(follow(stack.port, key, job_id, rounds)) for job_id in live_jobs]
        await asyncio.to_thread(lambda: wait_for(lambda: streams_open(stack) >= 110, timeout=60, what="streams"))
        for seq in range(rounds):
            await asyncio.to_thread(publish, client, live_jobs, seq)
            await asyncio.to_thread(publish, client, stalled_jobs, seq, big)
        return await asyncio.gather(*readers)

    try:
        got = asyncio.run(run())
        assert all(seqs == list(range(rounds)) for seqs in got), [len(s) for s in got if s != list(range(rounds))][:5]
        # The live readers closed theirs; the stalled ones were dropped when they could take no more.
        wait_for(lambda: streams_open(stack) == 0, timeout=30, what="the stalled streams dropped")
    finally:
        for sock in stalled:
            sock.close()
        client.delete(*(keyspace.job_stream(job_id) for job_id in stalled_jobs))
