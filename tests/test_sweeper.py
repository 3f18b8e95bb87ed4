"""The sweeper: jobs whose worker was lost are requeued, failed or cancelled, against a real Redis (logical
database `eventsdb.DB`)."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from kombu import Connection

from events import job_record
from events.process.sweeper import Sweeper
from events.store import keyspace
from events.store.job_scripts import StartOutcome
from events.store.scripts import Scripts
from events.store.taskmsg import RUN_AGENT_TASK
from tests.eventsdb import NOW, cancel, job_events, lifecycle_of, start, uid


def sweeper(db: redis.Redis, queue: str, **kw: Any) -> Sweeper:
    return Sweeper(db, queue, grace_s=1.0, job_ttl_s=3600, stream_ttl_s=7200, clock=lambda: NOW + 100, **kw)


def lose_worker(db: redis.Redis, scripts: Scripts, job_id: str, attempt: int) -> None:
    assert start(scripts, job_id, attempt=attempt).outcome is StartOutcome.OK
    db.delete(keyspace.job_lease(job_id))


def test_a_job_whose_lease_lapsed_is_requeued_as_the_next_attempt(db, db_url, scripts, new_job) -> None:
    job_id, queue = new_job(), uid("queue")
    lose_worker(db, scripts, job_id, 1)
    assert sweeper(db, queue).sweep() == {"requeued": 1}
    assert db.hmget(keyspace.job(job_id), "status", "attempt") == ["queued", "2"]
    assert db.zscore(keyspace.RUNNING_JOBS, job_id) is None
    [raw] = db.lrange(queue, 0, -1)
    message = json.loads(raw)
    assert json.loads(base64.b64decode(message["body"]))[0] == [job_id, 2]
    assert (message["headers"]["task"], message["headers"]["origin"]) == (RUN_AGENT_TASK, "sweeper")
    with Connection(db_url) as conn:  # kombu's Redis transport reads it as a Celery worker would
        received = conn.channel().basic_get(queue, no_ack=True)
        assert received.headers["task"] == RUN_AGENT_TASK and received.decode()[0] == [job_id, 2]
    last = job_events(db, job_id)[-1]
    assert (last.type, last.seq, last.attempt) == ("metadata", 1, 1)
    assert last.data == {"event": "attempt_lost", "attempt": 1, "next_attempt": 2}
    assert lifecycle_of(db, job_id) == ["running", "retried"]
    assert start(scripts, job_id, attempt=1).outcome is StartOutcome.STALE
    again = start(scripts, job_id, attempt=2)
    assert (again.outcome, again.next_seq) == (StartOutcome.OK, 3)


def test_a_job_that_loses_its_worker_on_every_attempt_ends_failed(db, scripts, new_job) -> None:
    job_id, queue = new_job(), uid("queue")
    outcomes = []
    for attempt in range(1, job_record.MAX_ATTEMPTS + 1):
        lose_worker(db, scripts, job_id, attempt)
        outcomes.append(sweeper(db, queue).sweep())
    assert outcomes == [{"requeued": 1}, {"requeued": 1}, {"failed": 1}]
    job = db.hgetall(keyspace.job(job_id))
    assert (job["status"], json.loads(job["error"])["code"]) == ("failed", "worker_lost")
    last = job_events(db, job_id)[-1]
    assert last.terminal and last.type == "error" and last.data["code"] == "worker_lost"
    assert db.llen(queue) == job_record.MAX_ATTEMPTS - 1 and db.ttl(keyspace.job(job_id)) > 0
    assert lifecycle_of(db, job_id)[-1] == "failed"


def test_a_cancelled_job_that_lost_its_worker_ends_cancelled(db, scripts, new_job) -> None:
    job_id, queue = new_job(), uid("queue")
    assert start(scripts, job_id).outcome is StartOutcome.OK
    assert cancel(scripts, job_id) == "cancelling"
    db.delete(keyspace.job_lease(job_id))
    assert sweeper(db, queue).sweep() == {"cancelled": 1}
    job = db.hgetall(keyspace.job(job_id))
    assert (job["status"], json.loads(job["error"])["code"]) == ("cancelled", "cancelled")
    assert job_events(db, job_id)[-1].type == "cancelled" and db.llen(queue) == 0


def test_jobs_with_a_live_lease_or_within_the_grace_period_are_left_alone(db, scripts, new_job) -> None:
    alive, fresh, queue = new_job(), new_job(), uid("queue")
    assert start(scripts, alive).outcome is StartOutcome.OK
    assert start(scripts, fresh, now=NOW + 99.5).outcome is StartOutcome.OK
    db.delete(keyspace.job_lease(fresh))
    assert sweeper(db, queue).sweep() == {}
    assert db.hget(keyspace.job(alive), "status") == db.hget(keyspace.job(fresh), "status") == "running"
    assert db.zscore(keyspace.RUNNING_JOBS, alive) is not None and db.llen(queue) == 0
