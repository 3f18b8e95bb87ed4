"""The tamper-evident audit log: audit events chained by SHA-256, verified, trimmed from a checkpoint.

The API writes audit events to `stream:audit`; the audit consumer group appends each, exactly once and in
order, to `audit:log`, where every record holds the hash of the one before:
hash = sha256(prev + "\\n" + seq + "\\n" + record). Editing, removing or reordering a record breaks the chain
at that point, and `verify()` names the first broken link. Trimming keeps a checkpoint (the last removed
record's seq and hash), so the rest still verifies.

Keys: `audit:log` (stream of records: seq, prev, hash, source, record), `audit:head` (hash: seq, hash of the
newest record), `audit:seen` (sorted set of the `stream:audit` entry ids appended, scored by their time in ms:
the dedupe of redeliveries, kept for DEDUPE_WINDOW_S whatever the retention) and `audit:checkpoint` (hash: seq,
hash of the last trimmed record).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator, Mapping, Sequence

import redis

from events.envelope import STREAM_ID, Event, canonical_id, text, text_map
from events.errors import DomainError
from events.process.consumer import Entry
from events.store import audit_scripts, keyspace
from events.store.audit_scripts import Link
from events.store.fields import float_field, int_field, json_field
from events.store.scripts import Scripts

GROUP = "audit"
LOG, HEAD, SEEN, CHECKPOINT = keyspace.AUDIT_LOG, keyspace.AUDIT_HEAD, keyspace.AUDIT_SEEN, keyspace.AUDIT_CHECKPOINT
GENESIS = "0" * 64
DEDUPE_WINDOW_S = 7 * 24 * 3600  # far longer than an entry stays pending before dead-lettering
PAGE = 1000  # records read per XRANGE while verifying or trimming
QUERY_SCAN_MAX = 10_000  # records one query() call looks at before it returns a short page with a cursor
CLOCK_SKEW_S = 300.0  # how far a record's ts may run ahead of the time it was appended


class AuditQueryError(DomainError):
    """Raised when a query's cursor is not a cursor that query() returned."""

    code = "invalid_cursor"


def audit_event(
    actor: str,
    action: str,
    *,
    resource: str = "",
    result: str = "success",
    ip: str = "",
    details: Mapping[str, Any] | None = None,
    ts: float,
) -> Event:
    """An audit event (type "audit", no job) for `stream:audit`.

    Args:
        actor: Who acted: a user id, "anonymous" or a service name.
        action: A dotted noun: auth.failure, permission.denied, user.create, key.revoke, job.submit, budget.set...
        resource: What was acted on (user id, key id, job id, path).
        result: "success", "failure" or "denied".
        ip: The client's address.
        details: Extra JSON-able facts. Key ids and key prefixes only, never a key, token or password: the
            record is kept for the whole retention period and shown to every auditor.
        ts: When it happened, epoch seconds.
    """
    data = {
        "actor": actor,
        "action": action,
        "resource": resource,
        "result": result,
        "ip": ip,
        "details": dict(details or {}),
    }
    return Event("audit", "", 0, ts, 0, data)


def canonical(event: Event) -> str:
    """The record as hashed: the audit data and its time, as sorted, compact JSON."""
    return json.dumps({**event.data, "ts": round(event.ts, 6)}, sort_keys=True, separators=(",", ":"))


def link_hash(prev: str, seq: int, record: str) -> str:
    """The hash of one record, chained to the previous one."""
    return hashlib.sha256(f"{prev}\n{seq}\n{record}".encode()).hexdigest()


def _pair(reply: Sequence[Any], default_hash: str) -> tuple[int, str]:
    """(seq, hash) from an HMGET of seq and hash."""
    return int(reply[0] or 0), text(reply[1]) if reply[1] else default_hash


