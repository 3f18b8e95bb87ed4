"""The relay's own reads and notices on real Redis (api/relay_reads.py, api/relay_notices.py): XREAD packed and
parsed by hand gives what redis-py's xread gives, over RESP3 and RESP2, with awkward field values; a killed
connection or an error reply costs one read, not the reader; and notices on a connection that went silent are
noticed and resubscribed."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from api import relay_notices
from api.relay import Relay
from api.relay_reads import Reads, pack_xread
from events.envelope import Event
from events.store import keyspace
from tests.stack import RedisServer

ODD_FIELDS = {
    b"type": b"token",
    b"data": b'{"text":"a\\r\\nb"}',
    b"empty": b"",
    b"raw": b"\xff\xfe\r\n\x00",
    "é".encode(): b"x",
}


def test_the_packed_xread_is_what_redis_py_sends() -> None:
    streams = {"stream:job:{a}": "0-0", "stream:job:{é}": "1700000000000-12"}
    theirs = b"".join(Connection().pack_command("XREAD", "COUNT", 256, "STREAMS", *streams, *streams.values()))
    assert pack_xread(streams, 256) == theirs


@pytest.mark.parametrize("protocol", [None, 3, 2])
async def test_reads_give_what_redis_py_xread_gives(redis_server: RedisServer, protocol: int | None) -> None:
    """Over RESP3 (redis-py's default, and asked for) and RESP2, against redis-py's xread (its default shape)."""
    client = aioredis.Redis.from_url(redis_server.url, **({"protocol": protocol} if protocol else {}))
    legacy = aioredis.Redis.from_url(redis_server.url)
    a, b, empty = (keyspace.job_stream(f"reads-{protocol}-{n}") for n in ("a", "b", "none"))
    for n in range(3):
        await client.xadd(a, {**ODD_FIELDS, b"seq": str(n).encode()})
    await client.xadd(b, {b"type": b"done"})
    streams = {a: "0-0", b: "0-0", empty: "0-0"}
    reads = Reads(client)
    got = await reads.xread(streams, 2)
    theirs = await legacy.xread(streams, count=2)
    assert [(key, [(i, dict(f)) for i, f in entries]) for key, entries in theirs] == got
    assert [key for key, _ in got] == [a.encode(), b.encode()]  # a stream with no entries is left out
    assert got[0][1][0][1] == {**ODD_FIELDS, b"seq": b"0"}
    after_second = await reads.xread({a: got[0][1][-1][0].decode()}, 10)
    assert [(key, [fields[b"seq"] for _, fields in entries]) for key, entries in after_second] == [(a.encode(), [b"2"])]
    assert await reads.xread({empty: "0-0"}, 10) == []
    await reads.close()
    await client.aclose()
    await legacy.aclose()


async def test_a_killed_connection_or_an_error_reply_costs_one_read(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    admin = redis.Redis.from_url(redis_server.url)
    key, wrong = keyspace.job_stream("reads-killed"), keyspace.job_stream("reads-wrong-type")
    await client.xadd(key, {b"type": b"token"})
    await client.set(wrong, "not a stream")
    reads = Reads(client)
    assert len(await reads.xread({key: "0-0"}, 10)) == 1
    admin.client_kill_filter(_type="normal", skipme=True)  # every other client's connection, ours among them
    with pytest.raises((redis.ConnectionError, OSError)):
        await reads.xread({key: "0-0"}, 10)
    assert len(await reads.xread({key: "0-0"}, 10)) == 1  # a new connection
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await reads.xread({wrong: "0-0"}, 10)
    assert len(await reads.xread({key: "0-0"}, 10)) == 1
    await reads.close()
    assert len(client.connection_pool._in_use_connections) == 0  # every connection it took was given back
    await client.aclose()
    admin.close()


async def test_notices_on_a_silent_connection_are_resubscribed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped (SIGSTOP: the socket stays open, nothing answers) for longer than SILENCE_S: the notices'
    connection is given up and a new one subscribes again; events written after it resumes reach the subscriber."""
    monkeypatch.setattr(relay_notices, "PING_S", 0.2)
    monkeypatch.setattr(relay_notices, "SILENCE_S", 0.6)
    server = RedisServer(tmp_path).start()
    writer = aioredis.Redis.from_url(server.url)
    reader = aioredis.Redis.from_url(server.url, socket_timeout=15)
    relay = Relay(reader, sweep=0)  # no sweep: only notices (and the new connection's catch-up) bring news
    job = "j_silent"
    sub = relay.subscribe(job)
    try:
        await asyncio.sleep(0.3)  # subscribed
        caplog.set_level(logging.WARNING, logger="api.relay")
        os.kill(server.proc.popen.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)
        finally:
            os.kill(server.proc.popen.pid, signal.SIGCONT)
        logged = [record.getMessage() for record in caplog.records]
        assert any("No reply from Redis" in message for message in logged), logged
        started = time.monotonic()
        delivery: Any = None
        while delivery is None and time.monotonic() - started < 10:
            event = Event("token", job, 0, time.time(), 1, {"text": "after"})
            await writer.xadd(keyspace.job_stream(job), event.to_fields())
            await writer.publish(keyspace.job_stream(job), "")
            delivery = await sub.next(1)
        assert delivery is not None and delivery.type == "token"
    finally:
        relay.unsubscribe(sub)
        await relay.close()
        await writer.aclose()
        await reader.aclose()
        server.stop()
