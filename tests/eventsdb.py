"""Helpers of the event runtime tests (test_publisher, test_consumer, test_lifecycle_counts, test_job_scripts,
test_sweeper); their fixtures (`db`, `db_url`, `scripts`, `new_job`) are in conftest.py.

Those tests run in their own logical database (DB) of the session's redis-server, so the global keys the job
scripts and the sweeper use (running set, lifecycle stream, job counts) never meet the live stack's.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import redis

from events.envelope import Event
from events.process.consumer import ConsumerGroup, Entry
from events.store import job_scripts, keyspace
from events.store.job_scripts import Cancelled, Outcome, Started
from events.store.scripts import Scripts

DB = 13
NOW = 1_700_000_000.0
LEASE_MS = 60_000


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def start(scripts: Scripts, job_id: str, attempt: int = 1, token: str = "tok", now: float = NOW) -> Started:
    return scripts.run(
        job_scripts.start(
            job_id=job_id,
            attempt=attempt,
            now=now,
            lease_token=token,
            lease_ms=LEASE_MS,
            worker="w1",
            data={"attempt": attempt},
        )
    )


def finish(scripts: Scripts, job_id: str, token: str, seq: int) -> bool:
    outcome = Outcome("succeeded", "done", {"result": "4"}, result="4")
    return scripts.run(
        job_scripts.finish(
            job_id=job_id,
            attempt=1,
            now=NOW + 5,
            lease_token=token,
            outcome=outcome,
            usage={"output_tokens": 3},
            seq=seq,
            job_ttl_s=3600,
            stream_ttl_s=7200,
        )
    )


def cancel(scripts: Scripts, job_id: str) -> Cancelled:
    return scripts.run(job_scripts.cancel(job_id=job_id, now=NOW + 1, job_ttl_s=3600, stream_ttl_s=7200, data={}))


def heartbeat(scripts: Scripts, job_id: str, token: str) -> tuple[bool, bool]:
    beat = scripts.run(job_scripts.heartbeat(job_id=job_id, lease_token=token, lease_ms=LEASE_MS))
    return beat.lease_ours, beat.cancel_requested


def job_events(db: redis.Redis, job_id: str) -> list[Event]:
    return [Event.from_fields(fields) for _, fields in db.xrange(keyspace.job_stream(job_id))]


def lifecycle_of(db: redis.Redis, job_id: str) -> list[str]:
    events = [Event.from_fields(f) for _, f in db.xrevrange(keyspace.LIFECYCLE_STREAM, count=200)]
    return [e.data["status"] for e in reversed(events) if e.job_id == job_id]


def add(db: redis.Redis, stream: str, n: int, **data: Any) -> list[str]:
    return [db.xadd(stream, Event("metadata", "j", i, data={"i": i, **data}).to_fields()) for i in range(n)]


def group(db: redis.Redis, stream: str, handler: Callable[[list[Entry]], None], **kw: Any) -> ConsumerGroup:
    g = ConsumerGroup(db, stream, uid("g"), "c1", handler, **{"block_ms": 10, **kw})
    g.ensure_group()
    return g
