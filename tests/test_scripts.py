"""Every Lua script touches only the keys its typed call declares, proven on a real Redis with MONITOR.

Each script is run through its typed call in the situations that take it down each of its paths; MONITOR shows
every command a script runs (as client `lua`), right after the EVALSHA that ran it, and Redis' own
COMMAND GETKEYS says which arguments of each command are keys. Every one must be among the EVALSHA's KEYS.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis

from events.envelope import Event
from events.money.budgets import Budget
from events.store import (
    audit_scripts,
    budget_scripts,
    cache_scripts,
    counter_scripts,
    job_scripts,
    keyspace,
    metric_scripts,
    user_scripts,
)
from events.store.audit_scripts import Link
from events.store.cache_scripts import Bounds, Shared
from events.store.counter_scripts import LedgerBatch
from events.store.job_scripts import CacheRole, Cancelled, Outcome, SubmitCache, Submitted
from events.store.scripts import LUA, Call, Scripts, script, script_names
from events.store.taskmsg import RUN_AGENT_TASK, redelivered, task_message
from tests.stack import RedisServer, wait_for

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", '"': b'"', "\\": b"\\"}


def unquote(token: str) -> bytes:
    """One argument as MONITOR quotes it, back to its bytes."""
    out, i = bytearray(), 0
    while i < len(token):
        if token[i] == "\\" and i + 1 < len(token):
            if token[i + 1] == "x":
                out += bytes([int(token[i + 2 : i + 4], 16)])
                i += 4
                continue
            out += _ESCAPES.get(token[i + 1], token[i + 1].encode())
            i += 2
            continue
        out += token[i].encode()
        i += 1
    return bytes(out)


class Monitor:
    """`redis-cli monitor` writing every command the server runs to a file."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self.out = path.open("wb")
        self.proc = subprocess.Popen(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(port), "monitor"],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: path.read_bytes().startswith(b"OK"), what="MONITOR to start")

    def stop(self) -> list[tuple[str, list[bytes]]]:
        """Stop, and return (client, arguments) for every command seen."""
        time.sleep(0.2)  # let the last lines arrive
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.out.close()
        lines = []
        for line in self.path.read_text(errors="surrogateescape").splitlines()[1:]:
            head, _, rest = line.partition("] ")
            client = head.rpartition(" ")[2]
            lines.append((client, [unquote(t) for t in _TOKEN.findall(rest)]))
        return lines


def keys_of(client: redis.Redis, args: list[bytes]) -> list[bytes]:
    """The key arguments of one command, as Redis itself finds them."""
    try:
        return [k.encode() if isinstance(k, str) else k for k in client.command_getkeys(*args)]
    except redis.ResponseError:  # a command without keys
        return []


@pytest.fixture(scope="module")
def server(logdir: Path) -> Iterator[RedisServer]:
    srv = RedisServer(logdir).start()
    yield srv
    srv.stop()


