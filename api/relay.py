"""The SSE relay: one Redis reader per API process, fanning job events out to in-process queues.

However many clients watch, a process reads each job stream once per batch of news, whoever watches it, and
reads only the streams that have news: their writers publish a notice per append (api/relay_notices.py), and a
read names just the streams noticed since the last one, so its cost follows the events, not the open streams
(one XREAD naming every watched stream made each read cost O(streams open): docs/BENCHMARKS.md). A slow sweep
reads a few watched streams each second whatever the notices say, so a writer that does not publish is still
seen. Each subscriber has a bounded queue; one that falls behind is dropped and resumes by Last-Event-ID. An
entry is decoded and serialised once, whoever reads it. An idle subscriber gets HEARTBEAT from one timer of the
relay's, so waiting for an event sets no timer of its own (a timer per wait was 13% of the process at 5,000
events/s, py-spy). The relay also tends the process's heap as its streams come and go (api/heap.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import redis

from api.heap import Heap
from api.relay_notices import Notices
from api.relay_reads import Entry, Reads
from events.envelope import TERMINAL_TYPES, EnvelopeError, Event
from events.store import keyspace

log = logging.getLogger("api.relay")

HEAP_EVERY_S = 2.0  # how often the heap is tended


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair; raises ValueError if malformed."""
    ms, sep, seq = entry_id.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise ValueError(f"{entry_id!r} is not a stream id like 1700000000000-0.")
    return int(ms), int(seq or 0)


class Delivery(NamedTuple):
    """One event as every subscriber sends it. A tuple: built once per entry read, and a frozen dataclass's
    __init__ cost 5% of the process at 5,000 events/s (py-spy)."""

    id: str
    type: str
    payload: bytes

    @property
    def terminal(self) -> bool:
        """True for done, error and cancelled."""
        return self.type in TERMINAL_TYPES


HANDOVER = Delivery("", "handover", b"")  # the last thing a subscriber gets from a draining process
GONE = Delivery("", "gone", b"")  # its client disconnected: the stream ends
HEARTBEAT = Delivery("", "heartbeat", b"")  # nothing was sent for a while: send a comment, the stream goes on


class Inbox:
    """A subscriber's bounded queue of deliveries, for its one reader: a deque, and a future while the reader
    waits. An asyncio.Queue holds three deques and an Event: 1.6 KB a stream (tracemalloc), and more work per
    event."""

    __slots__ = ("items", "limit", "waiter")

    def __init__(self, limit: int) -> None:
        self.items: collections.deque[Delivery] = collections.deque()
        self.limit = limit
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, delivery: Delivery) -> None:
        """Queue `delivery`; raises asyncio.QueueFull when `limit` are waiting."""
        if len(self.items) >= self.limit:
            raise asyncio.QueueFull
        self.items.append(delivery)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def empty(self) -> bool:
        """Nothing is waiting."""
        return not self.items

    def full(self) -> bool:
        """`limit` are waiting: the next put raises."""
        return len(self.items) >= self.limit

    async def get(self) -> Delivery:
        """The oldest delivery, once there is one."""
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


@dataclass(eq=False, slots=True)
class Subscription:
    """One client's view of one job stream."""

    key: str
    pos: tuple[int, int]
    queue: Inbox = field(repr=False)
    dropped: bool = False  # too slow, or handed over: no more events come; the client resumes elsewhere
    since: int = 0  # the relay's read in flight when it subscribed: that read's entries are not for it
    fed: bool = True  # something was queued since the relay's last heartbeat tick

    async def get(self) -> Delivery:
        """The next event, HEARTBEAT included, however long it takes."""
        return await self.queue.get()

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
        event = Event.json_of_fields(fields)
    except EnvelopeError:
        log.warning("skipping malformed entry %s", entry_id)
        return None
    payload = orjson.dumps({"id": entry_id, **event})
    # Copied: orjson's result keeps the 4 KB buffer it was written into, whatever its length, and a stream's
    # last delivery, and every queued one, lives on (tracemalloc: 4 KB a stream, docs/BENCHMARKS.md).
    return Delivery(entry_id, event["type"], bytes(memoryview(payload)))


