"""The audit hash chain (events/process/audit_chain.py) on a Redis of its own (the API's tests write audit
entries to the shared one).

Covers: records chain and verify; tampering (edit, delete, reorder, forgery, truncation, rewrite) is found at
the first broken seq; redeliveries and racing consumers append once and never fork; a real ConsumerGroup
copies the stream in order; trimming keeps a checkpoint; queries filter and page.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Iterator

import pytest
import redis

from events.envelope import Event
from events.process import audit_chain
from events.process.audit_chain import (
    CHECKPOINT,
    GENESIS,
    HEAD,
    LOG,
    SEEN,
    AuditChain,
    AuditQueryError,
    audit_event,
    canonical,
    link_hash,
    query,
    trim,
    verify,
)
from events.process.consumer import ConsumerGroup
from events.store import keyspace
from tests.stack import RedisServer, run_all

ACTIONS = ["auth.failure", "user.create", "key.create", "job.submit", "job.cancel", "budget.set"]


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    """A client of the module's Redis, with every audit key and the audit stream removed first."""
    c = redis.Redis.from_url(own_redis.url, decode_responses=True)
    stale = list(c.scan_iter(match="audit:*"))
    c.delete(keyspace.AUDIT_STREAM, keyspace.dead_letters(audit_chain.GROUP), *stale)
    yield c
    c.close()


def publish(client: redis.Redis, n: int, *, actor: str = "alice", start_ts: float = 1000.0) -> list[str]:
    """Write `n` audit events to stream:audit as the API does; returns their entry ids."""
    ids = []
    for i in range(n):
        event = audit_event(
            actor,
            ACTIONS[i % len(ACTIONS)],
            resource=f"r{i}",
            ip="10.0.0.1",
            details={"key_id": f"k{i}"},
            ts=start_ts + i,
        )
        ids.append(client.xadd(keyspace.AUDIT_STREAM, event.to_fields()))
    return ids


def stream_entries(client: redis.Redis) -> list[tuple[str, Event]]:
    """stream:audit as the consumer runner hands it to a handler."""
    return [(entry_id, Event.from_fields(fields)) for entry_id, fields in client.xrange(keyspace.AUDIT_STREAM)]


def chained(client: redis.Redis, n: int, **kw: Any) -> list[dict[str, str]]:
    """Publish `n` events, append them all to the chain, and return the log's records."""
    publish(client, n, **kw)
    AuditChain(client)(stream_entries(client))
    return records(client)


def records(client: redis.Redis) -> list[dict[str, str]]:
    """The log's records, oldest first."""
    return [fields for _, fields in client.xrange(LOG)]


def rewrite(client: redis.Redis, log: list[dict[str, str]]) -> None:
    """Replace the log by a tampered copy, as someone with write access to Redis could."""
    client.delete(LOG)
    for fields in log:
        client.xadd(LOG, fields)


def edited(fields: dict[str, str], **changes: Any) -> dict[str, str]:
    """A copy of a record whose audit data was changed (its hash left as it was)."""
    record = {**json.loads(fields["record"]), **changes}
    return {**fields, "record": json.dumps(record, sort_keys=True, separators=(",", ":"))}


def rehashed(log: list[dict[str, str]], start: int, prev: str) -> list[dict[str, str]]:
    """The log with seq, prev and hash recomputed from position `start` on, as a careful forger would."""
    out = log[:start]
    for i, fields in enumerate(log[start:], start=start + 1):
        digest = link_hash(prev, i, fields["record"])
        out.append({**fields, "seq": str(i), "prev": prev, "hash": digest})
        prev = digest
    return out


def test_an_audit_event_carries_its_fields_and_survives_the_stream() -> None:
    event = audit_event(
        "u1", "key.revoke", resource="k9", result="denied", ip="::1", details={"key_id": "k9"}, ts=1700000000.123456
    )
    assert (event.type, event.job_id) == ("audit", "")
    assert dict(event.data) == {
        "actor": "u1",
        "action": "key.revoke",
        "resource": "k9",
        "result": "denied",
        "ip": "::1",
        "details": {"key_id": "k9"},
    }
    again = Event.from_fields(event.to_fields())
    assert canonical(again) == canonical(event)
    assert canonical(event) == (
        '{"action":"key.revoke","actor":"u1","details":{"key_id":"k9"},"ip":"::1",'
        '"resource":"k9","result":"denied","ts":1700000000.123456}'
    )


