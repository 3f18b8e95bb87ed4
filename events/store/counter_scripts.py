"""The consumer groups' effects as typed script calls: job counts and ledger counters, applied exactly once.

Each call sets one dedupe mark per stream entry in the same step as the entry's effect, so a redelivered entry
changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

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
class Increments:
    """What one usage event adds: (counter hash, field, delta) triples and the TTLs of the hashes it touches."""

    entry_id: str
    ops: Sequence[tuple[str, str, int]]
    ttls: Sequence[tuple[str, int]]


def apply_ledger(*, group: str, batch: Sequence[Increments], dedupe_ttl_s: int) -> Call[int]:
    """Apply each event's increments once, summed per counter; returns how many events were applied."""
    marks = [keyspace.dedupe(group, item.entry_id) for item in batch]
    counters: dict[str, int] = {}
    encoded = []
    for item in batch:
        local: dict[str, int] = {}  # an event touches a handful of hashes; index each once
        for key in dict.fromkeys([*(op[0] for op in item.ops), *(ttl[0] for ttl in item.ttls)]):
            local[key] = counters.setdefault(key, len(marks) + len(counters) + 1)  # Lua counts KEYS from 1
        encoded.append(
            {
                "ops": [[local[key], name, delta] for key, name, delta in item.ops],
                "ttl": [[local[key], seconds] for key, seconds in item.ttls],
            }
        )
    return call("ledger_apply", [*marks, *counters], [dedupe_ttl_s, json.dumps(encoded)], lambda r: int(r))
