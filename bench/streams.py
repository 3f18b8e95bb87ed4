"""(c) Concurrent SSE streams one API worker process holds while every stream keeps receiving events."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import redis

from bench.common import fresh_stack, line, percentile, user_key
from bench.rawhttp import Connection
from events import job_record
from events.envelope import Event
from events.store import keyspace
from tests.stack import Stack

STREAMS = int(os.environ.get("BENCH_STREAMS", "5000"))
ROUNDS = 5
ROUND_EVERY_S = 2.0


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def worker_pid(master: int) -> int:
    """The single uvicorn worker under a gunicorn master."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def make_jobs(client: redis.Redis, owner: str, count: int) -> list[str]:
    """Running jobs with empty streams, written straight into Redis."""
    ids = [f"j_{i:032x}" for i in range(1, count + 1)]
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        record = job_record.job_record(
            job_id=job_id, owner=owner, agent="query", model="offline", query="bench", max_tokens=16, now=time.time()
        )
        record["status"] = "running"
        pipe.hset(keyspace.job(job_id), mapping=record)
    pipe.execute()
    return ids


def publish_rounds(client: redis.Redis, ids: list[str], rounds: int, stop: threading.Event) -> None:
    """Each round gives every stream one token event, spread evenly over ROUND_EVERY_S in small batches."""
    slices = 100
    size = max(1, len(ids) // slices)
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]
    tick = ROUND_EVERY_S / len(batches)
    next_at = time.monotonic()
    for n in range(rounds):
        for batch in batches:
            next_at += tick
            if stop.wait(max(0.0, next_at - time.monotonic())):
                return
            pipe = client.pipeline(transaction=False)
            for job_id in batch:
                event = Event("token", job_id, n, time.time(), 1, {"text": "x", "round": n})
                pipe.xadd(keyspace.job_stream(job_id), event.to_fields())
            pipe.execute()


async def hold_streams(
    port: int, key: str, ids: list[str], received: dict[str, int], lags: list[float], opened: threading.Event
) -> None:
    """Follow each job of `ids` on its own connection to `port`, counting its events in `received` and their lags
    in `lags`; set `opened` once all are open, and hold them through every round."""
    headers = {"Authorization": f"Bearer {key}"}

    async def follow(job_id: str) -> Connection:
        conn = await Connection("127.0.0.1", port).open()
        assert await conn.open_stream(f"/api/v1/jobs/{job_id}/events", headers) == 200
        return conn

    conns: list[Connection] = []
    for start in range(0, len(ids), 250):
        conns += await asyncio.gather(*(follow(j) for j in ids[start : start + 250]))

    async def count(job_id: str, conn: Connection) -> None:
        assert conn.reader is not None
        while True:
            row = await conn.reader.readline()
            if not row:
                return
            if row.startswith(b"data:"):
                lags.append(time.time() - json.loads(row[5:])["ts"])
                received[job_id] += 1

    readers = [asyncio.create_task(count(j, c)) for j, c in zip(ids, conns, strict=True)]
    opened.set()
    hold_for = ROUNDS * ROUND_EVERY_S + 3
    await asyncio.sleep(hold_for)
    for task in readers:
        task.cancel()
    for conn in conns:
        conn.close()


def run() -> None:
    """Measure and print."""
    with fresh_stack(SSE_HEARTBEAT_S="30") as (stack, server):
        proc = stack.api(workers=1)
        key = user_key(stack)
        pid = worker_pid(proc.pid)
        client = redis.Redis.from_url(server.url)
        ids = make_jobs(client, _owner(stack, key), STREAMS)
        warm = make_jobs(client, _owner(stack, key), 1)
        asyncio.run(_warm(stack, key, warm[0]))
        before = rss_kb(pid)
        received = {job_id: 0 for job_id in ids}
        lags: list[float] = []
        stop, opened = threading.Event(), threading.Event()
        publisher = threading.Thread(target=_publish_when_open, args=(client, ids, pid, opened, stop))
        publisher.start()
        asyncio.run(hold_streams(stack.port, key, ids, received, lags, opened))
        stop.set()
        publisher.join()
        after = _peak["rss"]
    complete = sum(1 for n in received.values() if n >= ROUNDS)
    per_stream = (after - before) * 1024 / STREAMS
    line(
        "(c) SSE streams held by 1 worker, all fed",
        f"{complete:,}/{STREAMS:,}",
        "target 5,000",
        "ok" if complete >= 5000 else "below target",
    )
    line(
        "(c) memory per stream",
        f"{per_stream / 1024:.1f} KB",
        f"{before / 1024:.0f} MB idle worker",
        "(target <= 30 KB)",
    )
    if lags:
        line(
            "(c) event lag p50 / p99",
            f"{percentile(lags, 50) * 1000:.0f} / {percentile(lags, 99) * 1000:.0f} ms",
            f"{STREAMS / ROUND_EVERY_S:,.0f} events/s",
            "",
        )


_peak = {"rss": 0}


def _owner(stack: Stack, key: str) -> str:
    from api.credentials import key_hash
    from tests.stack import SECRET

    client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    return client.hget(keyspace.apikey(key_hash(SECRET, key)), "user_id") or ""


async def _warm(stack: Stack, key: str, job_id: str) -> None:
    conn = await Connection("127.0.0.1", stack.port).open()
    await conn.open_stream(f"/api/v1/jobs/{job_id}/events", {"Authorization": f"Bearer {key}"})
    conn.close()
    await asyncio.sleep(0.5)


def _publish_when_open(
    client: redis.Redis, ids: list[str], pid: int, opened: threading.Event, stop: threading.Event
) -> None:
    opened.wait()
    publish_rounds(client, ids, ROUNDS, stop)
    _peak["rss"] = rss_kb(pid)