@pytest.mark.parametrize(("prev", "seq", "record"), [(GENESIS, 1, "{}"), ("ab" * 32, 7, '{"a":1}')])
def test_a_link_hash_is_sha256_of_prev_seq_and_record(prev: str, seq: int, record: str) -> None:
    expected = hashlib.sha256(f"{prev}\n{seq}\n{record}".encode()).hexdigest()
    assert link_hash(prev, seq, record) == expected and len(expected) == 64


@pytest.mark.parametrize("n", [1, 25, 1234])
def test_a_chain_of_n_records_links_each_to_the_one_before_and_verifies(client: redis.Redis, n: int) -> None:
    log = chained(client, n)
    assert [int(f["seq"]) for f in log] == list(range(1, n + 1))
    assert log[0]["prev"] == GENESIS
    assert all(log[i]["prev"] == log[i - 1]["hash"] for i in range(1, n))
    assert client.hgetall(HEAD) == {"seq": str(n), "hash": log[-1]["hash"]}
    assert verify(client) == {"ok": True, "checked": n, "head_seq": n, "from_checkpoint": 0, "first_broken": None}


def test_an_empty_log_verifies(client: redis.Redis) -> None:
    assert verify(client) == {"ok": True, "checked": 0, "head_seq": 0, "from_checkpoint": 0, "first_broken": None}


def test_verify_with_a_limit_checks_only_the_oldest_records(client: redis.Redis) -> None:
    chained(client, 20)
    assert verify(client, limit=5) | {"first_broken": None} == {
        "ok": True,
        "checked": 5,
        "head_seq": 20,
        "from_checkpoint": 0,
        "first_broken": None,
    }


def _edit(c: redis.Redis, log: list[dict[str, str]]) -> None:
    rewrite(c, [*log[:4], edited(log[4], actor="mallory"), *log[5:]])


def _edit_and_rehash_it(c: redis.Redis, log: list[dict[str, str]]) -> None:
    forged = edited(log[4], result="denied")
    rewrite(c, [*log[:4], {**forged, "hash": link_hash(log[4]["prev"], 5, forged["record"])}, *log[5:]])


def _delete(c: redis.Redis, log: list[dict[str, str]]) -> None:
    c.xdel(LOG, c.xrange(LOG)[4][0])


def _swap(c: redis.Redis, log: list[dict[str, str]]) -> None:
    rewrite(c, [*log[:4], log[5], log[4], *log[6:]])


def _swap_and_renumber(c: redis.Redis, log: list[dict[str, str]]) -> None:
    rewrite(c, [*log[:4], {**log[5], "seq": "5"}, {**log[4], "seq": "6"}, *log[6:]])


def _insert_forgery(c: redis.Redis, log: list[dict[str, str]]) -> None:
    fake = edited(log[4], action="budget.set", actor="mallory")
    fake = {**fake, "seq": "5", "prev": log[3]["hash"], "hash": link_hash(log[3]["hash"], 5, fake["record"])}
    rewrite(c, [*log[:4], fake, *[{**f, "seq": str(int(f["seq"]) + 1)} for f in log[4:]]])


def _truncate(c: redis.Redis, log: list[dict[str, str]]) -> None:
    c.xdel(LOG, c.xrange(LOG)[-1][0])


def _rewrite_the_tail(c: redis.Redis, log: list[dict[str, str]]) -> None:
    rewrite(c, rehashed([*log[:4], edited(log[4], actor="mallory"), *log[5:]], 4, log[3]["hash"]))


def _append_outside(c: redis.Redis, log: list[dict[str, str]]) -> None:
    fake = edited(log[-1], actor="mallory")
    c.xadd(
        LOG,
        {
            **fake,
            "seq": "11",
            "prev": log[-1]["hash"],
            "hash": link_hash(log[-1]["hash"], 11, fake["record"]),
            "source": "0-1",
        },
    )


def _delete_the_head(c: redis.Redis, log: list[dict[str, str]]) -> None:
    c.delete(HEAD)


