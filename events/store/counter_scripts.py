"""The consumer groups' effects as typed script calls: job counts and ledger counters, applied exactly once.

Each call marks its stream entries applied in the same step as their effect, so a redelivered entry changes
nothing: the lifecycle counts with one key per entry, the ledger with one set per hour of entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from events.envelope import text
from events.store import keyspace
from events.store.scripts import Call, call


def count_lifecycle(*, group: str, entries: Sequence[tuple[str, str]], dedupe_ttl_s: int) -> Call[int]:
    """Add one to the job counter named for each (entry id, counter) pair, once per entry; returns how many
    entries were applied."""
    marks = [keyspace.dedupe(group, entry_id) for entry_id, _ in entries]
    return call(
        "lifecycle_count",
        [keyspace.JOB_COUNTS, *marks],
        [dedupe_ttl_s, *(name for _, name in entries)],
        lambda r: int(r),
    )


@dataclass(frozen=True)
class LedgerBatch:
    """What a batch of usage entries adds to the ledger, summed per counter.

    Attributes:
        seen: Per mark set (`keyspace.ledger_seen`), the ids of the batch's entries it holds once applied.
        counters: Per counter hash, the amount each field grows by.
        ttls: The hashes that expire, and after how many seconds from this write.
    """

    seen: Mapping[str, Sequence[str]]
    counters: Mapping[str, Mapping[str, int]]
    ttls: Mapping[str, int]


def apply_ledger(*, batch: LedgerBatch, seen_ttl_s: int) -> Call[frozenset[str]]:
    """Apply the batch and mark its entries applied, all or nothing: when some of its entries were applied
    before, nothing changes and their ids come back (the caller applies the others in a batch of their own)."""
    rows = [[batch.ttls.get(key, 0), fields] for key, fields in batch.counters.items()]
    return call(
        "ledger_apply",
        [*batch.seen, *batch.counters],
        [seen_ttl_s, json.dumps(list(batch.seen.values())), json.dumps(rows, ensure_ascii=False)],
        lambda r: frozenset(text(entry_id) for entry_id in r),
    )
