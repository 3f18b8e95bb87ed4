"""The lifecycle consumer: counts job transitions (submitted, started, retried, and each end) exactly once."""

from __future__ import annotations

from typing import Any, Sequence

from events import keys
from events.consumer import Entry

GROUP = "lifecycle"
DEDUPE_TTL_S = 24 * 3600

# KEYS: counts hash, then one dedupe key per entry; ARGV: dedupe ttl, then one counter name per entry.
_COUNT = """
local applied = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
    applied = applied + 1
  end
end
return applied
"""

COUNTER_OF_STATUS = {"queued": "submitted", "running": "started"}


def counter_name(status: str) -> str:
    """The counter a lifecycle status adds to: `queued` counts as submitted, `running` as started."""
    return COUNTER_OF_STATUS.get(status, status)


class LifecycleCounter:
    """Handler for the lifecycle stream; its effect and its dedupe marks land in one script."""

    def __init__(self, client: Any) -> None:
        self._count = client.register_script(_COUNT)

    def __call__(self, entries: Sequence[Entry]) -> None:
        """Add each entry's status to the job counts, skipping entries already applied."""
        marks = [keys.dedupe(GROUP, entry_id) for entry_id, _ in entries]
        names = [counter_name(str(event.data.get("status", "unknown"))) for _, event in entries]
        self._count(keys=[keys.JOB_COUNTS, *marks], args=[DEDUPE_TTL_S, *names])


def read_counts(client: Any) -> dict[str, int]:
    """The job counts so far, by counter name."""
    raw = client.hgetall(keys.JOB_COUNTS)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