class Relay:
    """Multiplexes every subscribed job stream of this process over one reader connection."""

    def __init__(
        self,
        reader: Any,
        *,
        count: int = 256,
        buffer: int = 2048,
        batch: int = 512,
        sweep: int = 64,
        heartbeat_s: float | None = None,
    ) -> None:
        self.wire = Reads(reader)  # XREAD on a connection of the reader's pool, which lends the notices' too
        self.count = count  # entries per stream per read
        self.buffer = buffer
        self.batch = batch  # streams per read
        self.sweep = sweep  # streams read per quiet second whatever the notices say
        self.heartbeat_s = heartbeat_s  # a subscriber sent nothing this long gets HEARTBEAT (None: never)
        self.subs: dict[str, set[Subscription]] = {}
        self.streams_open = 0  # subscriptions held, counted as they come and go (GET /stream/health is public)
        self.cursors: dict[str, tuple[int, int]] = {}
        self.dirty: dict[str, None] = {}  # streams with news, oldest first
        self.reads = 0  # reads started so far; the newest may be in flight
        self.keys_read = 0  # streams named by those reads, in all
        self.notices = Notices(reader, self._noticed)
        self.heap = Heap()
        self._news = asyncio.Event()
        self._swept = 0
        self._in_flight = False
        self._rewound: dict[str, tuple[int, int]] = {}  # lowest position asked for while a read was in flight
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._handing_over = False

    def subscribe(self, job_id: str, after: str = "0-0") -> Subscription:
        """Follow a job's stream from just after `after` (0-0: from the start)."""
        key = keyspace.job_stream(job_id)
        pos = parse_id(after)
        sub = Subscription(key, pos, Inbox(self.buffer), since=self.reads)
        if key not in self.subs:
            self.notices.want(key)
        self.subs.setdefault(key, set()).add(sub)
        self.streams_open += 1
        if key not in self.cursors or pos < self.cursors[key]:
            self.cursors[key] = pos
        if self._in_flight:
            # The read in flight may move this stream's cursor past `pos`: after it, read again from `pos`.
            self._rewound[key] = min(self._rewound.get(key, pos), pos)
        if self._handing_over:
            self._let_go(sub, HANDOVER)
            return sub
        if not self._tasks or any(t.done() for t in self._tasks):
            self._start()
        self._mark(key)  # what the stream holds already, before any notice
        return sub

    def hand_over(self) -> None:
        """This process is stopping: every subscriber, now and later, gets what is queued for it, then HANDOVER."""
        self._handing_over = True
        for subs in list(self.subs.values()):
            for sub in list(subs):
                self._let_go(sub, HANDOVER)

    def end(self, sub: Subscription) -> None:
        """The subscriber's client went away: stop following, and wake its stream so that it ends now."""
        self._let_go(sub, GONE)

    def _let_go(self, sub: Subscription, last: Delivery) -> None:
        """Stop following for `sub` and queue `last` after what it holds (a full queue ends its stream anyway,
        once drained: the sub is dropped)."""
        sub.dropped = True
        self.unsubscribe(sub)
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait(last)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop following; the stream's cursor goes when its last subscriber does."""
        subs = self.subs.get(sub.key)
        if subs is None or sub not in subs:
            return
        subs.remove(sub)
        self.streams_open -= 1
        if not subs:
            del self.subs[sub.key]
            self.cursors.pop(sub.key, None)
            self.dirty.pop(sub.key, None)
            self.notices.drop(sub.key)

    async def close(self) -> None:
        """Stop the reader and the notices."""
        self._closing = True
        self._news.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        for task in tasks:
            task.cancel()
        await self.wire.close()

    def _start(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = [
            asyncio.create_task(self._run(), name="sse-relay"),
            asyncio.create_task(self.notices.run(lambda: self._closing), name="sse-relay-notices"),
            asyncio.create_task(self._tend_heap(), name="sse-relay-heap"),
        ]
        if self.heartbeat_s:
            self._tasks.append(asyncio.create_task(self._heartbeats(self.heartbeat_s), name="sse-relay-heartbeats"))

    def _mark(self, key: str) -> None:
        if key in self.cursors:
            self.dirty[key] = None
            self._news.set()

    def _noticed(self, key: str | None) -> None:
        """A notice for `key`; None: every watched stream may have news."""
        if key is None:
            for watched in self.cursors:
                self.dirty[watched] = None
            self._news.set()
        else:
            self._mark(key)

    def _sweep_some(self) -> None:
        """Count a few watched streams, in turn, as having news (a writer that publishes no notice is seen too)."""
        keys = list(self.cursors)
        if not keys:
            return
        start = self._swept % len(keys)
        for key in (keys[start:] + keys[:start])[: self.sweep]:
            self.dirty[key] = None
        self._swept = start + self.sweep

    async def _tend_heap(self) -> None:
        while not self._closing:
            await asyncio.sleep(HEAP_EVERY_S)
            done = self.heap.tend(self.streams_open)
            if done:
                log.info("heap %s at %d streams", done, self.streams_open)  # not gc.get_freeze_count(): O(objects)

    async def _heartbeats(self, every_s: float) -> None:
        """Every half of `every_s`, HEARTBEAT to each subscriber that was given nothing since the last time: so
        a stream sends something at least every `every_s`, and the per-event path sets no timer."""
        while not self._closing:
            await asyncio.sleep(every_s / 2)
            for subs in list(self.subs.values()):
                for sub in subs:
                    if not sub.fed and sub.queue.empty():
                        sub.queue.put_nowait(HEARTBEAT)
                    sub.fed = False

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            if self.dirty:
                delay = await self._read_news(delay)
                continue
            self._news.clear()
            try:
                async with asyncio.timeout(1.0):
                    await self._news.wait()
            except TimeoutError:
                self._sweep_some()

    async def _read_news(self, delay: float) -> float:
        """Read a batch of the streams with news and dispatch what came; returns the delay before the next try
        after a failure. Its own frame: the last reply is let go of when it returns, not held while the relay
        waits for news (it pinned memory of streams long closed: docs/BENCHMARKS.md)."""
        keys = list(itertools.islice(self.dirty, self.batch))
        for key in keys:
            del self.dirty[key]
        streams = {k: f"{self.cursors[k][0]}-{self.cursors[k][1]}" for k in keys if k in self.cursors}
        if not streams:
            return delay
        self.reads += 1
        self.keys_read += len(streams)
        read = self.reads
        self._in_flight = True
        try:
            reply = await self.wire.xread(streams, self.count)
        except (redis.RedisError, OSError) as ex:
            log.warning("relay cannot read from redis: %s; retrying in %.2fs", ex, delay)
            for key in streams:
                self._mark(key)
            await asyncio.sleep(delay)
            return min(delay * 2, 2.0)
        finally:
            self._in_flight = False
            rewound, self._rewound = self._rewound, {}
        for raw_key, entries in reply:
            key = raw_key.decode()
            self._dispatch(key, entries, read)
            if len(entries) >= self.count:
                self._mark(key)  # there may be more
        for key, pos in rewound.items():
            if key in self.cursors and pos < self.cursors[key]:
                self.cursors[key] = pos
            self._mark(key)
        return 0.05

    def _dispatch(self, key: str, entries: list[Entry], read: int) -> None:
        subs = self.subs.get(key)
        if not subs or not entries:
            return
        deliveries = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            last = parse_id(entry_id)
            delivery = decode_entry(entry_id, fields)
            if delivery is not None:
                deliveries.append((last, delivery))
        if key in self.cursors and last > self.cursors[key]:
            self.cursors[key] = last  # past the last entry read, an event or not
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
                sub.fed = True