@pytest.mark.parametrize(
    ("tamper", "seq", "reason"),
    [
        (_edit, 5, "hash mismatch"),
        (_edit_and_rehash_it, 6, "prev mismatch"),
        (_delete, 5, "seq gap"),
        (_swap, 5, "seq gap"),
        (_swap_and_renumber, 5, "prev mismatch"),
        (_insert_forgery, 6, "prev mismatch"),
        (_truncate, 10, "head mismatch"),
        (_rewrite_the_tail, 10, "head mismatch"),
        (_append_outside, 11, "head mismatch"),
        (_delete_the_head, 1, "head mismatch"),
    ],
)
def test_tampering_is_reported_at_the_first_broken_seq(client: redis.Redis, tamper: Any, seq: int, reason: str) -> None:
    tamper(client, chained(client, 10))
    result = verify(client)
    assert result["ok"] is False and result["first_broken"]["seq"] == seq, result
    assert result["first_broken"]["reason"] == reason and result["first_broken"]["detail"]


def test_the_same_batch_applied_twice_is_appended_once(client: redis.Redis) -> None:
    publish(client, 30)
    entries = stream_entries(client)
    chain = AuditChain(client)
    chain(entries[:10])
    chain(entries[:20])  # a redelivery that overlaps the new entries
    chain(entries)
    chain(entries)
    assert chain.append(entries[0][0], canonical(entries[0][1])) == 0
    log = records(client)
    assert [f["source"] for f in log] == [entry_id for entry_id, _ in entries]
    assert client.zcard(SEEN) == 30 and verify(client)["ok"]


def test_entries_of_other_types_are_left_out_of_the_chain(client: redis.Redis) -> None:
    publish(client, 2)
    client.xadd(keyspace.AUDIT_STREAM, Event("lifecycle", "j1", data={"status": "queued"}).to_fields())
    AuditChain(client)(stream_entries(client))
    assert len(records(client)) == 2 and verify(client)["ok"]


def test_racing_chains_on_interleaved_batches_make_one_linear_chain(
    own_redis: RedisServer, client: redis.Redis
) -> None:
    publish(client, 240)
    entries = stream_entries(client)
    batches = [entries[i : i + 8] for i in range(0, len(entries), 8)]
    clients = [redis.Redis.from_url(own_redis.url, decode_responses=True) for _ in range(4)]
    start = threading.Barrier(len(clients))
    errors: list[BaseException] = []

    def consume(worker: int) -> None:
        chain = AuditChain(clients[worker])
        start.wait()
        try:  # each batch goes to two of the four consumers, as after a reclaim
            for i, batch in enumerate(batches):
                if i % 4 in (worker, (worker + 1) % 4):
                    chain(batch)
        except BaseException as ex:
            errors.append(ex)

    run_all([threading.Thread(target=consume, args=(w,)) for w in range(len(clients))])
    for c in clients:
        c.close()
    assert not errors
    log = records(client)
    assert [int(f["seq"]) for f in log] == list(range(1, 241))
    assert sorted(f["source"] for f in log) == sorted(entry_id for entry_id, _ in entries)
    assert verify(client) == {"ok": True, "checked": 240, "head_seq": 240, "from_checkpoint": 0, "first_broken": None}


def run_group(client: redis.Redis, consumer: str = "c1", **kw: Any) -> ConsumerGroup:
    """Drain stream:audit through a real ConsumerGroup with the AuditChain handler."""
    group = ConsumerGroup(
        client, keyspace.AUDIT_STREAM, audit_chain.GROUP, consumer, AuditChain(client), block_ms=10, **kw
    )
    group.ensure_group()
    while group.run_once():
        pass
    return group


def test_through_a_consumer_group_the_chain_equals_the_stream_in_order(client: redis.Redis) -> None:
    publish(client, 57)
    group = run_group(client, batch=7)
    stream = stream_entries(client)
    log = records(client)
    assert [(f["source"], f["record"]) for f in log] == [(i, canonical(e)) for i, e in stream]
    assert group.stats.applied == 57 and verify(client)["ok"]
    assert client.xpending(keyspace.AUDIT_STREAM, audit_chain.GROUP)["pending"] == 0