def run_all(r: redis.Redis) -> list[Call[Any]]:
    """Take every script down its paths through its typed call; returns the calls made."""
    scripts, calls = Scripts(r), []

    def run(c: Call[Any]) -> Any:
        calls.append(c)
        return scripts.run(c)

    now, user, job, queue = time.time(), "scripted", "j_" + "5" * 32, "agents-scripts"
    fields = {"id": job, "owner": user, "agent": "query", "status": "queued", "attempt": "1", "query": "2+2"}
    submit = {
        "job_id": job,
        "owner": user,
        "fields": fields,
        "now": now,
        "job_ttl_s": 60,
        "queue": queue,
        "message": task_message(RUN_AGENT_TASK, [job, 1], queue, task_id=job),
        "digest": "d",
        "idempotency_ttl_s": 60,
        "lifecycle": {"status": "queued"},
        "audit": {"actor": user, "action": "job.submit"},
        "audit_max_len": 1000,
    }
    run(job_scripts.submit(**submit, idempotency_key="k1"))
    run(job_scripts.submit(**{**submit, "job_id": "j_" + "6" * 32}, idempotency_key="k1"))  # the key is taken
    run(job_scripts.submit(**submit, idempotency_key=None))  # sent again: finds its job
    r.hset(
        keyspace.budget_config(user),
        mapping={
            "user": Budget("user", 10_000, "total").to_json(),
            "agent:query": Budget("agent:query", 10**9, "daily").to_json(),
        },
    )
    run(
        budget_scripts.hold(
            user_id=user, job_id=job, amount_micros=100, scopes=["user", "agent:query"], now=now, expires_at=now + 60
        )
    )
    run(budget_scripts.hold(user_id=user, job_id=job, amount_micros=100, scopes=["user"], now=now, expires_at=now))
    run(
        budget_scripts.hold(user_id=user, job_id="j_x", amount_micros=10**6, scopes=["user"], now=now, expires_at=now)
    )  # rejected
    start = {"job_id": job, "attempt": 1, "now": now, "lease_token": "t1", "lease_ms": 5000, "worker": "w", "data": {}}
    run(job_scripts.start(**start))
    run(job_scripts.start(**start))  # sent again: carries on
    run(job_scripts.start(**{**start, "lease_token": "other"}))  # running: refused
    run(job_scripts.heartbeat(job_id=job, lease_token="t1", lease_ms=5000))
    ids = budget_scripts.period_id_list(now)
    run(budget_scripts.extend(user_id=user, job_id=job, needed_micros=500, period_ids=ids))
    r.hset(keyspace.budget_config(user), "session:s", Budget("session:s", 10**9, "weekly").to_json())
    r.hset(keyspace.budget_hold(user, job), "scopes", json.dumps(["user", "agent:query", "session:s"]))
    run(budget_scripts.extend(user_id=user, job_id=job, needed_micros=800, period_ids=ids))  # a new budget
    run(budget_scripts.extend(user_id=user, job_id=job, needed_micros=10**6, period_ids=ids))  # rejected
    run(budget_scripts.extend(user_id=user, job_id=job, needed_micros=800, period_ids='["a","b","c","d"]'))
    run(budget_scripts.extend(user_id=user, job_id="j_none", needed_micros=800, period_ids=ids))
    usage = {"model": "m", "cost_micros": 300}
    run(
        budget_scripts.charge(
            user_id=user, job_id=job, attempt=1, charge_id="1:1", cost_micros=300, now=now, usage=usage
        )
    )
    run(
        budget_scripts.charge(
            user_id=user, job_id=job, attempt=1, charge_id="1:1", cost_micros=300, now=now, usage=usage
        )
    )  # the same charge again
    run(budget_scripts.charge_document(user_id=user, doc_id="d1", charge_id="e1", cost_micros=5, now=now, usage=usage))
    outcome = Outcome("succeeded", "done", {"result": "4"}, result="4")
    finish = {
        "job_id": job,
        "attempt": 1,
        "now": now,
        "outcome": outcome,
        "usage": {},
        "seq": 3,
        "job_ttl_s": 60,
        "stream_ttl_s": 60,
    }
    run(job_scripts.finish(**finish, lease_token="wrong"))
    run(job_scripts.finish(**finish, lease_token="t1"))
    run(budget_scripts.settle(user_id=user, job_id=job, now=now + 86400 * 40))  # other periods: moved
    run(budget_scripts.settle(user_id=user, job_id=job, now=now, period_ids=ids))
    run(budget_scripts.settle(user_id=user, job_id=job, now=now))  # nothing left
    run(budget_scripts.spend(user_id=user, cost_micros=9_000, scopes=["user", "agent:query"], now=now, usage=usage))
    for status in ("queued", "running"):
        other = f"j_{status:0>32}"[-34:]
        r.hset(keyspace.job(other), mapping={**fields, "id": other, "status": status})
        run(job_scripts.cancel(job_id=other, now=now, job_ttl_s=60, stream_ttl_s=60, data={}))
    run(job_scripts.cancel(job_id=job, now=now, job_ttl_s=60, stream_ttl_s=60, data={}))
    run(job_scripts.cancel(job_id="j_missing", now=now, job_ttl_s=60, stream_ttl_s=60, data={}))
    lost = "j_" + "7" * 32
    message = task_message(RUN_AGENT_TASK, [lost, 2], queue, origin="sweeper")
    requeue = {"now": now, "message": message, "max_attempts": 2, "queue": queue, "job_ttl_s": 60, "stream_ttl_s": 60}
    for attempt, cancel in ((1, "0"), (2, "0"), (1, "1")):
        r.hset(
            keyspace.job(lost),
            mapping={**fields, "id": lost, "status": "running", "attempt": attempt, "cancel": cancel},
        )
        run(job_scripts.requeue(job_id=lost, attempt=attempt, **requeue))
    run(job_scripts.requeue(job_id=lost, attempt=9, **requeue))  # gone
    recheck_paths(r, run, now, queue)
    r.hset(keyspace.user(user), mapping={"user_id": user, "role": "user"})
    run(user_scripts.create_key(user_id=user, key_hash="h1", key_id="k1", record={"user_id": user}))
    run(user_scripts.create_key(user_id="nobody", key_hash="h2", key_id="k2", record={"user_id": "nobody"}))
    run(user_scripts.update_user(user_id=user, key_hashes=[], fields={"role": "readonly"}))  # a key is missing
    run(user_scripts.update_user(user_id=user, key_hashes=["h1"], fields={"role": "readonly"}))
    run(user_scripts.update_user(user_id="nobody", key_hashes=[], fields={"role": "readonly"}))
    for _ in range(2):
        run(
            user_scripts.note_auth_failure(
                ip="10.0.0.1", window=7, ttl_s=60, now=now, audit={"action": "x"}, audit_max_len=1000
            )
        )
    run(user_scripts.summarise_auth_failures(window=7, window_s=60, now=now, audit_max_len=1000))
    link = Link("1-1", 1, "0" * 64, "a" * 64, "{}")
    run(audit_scripts.append(head_seq=0, head_hash="", links=[link]))
    run(audit_scripts.append(head_seq=0, head_hash="", links=[link]))  # moved
    [(entry_id, _)] = r.xrange(keyspace.AUDIT_LOG)
    run(audit_scripts.cut(seq=1, hash="a" * 64, entry_ids=[entry_id]))
    run(counter_scripts.count_lifecycle(group="g", entries=[("1-1", "started"), ("1-1", "started")], dedupe_ttl_s=60))
    hour = keyspace.ledger_hour(user, "2026113012")
    batch = LedgerBatch({keyspace.ledger_seen("1970010100"): ["2-2"]}, {hour: {"cost": 5}}, {hour: 60})
    assert run(counter_scripts.apply_ledger(batch=batch, seen_ttl_s=60)) == frozenset()
    assert run(counter_scripts.apply_ledger(batch=batch, seen_ttl_s=60)) == {"2-2"}  # applied before
    for family, kind in (("jobs_seen", "counter"), ("jobs_seen", "gauge")):
        run(
            metric_scripts.register(
                family=family, kind=kind, label_names=["a"], label_values=["1"], max_families=5, max_series=5
            )
        )
    run(
        metric_scripts.register(
            family="other", kind="counter", label_names=[], label_values=[], max_families=1, max_series=5
        )
    )
    return calls


