"""The bare SSE baseline of bench/streams.py: about the least a Falcon SSE endpoint fed from Redis can cost.

GET /s/{job_id} streams the entries of `stream:job:{<job_id>}` as `data: <json of the entry's fields>` (so `ts`
and `seq` arrive as the publisher wrote them). One XREAD loop reads every subscribed stream, a cursor each, and
puts each entry on the asyncio.Queue of every connection watching it. The read blocks up to BLOCK_MS and also
names a wake-up stream, written when a stream is first subscribed, so a newcomer is read at once. No auth, no
envelope decoding, no bounds: what is left is the cost of Falcon, uvicorn, redis-py and the one reader. That
reader costs Redis O(streams subscribed) per read, whatever has news (about 13 ms a read at 10,000 streams on a
2-core machine: the bench prints it), so at 10,000 streams this baseline is bound by Redis, not by Python.

Run in one process: `REDIS_URL=redis://... python -m uvicorn bench.bare_sse:app --port P --workers 1`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import falcon.asgi
import redis.asyncio as aioredis
from falcon.asgi import SSEvent

WAKE = "bench:bare:wake"
BLOCK_MS = 1000


def bulk(value: str) -> bytes:
    """One argument of a Redis command, as RESP puts it."""
    raw = value.encode()
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


class Reader:
    """One XREAD loop over every subscribed stream, feeding each connection's queue.

    The command is packed here, not by redis-py: its pure-Python packing of 20,000 arguments takes about 50 ms a
    read at 10,000 streams, which would make the baseline measure redis-py. The keys' part is packed once per
    change of subscriptions, each cursor once per change of cursor."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.queues: dict[str, set[asyncio.Queue[bytes]]] = {}
        self.keys: dict[str, bytes] = {WAKE: bulk(WAKE)}  # the streams the next XREAD names, packed, and in
        self.cursors: dict[str, bytes] = {WAKE: bulk("0-0")}  # the same order, their cursors
        self.keys_part: bytes | None = None  # `keys` joined, until they change
        self.waking = False  # a wake-up is on its way: the next read will name every stream subscribed by then
        self.client: Any = None
        self.task: asyncio.Task[None] | None = None

    async def subscribe(self, key: str) -> asyncio.Queue[bytes]:
        """A new queue of `key`'s entries, from its first one."""
        if self.client is None:  # the first request: the loop runs now
            self.client = aioredis.from_url(self.redis_url, decode_responses=True, protocol=3)
            self.task = asyncio.create_task(self.run())
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        if key not in self.queues:
            self.queues[key] = set()
            self.keys[key], self.cursors[key], self.keys_part = bulk(key), bulk("0-0"), None
            if not self.waking:
                self.waking = True
                await self.client.xadd(WAKE, {"w": "1"}, maxlen=10)
        self.queues[key].add(queue)
        return queue

    def unsubscribe(self, key: str, queue: asyncio.Queue[bytes]) -> None:
        """Stop feeding `queue`; the stream's cursor goes with its last queue."""
        queues = self.queues.get(key, set())
        queues.discard(queue)
        if not queues:
            self.queues.pop(key, None)
            self.keys.pop(key, None)
            self.cursors.pop(key, None)
            self.keys_part = None

    def command(self) -> list[bytes]:
        """XREAD BLOCK of every stream from its cursor, packed."""
        if self.keys_part is None:
            self.keys_part = b"".join(self.keys.values())
        head = b"*%d\r\n$5\r\nXREAD\r\n$5\r\nBLOCK\r\n%s$7\r\nSTREAMS\r\n" % (
            4 + 2 * len(self.keys),
            bulk(str(BLOCK_MS)),
        )
        return [head, self.keys_part, b"".join(self.cursors.values())]

    async def run(self) -> None:
        """Read every subscribed stream from its cursor and fan the entries out, forever."""
        conn = await self.client.connection_pool.get_connection()
        while True:
            self.waking = False  # the command is built before the first await
            await conn.send_packed_command(self.command(), check_health=False)
            reply = await conn.read_response()  # RESP3: a map of stream to entries; None after BLOCK_MS of nothing
            for key, entries in (reply or {}).items():
                if key in self.cursors:
                    self.cursors[key] = bulk(entries[-1][0])
                for _, flat in entries:
                    payload = json.dumps(dict(zip(flat[::2], flat[1::2], strict=True))).encode()
                    for queue in self.queues.get(key, ()):
                        queue.put_nowait(payload)


class Stream:
    """GET /s/{job_id}: the job stream's entries as SSE, from the first one."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str) -> None:
        """Subscribe, then stream."""
        key = f"stream:job:{{{job_id}}}"
        resp.sse = self.events(key, await self.reader.subscribe(key))

    async def events(self, key: str, queue: asyncio.Queue[bytes]) -> AsyncIterator[SSEvent]:
        """A comment first (the client counts the stream open), then every entry."""
        try:
            yield SSEvent(comment="open")
            while True:
                yield SSEvent(data=await queue.get())
        finally:
            self.reader.unsubscribe(key, queue)


def start(env: dict[str, str], logdir: Path) -> tuple[Any, int]:
    """Run the app in one uvicorn process on a free port, reading env["REDIS_URL"]; once it listens, its
    tests.stack.Proc and port. Stop it with `kill()`: on SIGTERM uvicorn waits for the streams, which never end."""
    from tests.stack import Proc, free_port, wait_for  # the bench's, not the server's

    port = free_port()
    argv = ["-m", "uvicorn", "bench.bare_sse:app", "--port", str(port), "--workers", "1", "--no-access-log"]
    proc = Proc(f"bare-sse-{port}", [sys.executable, *argv, "--log-level", "warning"], env, logdir).start()
    wait_for(lambda: _listening(port) or not proc.alive(), timeout=30, what="the bare SSE server")
    if not proc.alive():
        raise RuntimeError(f"The bare SSE server did not start; its log ends: {proc.log()[-2000:]}")
    return proc, port


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def create_app(redis_url: str) -> falcon.asgi.App:
    """The app, reading `redis_url`."""
    app = falcon.asgi.App()
    app.add_route("/s/{job_id}", Stream(Reader(redis_url)))
    return app


app = create_app(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
