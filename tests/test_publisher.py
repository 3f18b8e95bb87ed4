"""The job event publisher: seq numbers, token batches and its flusher thread, against a real Redis (logical
database `eventsdb.DB`)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import redis

from events.envelope import Event
from events.publisher import MAX_BATCH, JobPublisher
from tests.eventsdb import uid
from tests.stack import wait_for


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