def recheck_paths(r: redis.Redis, run: Callable[[Call[Any]], Any], now: float, queue: str) -> None:
    """recheck.lua down each of its paths: waiting, delivered, unknown, missing twice, reenqueued, changed, gone."""
    job = "j_" + "8" * 32
    run(queued_submit(job, "scripted", now, queue))
    ids = r.hmget(keyspace.job(job), "msg_id", "msg_origin", "msg_tag")
    message = task_message(RUN_AGENT_TASK, [job, 1], queue, task_id=ids[0], origin=ids[1], delivery_tag=ids[2])
    look = {"job_id": job, "attempt": 1, "queue": queue, "message": message, "restored": redelivered(message)}
    look |= {"depth": 100, "confirm_s": 1.0, "new_message": None}
    assert run(job_scripts.recheck(now=now, **look)) == "waiting"
    r.lrem(queue, 0, message)
    r.hset(keyspace.KOMBU_UNACKED, ids[2], "[]")
    assert run(job_scripts.recheck(now=now, **look)) == "delivered"
    r.hdel(keyspace.KOMBU_UNACKED, ids[2])
    r.rpush(queue, "{}", "{}")
    assert run(job_scripts.recheck(now=now, **{**look, "depth": 1})) == "unknown"
    r.delete(queue)
    new = task_message(RUN_AGENT_TASK, [job, 1], queue, origin="sweeper")
    assert run(job_scripts.recheck(now=now, **{**look, "new_message": new})) == "missing"  # the first look
    assert run(job_scripts.recheck(now=now + 0.5, **{**look, "new_message": new})) == "missing"  # too soon
    assert run(job_scripts.recheck(now=now + 2, **{**look, "new_message": new})) == "reenqueued"
    assert r.lrange(queue, 0, -1) == [new]
    assert run(job_scripts.recheck(now=now + 3, **look)) == "changed"  # it has the new message now
    r.hset(keyspace.job(job), "status", "cancelled")
    assert run(job_scripts.recheck(now=now + 4, **look)) == "gone"
    assert r.zscore(keyspace.QUEUED_JOBS, job) is None
    run_cache_paths(run, r, now, queue)


