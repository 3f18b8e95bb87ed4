"""Publishing, consumer groups, lifecycle counts, the job scripts and the sweeper, against a real Redis.

Everything here runs in its own logical database of the session's redis-server, so the global keys the job
scripts and the sweeper use (running set, lifecycle stream, job counts) never meet the live stack's.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from typing import Any, Callable, Iterator

import pytest
import redis
from kombu import Connection

from events import job_record
from events.envelope import Event
from events.process.consumer import ConsumerGroup, Entry, consumed_floor
from events.process.lifecycle import GROUP as LIFECYCLE_GROUP
from events.process.lifecycle import LifecycleCounter, read_counts
from events.process.sweeper import Sweeper
from events.publisher import MAX_BATCH, JobPublisher
from events.store import job_scripts, keyspace
from events.store.job_scripts import Cancelled, Outcome, Started, StartOutcome
from events.store.scripts import Scripts
from events.store.taskmsg import RUN_AGENT_TASK
from tests.stack import RedisServer, wait_for

DB = 13
NOW = 1_700_000_000.0
LEASE_MS = 60_000


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def db_url(redis_server: RedisServer) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def db(db_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(db_url, decode_responses=True) as client:
        yield client


@pytest.fixture
def scripts(db: redis.Redis) -> Scripts:
    return Scripts(db)


@pytest.fixture
def publisher(db: redis.Redis) -> Iterator[Callable[..., tuple[JobPublisher, str]]]:
    """Makes publishers on fresh streams; closes them (stopping their flusher threads) afterwards."""
    made: list[JobPublisher] = []

    def make(flush_ms: int = 60_000, seq: int = 0, **kw: Any) -> tuple[JobPublisher, str]:
        stream = uid("stream")
        made.append(JobPublisher(db, stream, "j1", kw.pop("attempt", 1), seq, flush_ms=flush_ms, **kw))
        return made[-1], stream

    yield make
    for pub in made:
        pub.close()


@pytest.fixture
def new_job(db: redis.Redis) -> Iterator[Callable[..., str]]:
    """Saves queued jobs made by `job_record`; removes them, and their place in the running set, afterwards."""
    made: list[str] = []

    def make() -> str:
        job_id = uid("job")
        db.hset(
            keyspace.job(job_id),
            mapping=job_record.job_record(
                job_id=job_id, owner="tester", agent="query", model="offline", query="2+2", max_tokens=64, now=NOW
            ),
        )
        made.append(job_id)
        return job_id

    yield make
    for job_id in made:
        db.delete(keyspace.job(job_id), keyspace.job_stream(job_id), keyspace.job_lease(job_id))
        db.zrem(keyspace.RUNNING_JOBS, job_id)


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


def test_events_get_consecutive_seq_and_tokens_are_written_before_the_next_event(db: redis.Redis, publisher) -> None:
    pub, stream = publisher(seq=5, attempt=2, clock=lambda: 1.5)
    assert pub.emit("start", {}) == 5
    pub.token("a")
    pub.token("b", call=0)
    assert db.xlen(stream) == 1  # the tokens wait for their batch
    assert pub.emit("tool_start", {"tool": "calculator"}) == 8
    events = [Event.from_fields(f) for _, f in db.xrange(stream)]
    assert [(e.type, e.seq) for e in events] == [("start", 5), ("token", 6), ("token", 7), ("tool_start", 8)]
    assert [e.data for e in events[1:3]] == [{"text": "a"}, {"text": "b", "call": 0}]
    assert {(e.job_id, e.attempt, e.ts) for e in events} == {("j1", 2, 1.5)}


def test_a_lone_token_is_written_by_the_flusher_without_another_call(db: redis.Redis, publisher) -> None:
    pub, stream = publisher(flush_ms=20)
    pub.token("only")
    wait_for(lambda: db.xlen(stream) == 1, timeout=5, what="the flusher thread")
    assert [Event.from_fields(f).data for _, f in db.xrange(stream)] == [{"text": "only"}]


def test_a_full_batch_of_tokens_is_written_at_once(db: redis.Redis, publisher) -> None:
    pub, stream = publisher()
    for i in range(MAX_BATCH - 1):
        pub.token(str(i))
    assert db.xlen(stream) == 0
    pub.token("last")
    assert db.xlen(stream) == MAX_BATCH
    assert [Event.from_fields(f).seq for _, f in db.xrange(stream)] == list(range(MAX_BATCH))


def test_reserve_seq_flushes_tokens_and_hands_out_the_next_number(db: redis.Redis, publisher) -> None:
    pub, stream = publisher()
    pub.token("a")
    pub.token("b")
    assert pub.reserve_seq() == 2
    assert db.xlen(stream) == 2
    assert pub.emit("metadata", {}) == 3
    assert pub.next_seq == 4


def test_a_failed_background_flush_is_raised_on_the_next_call(db: redis.Redis, publisher) -> None:
    pub, stream = publisher(flush_ms=5)
    db.set(stream, "not a stream")
    pub.token("a")

    def raised() -> bool:
        try:
            pub.flush()
        except redis.ResponseError:
            return True
        return False

    wait_for(raised, timeout=5, what="the flusher's error")
    db.delete(stream)


def add(db: redis.Redis, stream: str, n: int, **data: Any) -> list[str]:
    return [db.xadd(stream, Event("metadata", "j", i, data={"i": i, **data}).to_fields()) for i in range(n)]


def group(db: redis.Redis, stream: str, handler: Callable[[list[Entry]], None], **kw: Any) -> ConsumerGroup:
    g = ConsumerGroup(db, stream, uid("g"), "c1", handler, **{"block_ms": 10, **kw})
    g.ensure_group()
    return g


def pending_ids(db: redis.Redis, g: ConsumerGroup) -> list[str]:
    return [p["message_id"] for p in db.xpending_range(g.stream, g.group, "-", "+", 1000)]


def fail(entries: list[Entry]) -> None:
    raise RuntimeError("cannot apply")


def test_ensure_group_creates_stream_and_group_once(db: redis.Redis) -> None:
    g = group(db, uid("stream"), fail)
    g.ensure_group()
    assert [x["name"] for x in db.xinfo_groups(g.stream)] == [g.group]


def test_entries_are_acked_only_after_the_handler_returns(db: redis.Redis) -> None:
    stream = uid("stream")
    ids = add(db, stream, 3)
    seen: list[int] = []

    def handler(entries: list[Entry]) -> None:
        seen.append(db.xpending(stream, g.group)["pending"])

    g = group(db, stream, handler)
    assert g.run_once() == 3
    assert seen == [3]
    assert db.xpending(stream, g.group)["pending"] == 0 and g.stats.applied == len(ids)


def test_a_handler_that_raises_leaves_its_entries_pending(db: redis.Redis) -> None:
    stream = uid("stream")
    ids = add(db, stream, 3)
    g = group(db, stream, fail)
    assert g.run_once() == 0
    assert pending_ids(db, g) == ids and g.stats.failed == 3


def test_a_batch_with_one_bad_entry_is_applied_one_by_one_and_the_good_ones_acked(db: redis.Redis) -> None:
    stream = uid("stream")
    good = add(db, stream, 2)
    bad = add(db, stream, 1, bad=True)
    calls: list[list[str]] = []

    def handler(entries: list[Entry]) -> None:
        calls.append([entry_id for entry_id, _ in entries])
        if any(event.data.get("bad") for _, event in entries):
            raise ValueError("bad entry")

    g = group(db, stream, handler)
    assert g.run_once() == 2
    assert calls == [good + bad, [good[0]], [good[1]], bad]
    assert pending_ids(db, g) == bad


def test_entries_left_pending_by_a_dead_consumer_are_claimed_once_idle(db: redis.Redis) -> None:
    stream = uid("stream")
    ids = add(db, stream, 3)
    seen: list[str] = []
    g = group(db, stream, lambda entries: seen.extend(i for i, _ in entries), claim_idle_ms=1000)
    db.xreadgroup(g.group, "dead-consumer", {stream: ">"})  # read, then the process died
    assert g.run_once() == 0  # not idle long enough yet
    wait_for(lambda: g.run_once() or seen == ids, timeout=10, what="the entries to be claimed")
    assert seen == ids and g.stats.claimed == 3
    assert db.xpending(stream, g.group)["pending"] == 0


def test_an_entry_that_keeps_failing_is_dead_lettered_after_max_deliveries(db: redis.Redis) -> None:
    stream = uid("stream")
    [entry_id] = add(db, stream, 1, poison=True)
    g = group(db, stream, fail, claim_idle_ms=100, max_deliveries=3)
    wait_for(lambda: g.run_once() == 0 and db.xlen(g.dead_stream) == 1, timeout=10, what="the dead letter")
    [(_, dead)] = db.xrange(g.dead_stream)
    assert g.dead_stream == keyspace.dead_letters(g.group)
    assert (dead["dead_reason"], dead["dead_id"], dead["dead_stream"]) == ("delivered 3 times", entry_id, stream)
    assert Event.from_fields(dead).data == {"i": 0, "poison": True}
    assert db.xpending(stream, g.group)["pending"] == 0 and g.stats.dead == 1


def test_an_undecodable_entry_is_dead_lettered_at_once(db: redis.Redis) -> None:
    stream = uid("stream")
    junk = db.xadd(stream, {"payload": "no type here"})
    [good] = add(db, stream, 1)
    seen: list[str] = []
    g = group(db, stream, lambda entries: seen.extend(i for i, _ in entries))
    assert g.run_once() == 1
    assert seen == [good]
    [(_, dead)] = db.xrange(g.dead_stream)
    assert dead["dead_reason"].startswith("undecodable") and dead["dead_id"] == junk
    assert dead["payload"] == "no type here"
    assert db.xpending(stream, g.group)["pending"] == 0


def test_trimming_removes_consumed_entries_but_never_unacked_ones(db: redis.Redis) -> None:
    stream = uid("stream")
    ids = add(db, stream, 250)

    def handler(entries: list[Entry]) -> None:
        if any(event.data["i"] >= 150 for _, event in entries):
            raise RuntimeError("not yet")

    g = group(db, stream, handler, batch=500, trim_every_s=0)
    assert g.run_once() == 150
    assert consumed_floor(db, stream) == ids[150]
    assert db.xlen(stream) < 250  # whole nodes below the floor went
    assert [i for i, _ in db.xrange(stream, ids[150])] == ids[150:]


def test_a_group_that_has_read_nothing_keeps_the_whole_stream(db: redis.Redis) -> None:
    stream = uid("stream")
    add(db, stream, 250)
    g = group(db, stream, lambda entries: None, batch=500, trim_every_s=0)
    db.xgroup_create(stream, uid("idle-group"), id="0")
    assert g.run_once() == 250
    assert consumed_floor(db, stream) is None and db.xlen(stream) == 250


STATUSES = ["queued"] * 5 + ["running"] * 3 + ["succeeded"] * 2 + ["failed"]
EXPECTED = {"submitted": 5, "started": 3, "succeeded": 2, "failed": 1}


def lifecycle_stream(db: redis.Redis) -> tuple[str, list[Entry]]:
    """A stream of lifecycle events with ids no other test uses (dedupe marks are keyed by entry id)."""
    stream, base = uid("lifecycle"), random.randrange(10**12, 10**13)
    entries = []
    for i, status in enumerate(STATUSES):
        event = Event("lifecycle", f"j{i}", data={"status": status})
        entries.append((db.xadd(stream, event.to_fields(), id=f"{base}-{i}"), event))
    return stream, entries


def delta(db: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in read_counts(db).items() if v != before.get(k, 0)}


def test_lifecycle_entries_applied_twice_count_once(db: redis.Redis) -> None:
    _, entries = lifecycle_stream(db)
    counter, before = LifecycleCounter(db), read_counts(db)
    counter(entries[:3])
    counter(entries)
    counter(entries)
    assert delta(db, before) == EXPECTED
    assert 0 < db.ttl(keyspace.dedupe(LIFECYCLE_GROUP, entries[0][0])) <= 24 * 3600


def test_through_a_consumer_group_counts_equal_events_even_when_redelivered(db: redis.Redis) -> None:
    stream, entries = lifecycle_stream(db)
    counter, before = LifecycleCounter(db), read_counts(db)
    counter(entries[:4])  # a consumer applied these, then died before its ack
    g = group(db, stream, counter, batch=5)
    wait_for(lambda: g.run_once() == 0 and db.xpending(stream, g.group)["pending"] == 0, what="the group to drain")
    assert delta(db, before) == EXPECTED
    db.xgroup_setid(stream, g.group, "0")  # every entry delivered again
    assert g.run_once() == 5
    wait_for(lambda: g.run_once() == 0, what="the replay to drain")
    assert delta(db, before) == EXPECTED


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
