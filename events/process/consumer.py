"""The consumer-group runner behind `python -m events`.

Delivery is at least once; a handler makes its effect idempotent (dedupe by entry id) and durable
before the runner acks. Entries left pending by a dead consumer are taken over with XAUTOCLAIM once
idle for `claim_idle_ms`; an entry delivered `max_deliveries` times goes to the group's dead-letter
stream instead. Fully consumed entries are trimmed, never unread ones.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import redis

from events.envelope import EnvelopeError, Event, text, text_map
from events.store import keyspace

log = logging.getLogger("events.process.consumer")

Entry = tuple[str, Event]
Handler = Callable[[Sequence[tuple[str, Any]]], None]  # entries as Events, or as its own `decode` reads them


@dataclass
class GroupStats:
    """What one runner did since it started."""

    applied: int = 0
    failed: int = 0
    claimed: int = 0
    dead: int = 0


class ConsumerGroup:
    """Runs `handler` over a stream as one consumer of a group.

    Entries reach the handler as Events, or as what its own `decode(fields)` reads them into when it has one (the
    ledger reads four fields of each: a hot path); a decoder raises EnvelopeError for an entry it cannot read."""

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        trim_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.trim_every_s = trim_every_s
        self.clock = clock
        self.stats = GroupStats()
        self.decode: Callable[[Any], Any] = getattr(handler, "decode", Event.from_fields)
        self._last_trim = clock()

    @property
    def dead_stream(self) -> str:
        """Where entries this group gave up on are kept."""
        return keyspace.dead_letters(self.group)

    def ensure_group(self) -> None:
        """Create the group (and the stream) if missing, reading from the stream's start."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as ex:
            if "BUSYGROUP" not in str(ex):
                raise

    def run_once(self) -> int:
        """Reclaim idle entries, read new ones, apply and ack them; returns how many were applied."""
        entries = self._reclaim()
        if not entries:
            entries = self._read()
        if not entries:
            self._maybe_trim()
            return 0
        applied = self._apply(entries)
        self._maybe_trim()
        return applied

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set, riding out Redis outages."""
        delay = 0.1
        while not stop.is_set():
            try:
                self.ensure_group()
                while not stop.is_set():
                    self.run_once()
                delay = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as ex:
                log.warning("redis unavailable for group %s: %s; retrying in %.1fs", self.group, ex, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _decode(self, raw: Sequence[Any]) -> list[tuple[str, Any]]:
        entries: list[tuple[str, Any]] = []
        decode = self.decode
        for entry_id, fields in raw:
            if fields is None:  # deleted while pending
                self.client.xack(self.stream, self.group, entry_id)
                continue
            try:
                entries.append((text(entry_id), decode(fields)))
            except EnvelopeError as ex:
                self._bury(text(entry_id), fields, f"undecodable: {ex}")
        return entries

    def _read(self) -> list[tuple[str, Any]]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=self.block_ms
        )
        if not reply:
            return []
        return self._decode(reply[0][1])

    def _reclaim(self) -> list[tuple[str, Any]]:
        pending = self.client.xpending_range(
            self.stream, self.group, min="-", max="+", count=self.batch, idle=self.claim_idle_ms
        )
        if not pending:
            return []
        for item in pending:
            if item["times_delivered"] >= self.max_deliveries:
                entry_id = text(item["message_id"])
                found = self.client.xrange(self.stream, entry_id, entry_id)
                self._bury(entry_id, found[0][1] if found else {}, f"delivered {item['times_delivered']} times")
        reply = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        claimed = self._decode(reply[1])
        self.stats.claimed += len(claimed)
        return claimed

    def _bury(self, entry_id: str, fields: Any, reason: str) -> None:
        dead = text_map(dict(fields))
        dead.update(dead_reason=reason, dead_id=entry_id, dead_stream=self.stream)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_stream, dead, maxlen=100_000, approximate=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        self.stats.dead += 1
        log.error("dead-lettered %s of %s in group %s: %s", entry_id, self.stream, self.group, reason)

    def _apply(self, entries: list[tuple[str, Any]]) -> int:
        try:
            self.handler(entries)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:
            if len(entries) == 1:  # it stays pending and is retried after claim_idle_ms
                self.stats.failed += 1
                log.exception("entry %s failed in group %s; it stays pending", entries[0][0], self.group)
                return 0
            log.exception("batch of %d failed in group %s; applying one by one", len(entries), self.group)
            return self._apply_each(entries)
        self.client.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        self.stats.applied += len(entries)
        return len(entries)

    def _apply_each(self, entries: list[tuple[str, Any]]) -> int:
        applied = 0
        for entry in entries:
            try:
                self.handler([entry])
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception:
                self.stats.failed += 1
                log.exception("entry %s failed in group %s; it stays pending", entry[0], self.group)
                continue
            self.client.xack(self.stream, self.group, entry[0])
            applied += 1
        self.stats.applied += applied
        return applied

    def _maybe_trim(self) -> None:
        if self.clock() - self._last_trim < self.trim_every_s:
            return
        self._last_trim = self.clock()
        floor = consumed_floor(self.client, self.stream)
        if floor:
            self.client.xtrim(self.stream, minid=floor, approximate=True)


def consumed_floor(client: Any, stream: str) -> str | None:
    """The lowest entry id some group still needs: below it, every group has read and acked."""
    floors: list[tuple[int, int]] = []
    for group in client.xinfo_groups(stream):
        pending = client.xpending(stream, text(group["name"]))
        oldest = pending.get("min") if pending.get("pending") else None
        bound = text(oldest) if oldest else text(group["last-delivered-id"])
        if bound == "0-0":
            return None
        bound_ms, _, bound_seq = bound.partition("-")
        # Nothing below `bound` is needed, `bound` itself may be (pending or next after last-delivered).
        floors.append((int(bound_ms), int(bound_seq) + (0 if oldest else 1)))
    if not floors:
        return None
    ms, seq = min(floors)
    return f"{ms}-{seq}"
