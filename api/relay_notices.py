"""Which job streams have news: the relay's subscription to the notices their writers publish.

Every writer of a job stream publishes the stream's key on a channel of the same name after appending
(`_emit.lua`, events/publisher.py). The relay subscribes to the channels of the streams it watches on one connection
of its own, and reads only the streams named by a notice, so a read costs what has news, not every open stream.

A notice carries nothing but the key: the stream stays the one source of events, so a lost notice delays an
event, never loses it. After every (re)connection, and for each channel as its subscription is confirmed, the
stream counts as having news, which covers anything written before the subscription took effect.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Callable

import redis

from events.envelope import text

log = logging.getLogger("api.relay")

CHUNK = 1000  # channels per SUBSCRIBE / UNSUBSCRIBE command
PING_S = 10.0  # a quiet connection is checked this often
SILENCE_S = 3 * PING_S  # no reply, not even to a PING, for this long: the connection is dead; make a new one


class Notices:
    """Subscriptions to the notices of the streams wanted; `news(key)` is called for each notice, and `news(None)`
    when any stream may have news (a new connection)."""

    def __init__(self, client: Any, news: Callable[[str | None], None]) -> None:
        self.client = client  # its pool lends the connection, held while the relay runs
        self.news = news
        self.wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._pending: dict[str, bool] = {}  # changes not sent yet: key -> wanted (O(changes) to send, not O(keys))
        self._changed = asyncio.Event()
        self._heard = 0.0  # loop time of the last reply

    def want(self, key: str) -> None:
        """Start receiving `key`'s notices (soon: the subscription is sent by the running task)."""
        self.wanted.add(key)
        self._pending[key] = True
        self._changed.set()

    def drop(self, key: str) -> None:
        """Stop receiving `key`'s notices."""
        self.wanted.discard(key)
        self._pending[key] = False
        self._changed.set()

    async def run(self, closing: Callable[[], bool]) -> None:
        """Hold the subscription until `closing()`, reconnecting after any failure."""
        delay = 0.05
        while not closing():
            conn = None
            tasks: list[asyncio.Task[None]] = []
            try:
                conn = await self.client.connection_pool.get_connection()
                conn._parser.set_pubsub_push_handler(_as_is)  # as redis-py's PubSub does: see _as_is
                self._subscribed = set()
                self._pending = dict.fromkeys(self.wanted, True)  # a new connection subscribes to all of them
                self._changed.set()
                self._heard = asyncio.get_running_loop().time()
                tasks = [
                    asyncio.create_task(self._read(conn, closing), name="sse-relay-notices-read"),
                    asyncio.create_task(self._send(conn), name="sse-relay-subscriptions"),
                ]
                self.news(None)  # whatever was written while we were not listening
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raises what ended it
                delay = 0.05
            except (redis.RedisError, OSError) as ex:
                if not closing():
                    log.warning("relay notices lost (%s); reconnecting in %.2fs", ex, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if conn is not None:
                    await conn.disconnect()
                    await self.client.connection_pool.release(conn)

    async def _read(self, conn: Any, closing: Callable[[], bool]) -> None:
        """Pass each notice on. The read sets no timer (one per notice was 8% of the process at 5,000 notices/s,
        py-spy): `_send` watches for silence."""
        loop = asyncio.get_running_loop()
        while not closing():
            reply = await conn.read_response(timeout=math.inf, push_request=True)
            self._heard = loop.time()
            if isinstance(reply, list) and len(reply) >= 2 and reply[0] in (b"message", b"subscribe"):
                self.news(text(reply[1]))

    async def _send(self, conn: Any) -> None:
        """Keep the connection's subscriptions equal to `wanted`, ping it while it is quiet, and end with an error
        when nothing, not even a reply to a ping, came for SILENCE_S."""
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() - self._heard > SILENCE_S:
                raise redis.ConnectionError(f"No reply from Redis for {SILENCE_S:.0f}s.")
            try:
                async with asyncio.timeout(PING_S):
                    await self._changed.wait()
            except TimeoutError:
                await conn.send_packed_command(conn.pack_command("PING"), check_health=False)
                continue
            self._changed.clear()
            await self._sync(conn)

    async def _sync(self, conn: Any) -> None:
        """Send the subscription changes made since the last time. Its own frame: the keys it names are let go
        of when it returns (the waiting loop above would hold its last lists of keys, and, pinned by them, the
        memory of streams long closed: docs/BENCHMARKS.md)."""
        pending, self._pending = self._pending, {}
        add = [k for k, wanted in pending.items() if wanted and k not in self._subscribed]
        gone = [k for k, wanted in pending.items() if not wanted and k in self._subscribed]
        self._subscribed.update(add)
        self._subscribed.difference_update(gone)
        for command, keys in (("SUBSCRIBE", add), ("UNSUBSCRIBE", gone)):
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start : start + CHUNK]
                await conn.send_packed_command(conn.pack_command(command, *chunk), check_health=False)


async def _as_is(message: Any) -> Any:
    """The notices' handler of push messages. redis-py's default logs each one at debug level, building its
    `str()` first even when debug is off: 15% of the API process's CPU at 5,000 notices/s (py-spy)."""
    return message