def queued_submit(job_id: str, owner: str, now: float, queue: str, **extra: Any) -> Call[Any]:
    """submit.lua for a plain queued `query` job of `owner` (no idempotency key, no audit record)."""
    fields = {"id": job_id, "owner": owner, "agent": "query", "status": "queued", "attempt": "1", "query": "2+2"}
    return job_scripts.submit(
        job_id=job_id,
        owner=owner,
        fields=fields,
        now=now,
        job_ttl_s=60,
        queue=queue,
        message=task_message(RUN_AGENT_TASK, [job_id, 1], queue, task_id=job_id),
        idempotency_key=None,
        digest="d",
        idempotency_ttl_s=60,
        lifecycle={"status": "queued"},
        audit=None,
        audit_max_len=1000,
        **extra,
    )


def run_cache_paths(run: Callable[[Call[Any]], Any], r: redis.Redis, now: float, queue: str) -> None:
    """The response cache's paths through submit, finish and cancel: leader, follower, hit, needs_hold."""
    user, digest = "cached", "c" * 64
    leader, follower, hit, queued = ("j_" + c * 32 for c in "abcd")
    cache = SubmitCache(digest, "0", True, 60, 10, 60, 60, "offline", {"llm_calls": 0})

    def submit(job_id: str, **extra: Any) -> Any:
        return run(queued_submit(job_id, user, now, queue, **extra))

    assert submit(hit, cache=replace(cache, may_run=False)).outcome is Submitted.NEEDS_HOLD
    assert submit(leader, cache=cache).role is CacheRole.LEADER
    assert submit(follower, cache=replace(cache, may_run=False)).role is CacheRole.FOLLOWER
    start = {"attempt": 1, "now": now, "lease_token": "t", "lease_ms": 5000, "worker": "w", "data": {}}
    run(job_scripts.start(job_id=leader, **start))
    ended = {
        "job_id": leader,
        "attempt": 1,
        "now": now,
        "lease_token": "t",
        "outcome": Outcome("succeeded", "done", {"result": "4"}, result="4"),
        "usage": {},
        "seq": 1,
        "job_ttl_s": 60,
        "stream_ttl_s": 60,
        "digest": digest,
        "entry": json.dumps({"result": "4", "source_job": leader}),
        "bounds": Bounds(60, 1, 10_000),
        "shared": Shared("succeeded", "offline", result="4", usage={}),
    }
    assert run(cache_scripts.finish_leader(**ended, followers=[])).outcome == "moved"
    assert run(cache_scripts.finish_leader(**ended, followers=[follower])).followers_ended == 1
    assert submit(hit, cache=replace(cache, may_run=False)).role is CacheRole.HIT
    assert submit(queued, cache=replace(cache, digest="e" * 64)).role is CacheRole.LEADER
    failed = Shared("failed", "offline", error={"code": "shared_run_failed", "message": "m"})
    cancel = {"job_id": queued, "now": now, "job_ttl_s": 60, "stream_ttl_s": 60, "data": {}, "digest": "e" * 64}
    assert run(cache_scripts.cancel_leader(**cancel, followers=[], shared=failed)) is Cancelled.CANCELLED
    release = {"job_id": queued, "now": now, "job_ttl_s": 60, "stream_ttl_s": 60, "digest": "e" * 64}
    assert run(cache_scripts.release(**release, followers=[], shared=failed)) == 0
    assert run(cache_scripts.release(**release, followers=[hit], shared=failed)) == "moved"
    assert run(cache_scripts.release(**{**release, "job_id": leader + "x"}, followers=[], shared=failed)) == 0


