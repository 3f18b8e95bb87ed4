"""The ledger consumer (events/process/ledger.py): a batch writes what its events would one at a time, in the
layout the cost endpoints read, and an entry applied before is never counted again, whatever batch it comes
back in (applied twice, overlapping a later batch, claimed from a consumer that died before acking)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Iterator

import pytest
import redis

from events.envelope import EnvelopeError, Event
from events.process.consumer import ConsumerGroup
from events.process.ledger import (
    BATCH,
    BUCKET_TTL_S,
    GROUP,
    QUERIES_TTL_S,
    SEEN_TTL_S,
    Ledger,
    counters,
    profile,
    read_usage,
    seen_sets,
)
from events.store import keyspace
from tests.stack import RedisServer

NOON = datetime(2026, 11, 30, 12, 34, tzinfo=UTC).timestamp()


def usage(ts: float = NOON, attempt: int = 1, **data: Any) -> Event:
    """A usage event as the workers send it."""
    return Event("usage", "j1", 0, ts, attempt, data)


def varied(count: int) -> list[tuple[str, Event]]:
    """`count` usage entries over several users, models, agents, sessions, queries, hours and retries, with
    stream ids 10 s apart (so they span mark sets of several hours)."""
    first_ms = int(NOON * 1000)
    entries = []
    for i in range(count):
        data = {
            "user_id": f"user{i % 5}",
            "model": ("gpt-4o", "ollama:llama3:8b")[i % 2],
            "cost_micros": (i * 7919) % 1000,
            "input_tokens": i % 50,
            "output_tokens": 3,
            "cached_input_tokens": i % 4,
            "agent": ("query", "rag", "")[i % 3],
            "session_id": ("", "s1", "s:2")[i % 3],
            "query_hash": ("", "q1", "q2", "q3")[i % 4],
            "call": i % 3,
        }
        event = usage(NOON + (i % 7) * 1800, attempt=1 + i % 2, **data)
        entries.append((f"{first_ms + i * 10_000}-{i % 3}", event))
    return entries


def one_at_a_time(events: list[Event]) -> dict[str, dict[str, int]]:
    """The counters of each event alone, added up."""
    total: dict[str, dict[str, int]] = {}
    for event in events:
        for key, fields in counters([event])[0].items():
            row = total.setdefault(key, {})
            for field, amount in fields.items():
                row[field] = row.get(field, 0) + amount
    return total


def test_one_event_writes_the_layout_the_readers_know() -> None:
    event = usage(
        user_id="alice",
        model="ollama:llama3",
        agent="query",
        session_id="s1",
        query_hash="q1",
        call=0,
        cost_micros=450,
        input_tokens=100,
        output_tokens=20,
        cached_input_tokens=5,
    )
    figures = {"cost": 450, "in": 100, "out": 20, "cached": 5, "calls": 1}
    model = {f"m:ollama:llama3:{name}": value for name, value in figures.items()}
    agent = {"a:query:cost": 450, "a:query:calls": 1}
    assert counters([event]) == (
        {
            "ledger:alice:h:2026113012": {**figures, **model, **agent, "s:s1:cost": 450, "s:s1:calls": 1},
            "ledger:all:h:2026113012": {**figures, **model, **agent, **{f"u:alice:{k}": v for k, v in figures.items()}},
            "ledger:alice:total": figures,
            "ledger:all:total": figures,
            "ledger:alice:queries": {"c:q1": 450, "n:q1": 1},
        },
        {
            "ledger:alice:h:2026113012": BUCKET_TTL_S,
            "ledger:all:h:2026113012": BUCKET_TTL_S,
            "ledger:alice:queries": QUERIES_TTL_S,
        },
    )


def test_a_free_event_leaves_out_zeros_but_in_the_all_time_totals() -> None:
    event = usage(user_id="bob", model="house", cost_micros=0, input_tokens=7, output_tokens=0)
    nothing_but_calls = {"in": 7, "calls": 1}
    assert counters([event])[0] == {
        "ledger:bob:h:2026113012": {**nothing_but_calls, "m:house:in": 7, "m:house:calls": 1},
        "ledger:all:h:2026113012": {
            **nothing_but_calls,
            "m:house:in": 7,
            "m:house:calls": 1,
            "u:bob:in": 7,
            "u:bob:calls": 1,
        },
        "ledger:bob:total": {"cost": 0, "in": 7, "out": 0, "cached": 0, "calls": 1},
        "ledger:all:total": {"cost": 0, "in": 7, "out": 0, "cached": 0, "calls": 1},
    }


def test_a_batch_sums_to_what_its_events_write_one_at_a_time() -> None:
    events = [event for _, event in varied(300)]
    assert counters(events)[0] == one_at_a_time(events)


def test_only_a_jobs_first_call_of_its_first_attempt_counts_a_run_of_its_query() -> None:
    events = [
        usage(user_id="carol", query_hash="q", call=0, cost_micros=10),
        usage(user_id="carol", query_hash="q", call=1, cost_micros=10),
        usage(user_id="carol", query_hash="q", call=0, attempt=2, cost_micros=10),
    ]
    assert counters(events)[0]["ledger:carol:queries"] == {"c:q": 30, "n:q": 1}


def test_the_consumers_reader_profiles_an_entry_as_the_event_decoded_whole_would() -> None:
    odd = [usage(user_id=7, model=None, cost_micros="12", input_tokens="x", call="0", query_hash="q")]
    for event in [event for _, event in varied(60)] + odd:
        fields = event.to_fields()
        as_bytes = {name.encode(): value.encode() for name, value in fields.items()}
        assert read_usage(fields) == read_usage(as_bytes) == profile(Event.from_fields(as_bytes))
    assert read_usage({b"type": b"token", b"data": b"{}"}) is None
    assert read_usage({b"type": b"usage", b"data": b"[1]"}) == profile(Event("usage"))  # not an object: counts as empty
    for bad in ({b"data": b"{}"}, {}, {b"type": b"usage", b"data": b"{"}, {b"type": b"usage", b"ts": b"noon"}):
        with pytest.raises(EnvelopeError):
            read_usage(bad)


def test_entries_are_marked_in_a_set_per_hour_they_were_added_in() -> None:
    hour_ms = int(datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp() * 1000)
    ids = [f"{hour_ms}-0", f"{hour_ms + 3_599_999}-4", f"{hour_ms + 3_600_000}-0"]
    assert seen_sets(ids) == {
        "seen:ledger:h:2026113012": ids[:2],
        "seen:ledger:h:2026113013": ids[2:],
    }


@pytest.fixture
def fresh(own_redis: RedisServer) -> Iterator[redis.Redis]:
    """An empty database."""
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


def stored(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Every ledger counter hash in Redis, as ints."""
    return {
        key: {field: int(value) for field, value in client.hgetall(key).items()} for key in client.scan_iter("ledger:*")
    }