def test_entries_reclaimed_from_a_consumer_that_died_before_acking_are_appended_once(client: redis.Redis) -> None:
    publish(client, 12)
    group = ConsumerGroup(client, keyspace.AUDIT_STREAM, audit_chain.GROUP, "dead", AuditChain(client), batch=12)
    group.ensure_group()
    reply = client.xreadgroup(audit_chain.GROUP, "dead", {keyspace.AUDIT_STREAM: ">"}, count=12)
    AuditChain(client)([(i, Event.from_fields(f)) for i, f in reply[0][1]])  # appended, then it died: no ack
    survivor = run_group(client, "alive", claim_idle_ms=0)
    assert survivor.stats.claimed == 12 and client.xpending(keyspace.AUDIT_STREAM, audit_chain.GROUP)["pending"] == 0
    assert len(records(client)) == 12 and verify(client)["ok"]


def test_trim_keeps_a_checkpoint_so_the_rest_verifies_and_seq_continues(client: redis.Redis) -> None:
    log = chained(client, 30)
    assert trim(client, keep_last=10, now=2000.0) == {"removed": 20, "checkpoint_seq": 20}
    assert client.hgetall(CHECKPOINT) == {"seq": "20", "hash": log[19]["hash"]}
    assert records(client)[0]["prev"] == client.hget(CHECKPOINT, "hash")
    assert verify(client) == {"ok": True, "checked": 10, "head_seq": 30, "from_checkpoint": 20, "first_broken": None}
    publish(client, 5, actor="bob", start_ts=3000.0)
    run_group(client)  # the group also delivers the 30 appended before, trimmed ones included: none comes back
    assert [int(f["seq"]) for f in records(client)] == list(range(21, 36))
    assert verify(client) | {"first_broken": None} == {
        "ok": True,
        "checked": 15,
        "head_seq": 35,
        "from_checkpoint": 20,
        "first_broken": None,
    }


def test_dedupe_marks_outlive_trimming_and_expire_after_their_window(client: redis.Redis) -> None:
    chained(client, 3)
    marks = client.zrange(SEEN, 0, -1, withscores=True)
    newest_s = max(score for _, score in marks) / 1000
    trim(client, keep_last=0, now=newest_s + audit_chain.DEDUPE_WINDOW_S - 1)
    assert client.zcard(SEEN) == 3
    trim(client, keep_last=0, now=newest_s + audit_chain.DEDUPE_WINDOW_S + 1)
    assert client.zcard(SEEN) == 0 and verify(client)["ok"]


def test_trim_by_age_removes_records_older_than_the_cutoff(client: redis.Redis) -> None:
    chained(client, 30)  # ts 1000 .. 1029
    assert trim(client, older_than_s=10, now=1030.0) == {"removed": 20, "checkpoint_seq": 20}
    assert trim(client, older_than_s=10, now=1030.0) == {"removed": 0, "checkpoint_seq": 20}
    assert verify(client)["ok"] and json.loads(records(client)[0]["record"])["ts"] == 1020.0


def test_trimming_everything_still_verifies_and_the_chain_goes_on(client: redis.Redis) -> None:
    chained(client, 5)
    assert trim(client, keep_last=0, now=0.0) == {"removed": 5, "checkpoint_seq": 5}
    assert verify(client)["ok"]
    publish(client, 2)
    AuditChain(client)(stream_entries(client)[-2:])
    assert [int(f["seq"]) for f in records(client)] == [6, 7] and verify(client)["checked"] == 2


def test_trim_stops_at_a_broken_link_and_keeps_the_evidence(client: redis.Redis) -> None:
    _edit(client, chained(client, 10))
    result = trim(client, keep_last=2, now=0.0)
    assert result["removed"] == 4 and result["checkpoint_seq"] == 4
    assert result["broken"]["seq"] == 5 and result["broken"]["reason"] == "hash mismatch"
    assert verify(client)["first_broken"]["seq"] == 5


def test_racing_trims_never_move_the_checkpoint_back(client: redis.Redis, own_redis: RedisServer) -> None:
    chained(client, 200)
    clients = [redis.Redis.from_url(own_redis.url, decode_responses=True) for _ in range(2)]
    start = threading.Barrier(2)
    results: list[dict[str, Any]] = []

    def run(c: redis.Redis, keep: int) -> None:
        start.wait()
        results.append(trim(c, keep_last=keep, now=0.0))

    run_all([threading.Thread(target=run, args=(c, keep)) for c, keep in zip(clients, (10, 150), strict=True)])
    for c in clients:
        c.close()
    assert not any("broken" in r for r in results), results
    assert client.hget(CHECKPOINT, "seq") == "190" and verify(client)["ok"] and client.xlen(LOG) == 10


