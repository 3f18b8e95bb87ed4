"""The lifecycle consumer: counts job transitions (submitted, started, retried, and each end) exactly once."""

from __future__ import annotations

from typing import Any, Sequence

from events.process.consumer import Entry
from events.store import counter_scripts, keyspace
from events.store.scripts import Scripts

GROUP = "lifecycle"
DEDUPE_TTL_S = 24 * 3600

COUNTER_OF_STATUS = {"queued": "submitted", "running": "started"}


def counter_name(status: str) -> str:
    """The counter a lifecycle status adds to: `queued` counts as submitted, `running` as started."""
    return COUNTER_OF_STATUS.get(status, status)


class LifecycleCounter:
    """Handler for the lifecycle stream; its effect and its dedupe marks land in one script."""

    def __init__(self, client: Any) -> None:
        self.scripts = Scripts(client)

    def __call__(self, entries: Sequence[Entry]) -> None:
        """Add each entry's status to the job counts, skipping entries already applied."""
        names = [(entry_id, counter_name(str(event.data.get("status", "unknown")))) for entry_id, event in entries]
        self.scripts.run(counter_scripts.count_lifecycle(group=GROUP, entries=names, dedupe_ttl_s=DEDUPE_TTL_S))


def read_counts(client: Any) -> dict[str, int]:
    """The job counts so far, by counter name."""
    raw = client.hgetall(keyspace.JOB_COUNTS)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
