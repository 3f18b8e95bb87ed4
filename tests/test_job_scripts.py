"""The job scripts (start, heartbeat, finish, cancel) and the leases they keep, against a real Redis (logical
database `eventsdb.DB`)."""

from __future__ import annotations

import json

from events.store import keyspace
from events.store.job_scripts import StartOutcome
from tests.eventsdb import LEASE_MS, NOW, cancel, finish, heartbeat, job_events, lifecycle_of, start, uid


def test_start_takes_the_lease_of_a_queued_job_and_returns_its_fields(db, scripts, new_job) -> None:
    job_id = new_job()
    started = start(scripts, job_id, token="tok-1")
    fields = started.job or {}
    assert (started.outcome, started.next_seq) == (StartOutcome.OK, 1)
    assert (fields["id"], fields["status"], fields["worker"], fields["query"]) == (job_id, "running", "w1", "2+2")
    assert db.get(keyspace.job_lease(job_id)) == "tok-1" and 0 < db.pttl(keyspace.job_lease(job_id)) <= LEASE_MS
    assert db.zscore(keyspace.RUNNING_JOBS, job_id) == NOW
    [event] = job_events(db, job_id)
    assert (event.type, event.seq, event.attempt, event.data) == ("start", 0, 1, {"attempt": 1})
    assert lifecycle_of(db, job_id) == ["running"]
    assert start(scripts, job_id).outcome is StartOutcome.RUNNING


def test_start_refuses_stale_attempts_leased_missing_and_cancelled_jobs(db, scripts, new_job) -> None:
    job_id = new_job()
    assert start(scripts, job_id, attempt=2).outcome is StartOutcome.STALE
    db.set(keyspace.job_lease(job_id), "someone-else", px=LEASE_MS)
    assert start(scripts, job_id).outcome is StartOutcome.LEASED
    assert db.hget(keyspace.job(job_id), "status") == "queued" and db.xlen(keyspace.job_stream(job_id)) == 0
    assert start(scripts, uid("nobody")).outcome is StartOutcome.MISSING
    cancelled = new_job()
    assert cancel(scripts, cancelled) == "cancelled"
    assert start(scripts, cancelled).outcome is StartOutcome.CANCELLED


def test_heartbeat_renews_our_lease_reports_cancel_and_notices_a_lost_lease(db, scripts, new_job) -> None:
    job_id = new_job()
    start(scripts, job_id, token="mine")
    db.pexpire(keyspace.job_lease(job_id), 500)
    assert heartbeat(scripts, job_id, "mine") == (True, False)
    assert db.pttl(keyspace.job_lease(job_id)) > 500
    assert heartbeat(scripts, job_id, "theirs") == (False, False)
    assert cancel(scripts, job_id) == "cancelling"
    assert heartbeat(scripts, job_id, "mine") == (True, True)
    db.delete(keyspace.job_lease(job_id))
    assert heartbeat(scripts, job_id, "mine") == (False, True)  # lost


def test_finish_writes_only_while_holding_the_lease_and_sets_ttls(db, scripts, new_job) -> None:
    job_id = new_job()
    start(scripts, job_id, token="mine")
    assert finish(scripts, job_id, "stale-token", 1) is False
    assert db.hget(keyspace.job(job_id), "status") == "running" and db.xlen(keyspace.job_stream(job_id)) == 1
    assert finish(scripts, job_id, "mine", 1) is True
    job = db.hgetall(keyspace.job(job_id))
    assert (job["status"], job["result"], job["usage"], job["finished_at"]) == (
        "succeeded",
        "4",
        json.dumps({"output_tokens": 3}),
        f"{NOW + 5:.6f}",
    )
    assert 0 < db.ttl(keyspace.job(job_id)) <= 3600 and 3600 < db.ttl(keyspace.job_stream(job_id)) <= 7200
    assert not db.exists(keyspace.job_lease(job_id)) and db.zscore(keyspace.RUNNING_JOBS, job_id) is None
    assert [(e.type, e.seq) for e in job_events(db, job_id)] == [("start", 0), ("done", 1)]
    assert lifecycle_of(db, job_id) == ["running", "succeeded"]
    assert finish(scripts, job_id, "mine", 2) is False


def test_cancel_ends_queued_jobs_flags_running_ones_and_leaves_ended_ones(db, scripts, new_job) -> None:
    queued, running, ended = new_job(), new_job(), new_job()
    assert cancel(scripts, queued) == "cancelled"
    job = db.hgetall(keyspace.job(queued))
    assert (job["status"], job["cancel"], json.loads(job["error"])["code"]) == ("cancelled", "1", "cancelled")
    assert [e.type for e in job_events(db, queued)] == ["cancelled"]
    assert db.ttl(keyspace.job(queued)) > 0 and db.ttl(keyspace.job_stream(queued)) > 0
    assert lifecycle_of(db, queued) == ["cancelled"]
    start(scripts, running)
    assert cancel(scripts, running) == "cancelling"
    assert db.hmget(keyspace.job(running), "status", "cancel") == ["running", "1"]
    start(scripts, ended, token="t")
    finish(scripts, ended, "t", 1)
    assert cancel(scripts, ended) == "succeeded"
    assert db.hget(keyspace.job(ended), "cancel") == "0"
    assert cancel(scripts, uid("nobody")) == "missing"