class AuditChain:
    """Handler for the audit group: appends each entry to the chain once, by compare-and-set on the head."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.scripts = Scripts(client)

    def __call__(self, entries: Sequence[Entry]) -> None:
        """Append the audit entries in stream order, skipping those appended before; other types are ignored."""
        records = [(entry_id, canonical(event)) for entry_id, event in entries if event.type == "audit"]
        if records:
            self.append_many(records)

    def append(self, source: str, record: str) -> int:
        """Append one canonical record read from entry `source`; returns 1, or 0 if it was appended before."""
        return self.append_many([(source, record)])

    def append_many(self, records: Sequence[tuple[str, str]]) -> int:
        """Append (source entry id, canonical record) pairs in order, once each; returns how many were new."""
        while True:
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(HEAD, "seq", "hash")
            pipe.hmget(CHECKPOINT, "seq", "hash")
            pipe.zmscore(SEEN, [source for source, _ in records])
            head, checkpoint, seen = pipe.execute()
            # Without a head (nothing appended yet) the chain starts from the checkpoint, or from genesis.
            seq, prev = _pair(head, "") if head[0] else _pair(checkpoint, GENESIS)
            links: list[Link] = []
            fresh: set[str] = set()
            for (source, record), was_seen in zip(records, seen, strict=True):
                if was_seen is not None or source in fresh:
                    continue
                fresh.add(source)
                seq += 1
                digest = link_hash(prev, seq, record)
                links.append(Link(source, seq, prev, digest, record))
                prev = digest
            if not fresh:
                return 0
            appended = self.scripts.run(
                audit_scripts.append(
                    head_seq=int(head[0] or 0), head_hash=text(head[1]) if head[1] else "", links=links
                )
            )
            if appended is not None:  # else another consumer appended first: recompute from its head
                return appended


def _records(client: Any, after: str | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """The log's records in order, after entry id `after` (exclusive), decoded."""
    start = f"({after}" if after else "-"
    while batch := client.xrange(LOG, start, "+", count=PAGE):
        for entry_id, raw in batch:
            yield text(entry_id), text_map(raw)
        start = f"({text(batch[-1][0])}"


def _check(fields: Mapping[str, str], seq: int, prev: str) -> tuple[str, str] | None:
    """Why a record does not follow (seq, prev), as (reason, detail), or None when it does."""
    found = fields.get("seq", "")
    if found != str(seq + 1):
        return "seq gap", f"Expected record {seq + 1} here but found {found or 'none'}: records were removed or moved."
    if fields.get("prev") != prev:
        return "prev mismatch", "The record does not point at the hash of the one before it."
    if link_hash(prev, seq + 1, fields.get("record", "")) != fields.get("hash"):
        return "hash mismatch", "The record's content does not match its hash: it was altered."
    return None


def verify(client: Any, *, limit: int | None = None) -> dict[str, Any]:
    """Recompute the chain from the checkpoint (or genesis) and report the first broken link.

    Returns {"ok", "checked", "head_seq", "from_checkpoint", "first_broken"}; first_broken is None or
    {"seq", "reason", "detail"} with reason "hash mismatch", "prev mismatch", "seq gap" or "head mismatch".
    With `limit`, only the oldest `limit` records are checked (and not the head). Records appended while it runs
    are checked up to the head read at the start; a trim that races it makes it start again from the new checkpoint.
    """
    result: dict[str, Any] = {}
    for _ in range(3):
        start = client.hmget(CHECKPOINT, "seq", "hash")
        result = _walk(client, _pair(start, GENESIS), limit)
        if result["ok"] or client.hmget(CHECKPOINT, "seq", "hash") == start:
            break
    return result


def _walk(client: Any, checkpoint: tuple[int, str], limit: int | None) -> dict[str, Any]:
    head_seq, head_hash = _pair(client.hmget(HEAD, "seq", "hash"), "")
    seq, prev = checkpoint
    checked = 0

    def outcome(at: int | None = None, reason: str = "", detail: str = "") -> dict[str, Any]:
        broken = None if at is None else {"seq": at, "reason": reason, "detail": detail}
        return {
            "ok": broken is None,
            "checked": checked,
            "head_seq": head_seq,
            "from_checkpoint": checkpoint[0],
            "first_broken": broken,
        }

    if head_seq < seq or (head_seq == seq and seq and head_hash != prev):
        return outcome(seq, "head mismatch", "The head does not match the checkpoint.")
    # Appends update the head in the same step, so every record up to the head we read exists; later ones
    # may be appending right now and are left to the next verification.
    beyond = False
    for _, fields in _records(client):
        if seq == head_seq:
            beyond = True
            break
        broken = _check(fields, seq, prev)
        if broken:
            return outcome(seq + 1, *broken)
        seq, prev, checked = seq + 1, fields["hash"], checked + 1
        if limit is not None and checked >= limit:
            return outcome()
    if seq < head_seq:
        return outcome(seq + 1, "head mismatch", "The newest records are missing: the log ends before its head.")
    if head_seq and prev != head_hash:
        return outcome(seq, "head mismatch", "The log was rewritten: its last hash is not the head's.")
    if beyond and _pair(client.hmget(HEAD, "seq", "hash"), "")[0] == head_seq:
        return outcome(seq + 1, "head mismatch", "Records follow the head: they were added outside the chain.")
    return outcome()


