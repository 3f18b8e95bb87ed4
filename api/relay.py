"""The SSE relay: one Redis reader per API process, fanning job events out to in-process queues.

However many clients watch, a process holds one blocking XREAD over every watched job stream (plus
its own wake-up stream, written when a new subscriber arrives so it never waits for the block to time
out). Each subscriber has a bounded queue; one that falls behind is dropped and resumes by
Last-Event-ID. An entry is decoded and serialised once, whoever reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from events.envelope import TERMINAL_TYPES, EnvelopeError, Event, text
from events.store import keyspace

log = logging.getLogger("api.relay")


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair; raises ValueError if malformed."""
    ms, sep, seq = entry_id.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise ValueError(f"{entry_id!r} is not a stream id like 1700000000000-0.")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Delivery:
    """One event as every subscriber sends it."""

    id: str
    type: str
    payload: bytes

    @property
    def terminal(self) -> bool:
        """True for done, error and cancelled."""
        return self.type in TERMINAL_TYPES


HANDOVER = Delivery("", "handover", b"")  # the last thing a subscriber gets from a draining process


@dataclass(eq=False)
class Subscription:
    """One client's view of one job stream."""

    key: str
    pos: tuple[int, int]
    queue: asyncio.Queue[Delivery] = field(repr=False)
    dropped: bool = False  # too slow, or handed over: no more events come; the client resumes elsewhere
    since: int = 0  # the relay's read in flight when it subscribed: that read's entries are not for it

    async def next(self, timeout: float) -> Delivery | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None


def decode_entry(entry_id: str, fields: Any) -> Delivery | None:
    """Turn a stream entry into what SSE sends; None for an entry that is not an event."""
    try:
        event = Event.from_fields(fields)
    except EnvelopeError:
        log.warning("skipping malformed entry %s", entry_id)
        return None
    payload = json.dumps({"id": entry_id, **event.to_json()}, separators=(",", ":"), ensure_ascii=False)
    return Delivery(entry_id, event.type, payload.encode())


class Relay:
    """Multiplexes every subscribed job stream of this process over one reader connection."""

    def __init__(
        self, reader: Any, waker: Any, instance: str, *, block_ms: int = 5000, count: int = 256, buffer: int = 2048
    ) -> None:
        self.reader = reader  # a client whose socket timeout exceeds block_ms
        self.waker = waker
        self.wake_key = keyspace.relay_wake(instance)
        self.block_ms = block_ms
        self.count = count
        self.buffer = buffer
        self.subs: dict[str, set[Subscription]] = {}
        self.cursors: dict[str, tuple[int, int]] = {}
        self._wake_cursor = "0-0"
        self._woken = False
        self._reads = 0  # reads started so far; the newest may be in flight
        self._in_flight = False
        self._rewound: dict[str, tuple[int, int]] = {}  # lowest position asked for while a read was in flight
        self._task: asyncio.Task[None] | None = None
        self._has_subs = asyncio.Event()
        self._closing = False
        self._handing_over = False

    @property
    def streams_open(self) -> int:
        """How many subscriptions this process holds."""
        return sum(len(s) for s in self.subs.values())

    def subscribe(self, job_id: str, after: str = "0-0") -> Subscription:
        """Follow a job's stream from just after `after` (0-0: from the start)."""
        key = keyspace.job_stream(job_id)
        pos = parse_id(after)
        sub = Subscription(key, pos, asyncio.Queue(self.buffer), since=self._reads)
        self.subs.setdefault(key, set()).add(sub)
        if key not in self.cursors or pos < self.cursors[key]:
            self.cursors[key] = pos
        if self._in_flight:
            # The read in flight may move this stream's cursor past `pos`: after it, read again from `pos`.
            self._rewound[key] = min(self._rewound.get(key, pos), pos)
        if self._handing_over:
            self._hand_over(sub)
            return sub
        self._has_subs.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="sse-relay")
        self._wake()
        return sub

    def hand_over(self) -> None:
        """This process is stopping: every subscriber, now and later, gets what is queued for it, then HANDOVER."""
        self._handing_over = True
        for subs in list(self.subs.values()):
            for sub in list(subs):
                self._hand_over(sub)

    def _hand_over(self, sub: Subscription) -> None:
        sub.dropped = True
        self.unsubscribe(sub)
        with contextlib.suppress(asyncio.QueueFull):  # a full queue ends its stream anyway: the sub is dropped
            sub.queue.put_nowait(HANDOVER)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop following; the stream's cursor goes when its last subscriber does."""
        subs = self.subs.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self.subs[sub.key]
            self.cursors.pop(sub.key, None)
            if not self.subs:
                self._has_subs.clear()

    async def close(self) -> None:
        """Stop the reader: wake its blocked XREAD so it sees the flag (cancelling a blocked read can hang)."""
        self._closing = True
        self._has_subs.set()
        if self._task is None or self._task.done():
            return
        with contextlib.suppress(redis.RedisError):
            await self.waker.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
        await asyncio.wait({self._task}, timeout=2)
        if not self._task.done():
            self._task.cancel()

    def _wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        asyncio.get_running_loop().create_task(self._send_wake())

    async def _send_wake(self) -> None:
        try:
            await self.waker.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
        except redis.RedisError as ex:
            log.warning("relay wake-up failed: %s", ex)

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            if not self.subs:
                await self._has_subs.wait()
                continue
            self._woken = False
            streams = {self.wake_key: self._wake_cursor}
            streams.update({k: f"{ms}-{seq}" for k, (ms, seq) in self.cursors.items()})
            self._reads += 1
            read = self._reads
            self._in_flight = True
            try:
                reply = await self.reader.xread(streams, count=self.count, block=self.block_ms)
                delay = 0.05
            except redis.RedisError as ex:
                log.warning("relay cannot read from redis: %s; retrying in %.2fs", ex, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            finally:
                self._in_flight = False
                rewound, self._rewound = self._rewound, {}
            for key, entries in reply or []:
                self._dispatch(text(key), entries, read)
            for key, pos in rewound.items():
                if key in self.cursors and pos < self.cursors[key]:
                    self.cursors[key] = pos

    def _dispatch(self, key: str, entries: list[Any], read: int) -> None:
        if key == self.wake_key:
            self._wake_cursor = text(entries[-1][0])
            return
        subs = self.subs.get(key)
        if not subs or not entries:
            return
        last = parse_id(text(entries[-1][0]))
        if key in self.cursors and last > self.cursors[key]:
            self.cursors[key] = last
        deliveries = []
        for entry_id, fields in entries:
            delivery = decode_entry(text(entry_id), fields)
            if delivery is not None:
                deliveries.append((parse_id(delivery.id), delivery))
        for sub in list(subs):
            if sub.since >= read:  # it subscribed while this read was in flight: the next read is its first
                continue
            for pos, delivery in deliveries:
                if pos <= sub.pos:
                    continue
                try:
                    sub.queue.put_nowait(delivery)
                except asyncio.QueueFull:
                    # A client this far behind resumes by Last-Event-ID instead of growing our memory.
                    sub.dropped = True
                    self.unsubscribe(sub)
                    break
                sub.pos = pos
