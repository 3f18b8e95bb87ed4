"""The tamper-evident audit log: audit events chained by SHA-256, verified, trimmed from a checkpoint.

The API writes audit events to `stream:audit`; the audit consumer group appends each, exactly once and in
order, to `audit:log`, where every record holds the hash of the one before:
hash = sha256(prev + "\\n" + seq + "\\n" + record). Editing, removing or reordering a record breaks the chain
at that point, and `verify()` names the first broken link. Trimming keeps a checkpoint (the last removed
record's seq and hash), so the rest still verifies.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from events.consumer import Entry
from events.envelope import Event

GROUP = "audit"
LOG = "audit:log"
HEAD = "audit:head"
SOURCES = "audit:sources"
CHECKPOINT = "audit:checkpoint"
GENESIS = "0" * 64
_APPEND = (Path(__file__).with_name("lua") / "audit_append.lua").read_text()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def audit_event(actor: str, action: str, *, resource: str = "", result: str = "success", ip: str = "",
                details: Mapping[str, Any] | None = None, ts: float) -> Event:
    """An audit event; callers put ids and key prefixes in `details`, never a secret."""
    data = {"actor": actor, "action": action, "resource": resource, "result": result, "ip": ip,
            "details": dict(details or {})}
    return Event("audit", "", 0, ts, 0, data)


def canonical(event: Event) -> str:
    """The record as hashed: the audit data and its time, as sorted, compact JSON."""
    return json.dumps({**event.data, "ts": round(event.ts, 6)}, sort_keys=True, separators=(",", ":"))


def link_hash(prev: str, seq: int, record: str) -> str:
    """The hash of one record, chained to the previous one."""
    return hashlib.sha256(f"{prev}\n{seq}\n{record}".encode()).hexdigest()


class AuditChain:
    """Handler for the audit group: appends each entry to the chain (a compare-and-set per record)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._append = client.register_script(_APPEND)

    def __call__(self, entries: Sequence[Entry]) -> None:
        """Append the entries in stream order, skipping those appended before."""
        for entry_id, event in entries:
            if event.type == "audit":
                self.append(entry_id, canonical(event))

    def append(self, source: str, record: str) -> str:
        """Append one record; returns 'ok' or 'seen'."""
        while True:
            head = self.client.hmget(HEAD, "seq", "hash")
            seq = int(head[0] or 0)
            prev = _text(head[1]) if head[1] else self._genesis()
            outcome = _text(self._append(keys=[LOG, HEAD, SOURCES],
                                         args=[str(seq), source, seq + 1, prev, link_hash(prev, seq + 1, record),
                                               record]))
            if outcome != "moved":
                return outcome

    def _genesis(self) -> str:
        checkpoint = self.client.hget(CHECKPOINT, "hash")
        return _text(checkpoint) if checkpoint else GENESIS


def _records(client: Any, start: str = "-", count: int = 1000) -> Any:
    while True:
        batch = client.xrange(LOG, start, "+", count=count)
        if not batch:
            return
        yield from batch
        last = _text(batch[-1][0])
        ms, _, n = last.partition("-")
        start = f"{ms}-{int(n) + 1}"


def verify(client: Any, *, limit: int | None = None) -> dict[str, Any]:
    """Recompute the chain from the checkpoint (or genesis); report the first broken link."""
    checkpoint = client.hmget(CHECKPOINT, "seq", "hash")
    seq = int(checkpoint[0] or 0)
    prev = _text(checkpoint[1]) if checkpoint[1] else GENESIS
    checked = 0
    for _, raw in _records(client):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        got_seq = int(fields.get("seq", -1))
        broken = None
        if got_seq != seq + 1:
            broken = f"seq gap: expected {seq + 1}, found {got_seq}"
        elif fields.get("prev") != prev:
            broken = "prev mismatch: the record does not point at the one before it"
        elif link_hash(prev, got_seq, fields.get("record", "")) != fields.get("hash"):
            broken = "hash mismatch: the record was altered"
        if broken:
            return {"ok": False, "checked": checked, "head_seq": _head_seq(client),
                    "first_broken": {"seq": seq + 1, "reason": broken}}
        seq, prev = got_seq, fields["hash"]
        checked += 1
        if limit is not None and checked >= limit:
            break
    head = client.hmget(HEAD, "seq", "hash")
    if limit is None and head[0] is not None and (int(head[0]) != seq or _text(head[1]) != prev):
        return {"ok": False, "checked": checked, "head_seq": int(head[0]),
                "first_broken": {"seq": seq + 1, "reason": "head mismatch: records after this one are missing"}}
    return {"ok": True, "checked": checked, "head_seq": _head_seq(client), "first_broken": None,
            "from_checkpoint": int(checkpoint[0] or 0)}


def _head_seq(client: Any) -> int:
    return int(client.hget(HEAD, "seq") or 0)


def trim(client: Any, *, keep_last: int | None = None, older_than_s: float | None = None,
         now: float) -> dict[str, Any]:
    """Remove the oldest records (beyond `keep_last`, or older than `older_than_s`), checkpointing the last one."""
    doomed: list[tuple[str, dict[str, str]]] = []
    total = client.xlen(LOG)
    for entry_id, raw in _records(client):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        too_many = keep_last is not None and total - len(doomed) > keep_last
        too_old = older_than_s is not None and json.loads(fields["record"]).get("ts", now) < now - older_than_s
        if not (too_many or too_old):
            break
        doomed.append((_text(entry_id), fields))
    if not doomed:
        return {"removed": 0, "checkpoint_seq": int(client.hget(CHECKPOINT, "seq") or 0)}
    last = doomed[-1][1]
    pipe = client.pipeline(transaction=True)
    pipe.hset(CHECKPOINT, mapping={"seq": last["seq"], "hash": last["hash"]})
    pipe.xdel(LOG, *[entry_id for entry_id, _ in doomed])
    pipe.srem(SOURCES, *[fields["source"] for _, fields in doomed])
    pipe.execute()
    return {"removed": len(doomed), "checkpoint_seq": int(last["seq"])}


def query(client: Any, *, actor: str | None = None, action: str | None = None, since: float | None = None,
          until: float | None = None, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
    """Records newest first, filtered; `next_cursor` continues the listing."""
    top = f"({cursor}" if cursor else "+"
    found: list[dict[str, Any]] = []
    next_cursor = None
    while len(found) < limit:
        batch = client.xrevrange(LOG, top, "-", count=200)
        if not batch:
            next_cursor = None
            break
        for entry_id, raw in batch:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            record = json.loads(fields["record"])
            next_cursor = _text(entry_id)
            if since is not None and record.get("ts", 0) < since:
                return {"entries": found, "next_cursor": None}
            if (actor and record.get("actor") != actor) or (action and record.get("action") != action) or \
                    (until is not None and record.get("ts", 0) > until):
                continue
            found.append({"seq": int(fields["seq"]), "hash": fields["hash"], **record})
            if len(found) == limit:
                break
        top = f"({next_cursor}"
    return {"entries": found, "next_cursor": next_cursor if len(found) == limit else None}