def test_verify_stays_ok_while_records_are_appended_and_trimmed(client: redis.Redis, own_redis: RedisServer) -> None:
    publish(client, 600)
    entries = stream_entries(client)
    writer = redis.Redis.from_url(own_redis.url, decode_responses=True)
    done = threading.Event()

    def append_and_trim() -> None:
        chain = AuditChain(writer)
        for i in range(0, len(entries), 20):
            chain(entries[i : i + 20])
            if i % 100 == 0:
                trim(writer, keep_last=50, now=0.0)
        done.set()

    thread = threading.Thread(target=append_and_trim)
    thread.start()
    outcomes = []
    while not done.is_set():
        outcomes.append(verify(client))
    thread.join()
    writer.close()
    assert all(o["ok"] for o in outcomes), [o for o in outcomes if not o["ok"]][:1]
    assert verify(client)["ok"] and verify(client)["head_seq"] == 600


def test_query_filters_newest_first_and_pages_by_cursor(client: redis.Redis) -> None:
    chained(client, 24, actor="alice", start_ts=1000.0)
    publish(client, 6, actor="bob", start_ts=2000.0)
    AuditChain(client)(stream_entries(client)[-6:])

    everything = query(client, limit=100)
    assert [e["seq"] for e in everything["entries"]] == list(range(30, 0, -1)) and everything["next_cursor"] is None
    assert set(everything["entries"][0]) >= {
        "actor",
        "action",
        "resource",
        "result",
        "ip",
        "details",
        "ts",
        "seq",
        "hash",
    }
    assert [e["actor"] for e in query(client, actor="bob")["entries"]] == ["bob"] * 6
    submits = query(client, actor="alice", action="job.submit")["entries"]
    assert [e["resource"] for e in submits] == ["r21", "r15", "r9", "r3"]
    first = query(client, actor="alice", action="job.submit", limit=3)
    rest = query(client, actor="alice", action="job.submit", limit=3, cursor=first["next_cursor"])
    assert len(first["entries"]) == 3 and rest["next_cursor"] is None
    assert [e["resource"] for e in first["entries"] + rest["entries"]] == ["r21", "r15", "r9", "r3"]
    window = query(client, since=1010.0, until=1012.0)["entries"]
    assert [e["ts"] for e in window] == [1012.0, 1011.0, 1010.0]

    seen: list[int] = []
    cursor = None
    for _ in range(10):
        page = query(client, actor="alice", limit=7, cursor=cursor)
        seen += [e["seq"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["entries"]) == 7
    assert seen == list(range(24, 0, -1)) and cursor is None


def test_query_refuses_a_cursor_it_did_not_make(client: redis.Redis) -> None:
    with pytest.raises(AuditQueryError, match="next_cursor"):
        query(client, cursor="not-a-cursor")
    with pytest.raises(AuditQueryError, match="next_cursor"):
        query(client, cursor="1" * 16 + "-0")  # longer than any id of our era


def test_query_after_the_first_possible_id_is_an_empty_last_page(client: redis.Redis) -> None:
    chained(client, 3)
    for first in ("0-0", "00-0", "0-000", "000000000000000-000000000000000"):  # Redis refuses "(00-0"
        assert query(client, cursor=first) == {"entries": [], "next_cursor": None}


def test_a_damaged_record_is_listed_as_unreadable_and_named_by_verify_without_breaking_the_page(
    client: redis.Redis,
) -> None:
    log = chained(client, 4)
    rewrite(client, [log[0], {**log[1], "record": "{not json"}, {**log[2], "seq": "x"}, log[3]])
    page = query(client, limit=10)
    assert [e.get("unreadable", False) for e in page["entries"]] == [False, False, True, False]
    assert page["entries"][1]["seq"] == 0  # the damaged seq reads as 0
    assert verify(client)["first_broken"]["seq"] == 2