def trim(client: Any, *, keep_last: int | None = None, older_than_s: float | None = None, now: float) -> dict[str, Any]:
    """Remove the oldest records (beyond `keep_last`, or older than `older_than_s`), checkpointing the last one.

    Only a prefix that verifies is removed: at a broken link trimming stops, so the evidence stays, and the
    result carries "broken": {"seq", "reason", "detail"}. Dedupe marks older than DEDUPE_WINDOW_S before `now`
    are forgotten too. Returns {"removed", "checkpoint_seq"[, "broken"]}.
    """
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be 0 or more, not {keep_last}.")
    client.zremrangebyscore(SEEN, "-inf", f"({int((now - DEDUPE_WINDOW_S) * 1000)}")
    scripts = Scripts(client)
    removed, broken = 0, None
    for _ in range(3):  # another trim may race this one: then carry on from its checkpoint
        start = client.hmget(CHECKPOINT, "seq", "hash")
        done, broken = _trim_from(client, scripts, _pair(start, GENESIS), keep_last, older_than_s, now)
        removed += done
        if not broken or client.hmget(CHECKPOINT, "seq", "hash") == start:
            break
    result: dict[str, Any] = {"removed": removed, "checkpoint_seq": int(client.hget(CHECKPOINT, "seq") or 0)}
    if broken:
        result["broken"] = broken
    return result


def _trim_from(
    client: Any,
    scripts: Scripts,
    checkpoint: tuple[int, str],
    keep_last: int | None,
    older_than_s: float | None,
    now: float,
) -> tuple[int, dict[str, Any] | None]:
    seq, prev = checkpoint
    excess = client.xlen(LOG) - keep_last if keep_last is not None else 0
    removed, taken, chunk = 0, 0, list[str]()
    broken = None
    for entry_id, fields in _records(client):
        if not (taken < excess or (older_than_s is not None and _ts(fields, now) < now - older_than_s)):
            break
        problem = _check(fields, seq, prev)
        if problem:  # the verified records before it still go
            broken = {"seq": seq + 1, "reason": problem[0], "detail": problem[1]}
            break
        seq, prev, taken = seq + 1, fields["hash"], taken + 1
        chunk.append(entry_id)
        if len(chunk) >= PAGE:  # each chunk moves the checkpoint and removes its records in one step
            removed += scripts.run(audit_scripts.cut(seq=seq, hash=prev, entry_ids=chunk))
            chunk = []
    if chunk:
        removed += scripts.run(audit_scripts.cut(seq=seq, hash=prev, entry_ids=chunk))
    return removed, broken


def _ts(fields: Mapping[str, str], default: float) -> float:
    try:
        return float(json.loads(fields["record"]).get("ts", default))
    except (KeyError, ValueError, TypeError, AttributeError):
        return default


def query(
    client: Any,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: float | None = None,
    until: float | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """Records newest first, filtered by actor, action and ts range (epoch s, inclusive).

    Returns {"entries": [record fields + seq + hash], "next_cursor"}; pass next_cursor back to continue. A page
    may hold fewer than `limit` entries while next_cursor is set, when a sparse filter scanned many records.
    """
    if cursor and not STREAM_ID.fullmatch(cursor):
        raise AuditQueryError(f"The cursor {cursor!r} is not valid; pass back the next_cursor a listing returned.")
    cursor = canonical_id(cursor) if cursor else cursor
    if cursor == "0-0":  # nothing is older than the first possible id (and Redis refuses "(0-0")
        return {"entries": [], "next_cursor": None}
    top = f"({cursor}" if cursor else "+"
    # A record is appended after it happened, so nothing older than `since` (less clock skew) needs a look.
    bottom = str(max(0, int((since - CLOCK_SKEW_S) * 1000))) if since is not None else "-"
    found: list[dict[str, Any]] = []
    scanned, last = 0, None
    while len(found) < limit and scanned < QUERY_SCAN_MAX:
        count = min(PAGE, QUERY_SCAN_MAX - scanned)
        try:
            batch = client.xrevrange(LOG, top, bottom, count=count)
        except redis.ResponseError as ex:  # a cursor Redis refuses, e.g. beyond the last possible id
            raise AuditQueryError(f"The cursor {cursor!r} is not one a listing returned.") from ex
        if not batch:
            return {"entries": found, "next_cursor": None}
        for entry_id, raw in batch:
            last, scanned = text(entry_id), scanned + 1
            fields = text_map(raw)
            record = json_field(fields.get("record"), None)
            if not isinstance(record, dict):  # damaged: shown as such (verify names the broken link)
                record = {"unreadable": True}
            ts = float_field(str(record.get("ts", ""))) or 0.0
            if (
                (actor is None or record.get("actor") == actor)
                and (action is None or record.get("action") == action)
                and (since is None or ts >= since)
                and (until is None or ts <= until)
            ):
                found.append({**record, "seq": int_field(fields.get("seq")), "hash": fields.get("hash", "")})
                if len(found) == limit:
                    break
        else:
            if len(batch) < count:  # the oldest record (in range) was read: nothing follows
                return {"entries": found, "next_cursor": None}
        top = f"({last}"
    return {"entries": found, "next_cursor": last}
