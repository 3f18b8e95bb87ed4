"""Consumer groups: acking, retrying, claiming, dead letters and trimming, against a real Redis (logical database
`eventsdb.DB`)."""

from __future__ import annotations

import redis

from events.envelope import Event
from events.process.consumer import ConsumerGroup, Entry, consumed_floor
from events.store import keyspace
from tests.eventsdb import add, group, uid
from tests.stack import wait_for


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