def test_every_script_touches_only_the_keys_its_call_declares(server: RedisServer, tmp_path: Path) -> None:
    r = redis.Redis(port=server.port, decode_responses=True)
    raw = redis.Redis(port=server.port)
    monitor = Monitor(server.port, tmp_path / "monitor.log")
    try:
        calls = run_all(r)
    finally:
        seen = monitor.stop()
    assert {c.script.name for c in calls} == set(script_names())  # every script was run
    by_sha = {c.script.sha: c.script.name for c in calls}
    declared: set[bytes] | None = None
    current, checked, ran = "", 0, set()
    for client, args in seen:
        if client != "lua":
            command = args[0].upper() if args else b""
            declared = None
            if command == b"EVALSHA":
                current = by_sha[args[1].decode()]
                declared = set(args[3 : 3 + int(args[2])])
            continue
        assert declared is not None, f"a script command outside any EVALSHA: {args}"
        ran.add(current)
        for key in keys_of(raw, args):
            assert key in declared, f"{current}.lua touches {key!r} ({args[0]!r}), not among its KEYS {declared}"
            checked += 1
    assert ran == set(script_names()) and checked > 100
    raw.close()
    r.close()


def test_each_script_documents_its_keys_arguments_and_reply() -> None:
    for name in script_names():
        own = (LUA / f"{name}.lua").read_text()
        assert "\n-- KEYS:" in own and "\n-- ARGV:" in own and "\n-- Returns" in own, name
        assert script(name).source.endswith(own)


def test_an_event_written_by_a_script_reads_back_as_an_envelope(server: RedisServer) -> None:
    r = redis.Redis(port=server.port, decode_responses=True)
    Scripts(r).run(
        budget_scripts.spend(user_id="env", cost_micros=1, scopes=["user"], now=1000.5, usage={"model": "m"})
    )
    _, fields = r.xrevrange(keyspace.USAGE_STREAM, count=1)[0]
    event = Event.from_fields(fields)
    assert (event.type, event.ts, event.data, event.v, event.extra) == ("usage", 1000.5, {"model": "m"}, 1, {})
    r.close()


def test_the_lua_helpers_constants_agree_with_the_python_ones() -> None:
    """_emit.lua knows job streams by their prefix and _budget.lua caps the alerts stream: the same values as
    keyspace's and budget_scripts', so renaming a key family or changing the cap cannot silently part them."""
    emit = (LUA / "_emit.lua").read_text()
    prefix = keyspace.job_stream("x").partition("{")[0]
    assert re.search(rf"string\.sub\(stream, 1, {len(prefix)}\) == '{re.escape(prefix)}'", emit), prefix
    budget = (LUA / "_budget.lua").read_text()
    assert budget.count(f"'{budget_scripts.ALERTS_MAX_LEN}'") == 1
