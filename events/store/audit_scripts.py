"""The audit chain's writes as typed script calls: append by compare-and-set on the head, and cut a prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from events.envelope import text
from events.store import keyspace
from events.store.scripts import Call, call


@dataclass(frozen=True)
class Link:
    """One record to append: the entry of stream:audit it came from, its seq, the hash before it, its hash."""

    source: str
    seq: int
    prev: str
    hash: str
    record: str


def _appended(reply: Any) -> int | None:
    return None if text(reply) == "moved" else int(reply)


def append(*, head_seq: int, head_hash: str, links: Sequence[Link]) -> Call[int | None]:
    """Append `links` if the head is still (`head_seq`, `head_hash`) and none was appended before; returns how
    many were appended, or None when the head moved (read it again and retry)."""
    args: list[str | int] = [str(head_seq), head_hash]
    for link in links:
        args += [link.source, link.seq, link.prev, link.hash, link.record]
    return call("audit_append", [keyspace.AUDIT_LOG, keyspace.AUDIT_HEAD, keyspace.AUDIT_SEEN], args, _appended)


def cut(*, seq: int, hash: str, entry_ids: Sequence[str]) -> Call[int]:
    """Remove the records `entry_ids` (a verified prefix) and move the checkpoint to (`seq`, `hash`)."""
    return call("audit_cut", [keyspace.AUDIT_LOG, keyspace.AUDIT_CHECKPOINT], [seq, hash, *entry_ids], lambda r: int(r))