def test_a_batch_applied_twice_counts_once(fresh: redis.Redis) -> None:
    entries = varied(200)
    ledger = Ledger(fresh)
    ledger.apply_events(entries)
    ledger.apply_events(entries)
    assert stored(fresh) == one_at_a_time([event for _, event in entries])


def test_a_batch_overlapping_one_applied_before_adds_only_its_new_entries(fresh: redis.Redis) -> None:
    entries = varied(1000)
    ledger = Ledger(fresh)
    ledger.apply_events(entries[:600])
    ledger.apply_events(entries[400:])  # 200 applied before, 400 new
    assert stored(fresh) == one_at_a_time([event for _, event in entries])
    assert int(fresh.hget(keyspace.ledger_total("all"), "calls")) == 1000
    assert int(fresh.hget(keyspace.ledger_total("user3"), "cost")) == sum(
        int(event.data["cost_micros"]) for _, event in entries if event.data["user_id"] == "user3"
    )


def test_an_entry_twice_in_one_batch_counts_once(fresh: redis.Redis) -> None:
    entries = varied(10)
    Ledger(fresh).apply_events(entries + entries[:3])
    assert stored(fresh) == one_at_a_time([event for _, event in entries])


def test_counters_and_marks_expire_and_marks_outlive_a_week(fresh: redis.Redis) -> None:
    entries = varied(40)
    Ledger(fresh).apply_events(entries)
    for key in seen_sets(entry_id for entry_id, _ in entries):
        assert 0 < fresh.ttl(key) <= SEEN_TTL_S and SEEN_TTL_S >= 7 * 86400
    assert 0 < fresh.ttl("ledger:user1:h:2026113012") <= BUCKET_TTL_S
    assert 0 < fresh.ttl("ledger:user1:queries") <= QUERIES_TTL_S
    assert fresh.ttl(keyspace.ledger_total("user1")) == -1


def test_entries_claimed_from_a_consumer_that_died_before_acking_count_once(fresh: redis.Redis) -> None:
    entries = varied(1500)
    for _, event in entries:
        fresh.xadd(keyspace.USAGE_STREAM, event.to_fields())
    stream_entries = [(entry_id, Event.from_fields(fields)) for entry_id, fields in fresh.xrange(keyspace.USAGE_STREAM)]
    fresh.xgroup_create(keyspace.USAGE_STREAM, GROUP, id="0")
    read = fresh.xreadgroup(GROUP, "first", {keyspace.USAGE_STREAM: ">"}, count=700)[0][1]
    applied_never_acked = [(entry_id, Event.from_fields(fields)) for entry_id, fields in read]
    Ledger(fresh).apply_events(applied_never_acked)
    second = ConsumerGroup(fresh, keyspace.USAGE_STREAM, GROUP, "second", Ledger(fresh), batch=BATCH, claim_idle_ms=0)
    while second.run_once():
        pass
    assert second.stats.claimed == 700 and second.stats.applied == 1500
    assert fresh.xpending(keyspace.USAGE_STREAM, GROUP)["pending"] == 0
    assert stored(fresh) == one_at_a_time([event for _, event in stream_entries])


def test_an_unreadable_usage_entry_is_dead_lettered_and_the_rest_counted(fresh: redis.Redis) -> None:
    entries = varied(20)
    for i, (_, event) in enumerate(entries):
        fresh.xadd(keyspace.USAGE_STREAM, event.to_fields())
        if i == 9:
            fresh.xadd(keyspace.USAGE_STREAM, {**event.to_fields(), "data": "{not json"})
    group = ConsumerGroup(fresh, keyspace.USAGE_STREAM, GROUP, "one", Ledger(fresh), batch=BATCH)
    group.ensure_group()
    while group.run_once():
        pass
    assert group.stats.applied == 20 and group.stats.dead == 1
    assert fresh.xlen(group.dead_stream) == 1 and fresh.xpending(keyspace.USAGE_STREAM, GROUP)["pending"] == 0
    assert stored(fresh) == one_at_a_time([event for _, event in entries])
