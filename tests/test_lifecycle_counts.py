"""Lifecycle counts: the counter applies each lifecycle entry once, even when redelivered, against a real Redis
(logical database `eventsdb.DB`)."""

from __future__ import annotations

import random

import redis

from events.envelope import Event
from events.process.consumer import Entry
from events.process.lifecycle import GROUP as LIFECYCLE_GROUP
from events.process.lifecycle import LifecycleCounter, read_counts
from events.store import keyspace
from tests.eventsdb import group, uid
from tests.stack import wait_for

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
