"""The audit chain on a Redis of its own: appends once, verifies, names the first broken link, trims from a
checkpoint; the Python RBAC API writes records that end up in it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from api.rbac_service import Permission, Role, get_rbac_service
from events.process import audit_chain
from events.process.audit_chain import LOG, AuditChain, audit_event, query, trim, verify
from events.store import keyspace
from settings import Settings
from tests.stack import RedisServer, base_env, run_all
from tests.test_audit import run_group


@pytest.fixture
def r(logdir: Path) -> Iterator[redis.Redis]:
    server = RedisServer(logdir).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.url = server.url  # type: ignore[attr-defined]
    yield client
    client.close()
    server.stop()


def fill(r: redis.Redis, n: int, actor: str = "alice") -> list[str]:
    ids = []
    for i in range(n):
        event = audit_event(actor, "job.submit" if i % 2 else "key.create", resource=f"r{i}", ts=1000.0 + i)
        ids.append(r.xadd(keyspace.AUDIT_STREAM, event.to_fields()))
    return ids


def test_the_chain_holds_every_entry_in_order_and_verifies(r: redis.Redis) -> None:
    fill(r, 25)
    run_group(r)
    result = verify(r)
    assert result["ok"] and result["checked"] == 25 and result["head_seq"] == 25
    seqs = [int(f["seq"]) for _, f in r.xrange(LOG)]
    assert seqs == list(range(1, 26))


def test_a_redelivered_batch_is_appended_once_and_racing_consumers_do_not_fork(r: redis.Redis) -> None:
    fill(r, 40)
    entries = [(i, audit_chain.Event.from_fields(f)) for i, f in r.xrange(keyspace.AUDIT_STREAM)]
    chains = [AuditChain(r), AuditChain(r)]
    run_all([threading.Thread(target=c, args=(entries,)) for c in chains])  # both see every entry
    chains[0](entries)  # and once more
    assert r.xlen(LOG) == 40 and verify(r)["ok"]


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_tampering_is_found_at_the_first_broken_link(r: redis.Redis, tamper: str) -> None:
    fill(r, 10)
    run_group(r)
    log = r.xrange(LOG)
    victim_id = log[4][0]  # seq 5
    if tamper == "delete":
        r.xdel(LOG, victim_id)
    else:
        # Rebuild the log from seq 5 on with the record edited (or two records swapped), as an attacker would.
        tail = [dict(f) for _, f in log[4:]]
        if tamper == "edit":
            record = json.loads(tail[0]["record"])
            record["actor"] = "mallory"
            tail[0]["record"] = json.dumps(record, sort_keys=True, separators=(",", ":"))
        else:
            tail[0], tail[1] = tail[1], tail[0]
        r.xdel(LOG, *[i for i, _ in log[4:]])
        for fields in tail:
            r.xadd(LOG, fields)
    result = verify(r)
    assert result["ok"] is False and result["first_broken"]["seq"] == 5, result


def test_trimming_keeps_a_checkpoint_so_the_rest_still_verifies(r: redis.Redis) -> None:
    fill(r, 30)
    run_group(r)
    assert trim(r, keep_last=10, now=time.time()) == {"removed": 20, "checkpoint_seq": 20}
    result = verify(r)
    assert result["ok"] and result["checked"] == 10 and result["from_checkpoint"] == 20
    fill(r, 5, actor="bob")
    run_group(r)
    assert verify(r)["ok"] and verify(r)["head_seq"] == 35


def test_query_filters_by_actor_and_action_and_pages(r: redis.Redis) -> None:
    fill(r, 12)
    fill(r, 3, actor="bob")
    run_group(r)
    page = query(r, actor="alice", action="job.submit", limit=4)
    assert len(page["entries"]) == 4 and all(e["actor"] == "alice" for e in page["entries"])
    rest = query(r, actor="alice", action="job.submit", limit=4, cursor=page["next_cursor"])
    assert len(rest["entries"]) == 2 and rest["next_cursor"] is None
    seqs = [e["seq"] for e in page["entries"] + rest["entries"]]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 6


def test_the_python_rbac_api_creates_users_and_keys_and_audits_them(r: redis.Redis) -> None:
    rbac = get_rbac_service(Settings.from_env(base_env(r.url)))  # type: ignore[attr-defined]

    async def scenario() -> tuple[str, bool, bool]:
        await rbac.create_user(user_id="user_123", role=Role.USER, metadata={"email": "user@example.com"})
        key = await rbac.generate_api_key("user_123")
        may_submit = await rbac.check_permission(user_id="user_123", permission=Permission.JOBS_SUBMIT)
        may_admin = await rbac.check_permission(user_id="user_123", permission=Permission.USERS_ADMIN)
        await rbac.log_audit(user_id="user_123", action="query", resource="math_agent", result="success")
        await rbac.close()
        return key, may_submit, may_admin

    key, may_submit, may_admin = asyncio.run(scenario())
    assert key.startswith("sk_live_") and may_submit and not may_admin
    run_group(r)
    actions = [e["action"] for e in query(r, limit=10)["entries"]]
    assert actions == ["query", "key.create", "user.create"]
    assert key not in json.dumps(query(r, limit=10))
    assert verify(r)["ok"]
