"""The SSE relay (api/relay.py): its pure parts (stream ids parsed and ordered, entries decoded and serialised
once), then in-process on real Redis: one reader multiplexes streams, wakes for new subscribers, drops laggards,
and hands every stream over when the process drains (with readiness turning false)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import tracemalloc
from typing import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from api.drain import Drain
from api.relay import HANDOVER, Delivery, Inbox, Relay, decode_entry, parse_id
from events.envelope import Event
from events.store import keyspace
from settings import Settings
from tests.stack import RedisServer, base_env

_ids = itertools.count()


@pytest.mark.parametrize(
    ("entry_id", "pair"), [("1700000000000-0", (1700000000000, 0)), ("5-12", (5, 12)), ("0-0", (0, 0)), ("42", (42, 0))]
)
def test_parse_id_reads_stream_ids(entry_id: str, pair: tuple[int, int]) -> None:
    assert parse_id(entry_id) == pair
    assert parse_id("1-2") < parse_id("1-10") < parse_id("2-0")


async def test_an_inbox_keeps_order_refuses_past_its_limit_and_wakes_its_reader() -> None:
    inbox = Inbox(2)
    first, second = Delivery("1-0", "token", b"a"), Delivery("2-0", "token", b"b")
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(first)
    assert await waiting is first and inbox.empty()
    with pytest.raises(TimeoutError):  # a reader that gives up leaves the inbox as it was
        async with asyncio.timeout(0.05):
            await inbox.get()
    inbox.put_nowait(first)
    inbox.put_nowait(second)
    assert inbox.full()
    with pytest.raises(asyncio.QueueFull):
        inbox.put_nowait(second)
    assert [await inbox.get(), await inbox.get()] == [first, second] and inbox.empty()


@pytest.mark.parametrize("entry_id", ["", "abc", "1-", "-1", "1-x", "1-2-3", "$", "+1-0"])
def test_parse_id_refuses_malformed_ids(entry_id: str) -> None:
    with pytest.raises(ValueError):
        parse_id(entry_id)


def test_decode_entry_serialises_events_and_skips_non_events() -> None:
    delivery = decode_entry("1-0", {b"type": b"done", b"job_id": b"j", b"seq": b"4", b"data": b'{"result":"ok"}'})
    assert delivery is not None and delivery.terminal
    assert json.loads(delivery.payload) == {
        "id": "1-0",
        "type": "done",
        "job_id": "j",
        "seq": 4,
        "ts": 0.0,
        "attempt": 0,
        "data": {"result": "ok"},
        "v": 1,
    }
    assert decode_entry("2-0", {b"w": b"1"}) is None


def test_a_delivery_holds_no_more_memory_than_its_event_needs() -> None:
    """Each stream keeps its last delivery, and a slow one all it has queued: a small event must cost about its
    size (orjson's output kept a 4 KB buffer each)."""
    fields = {b"type": b"token", b"job_id": b"j", b"seq": b"4", b"data": b'{"text":"x"}'}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [decode_entry(f"{n}-0", fields) for n in range(1000)]
        per_delivery = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert per_delivery < 600, f"{per_delivery:.0f} bytes a delivery"


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    writer = aioredis.Redis.from_url(redis_server.url)
    reader = aioredis.Redis.from_url(redis_server.url, socket_timeout=15)
    yield writer, reader
    await writer.aclose()
    await reader.aclose()


def new_job() -> str:
    return f"j_{next(_ids) + 7_000_000:032x}"


async def add(client: aioredis.Redis, job_id: str, seq: int, etype: str = "token", *, notice: bool = True) -> str:
    """Append an event as our writers do: the XADD, then the notice on the stream's channel (unless `notice`)."""
    event = Event(etype, job_id, seq, time.time(), 1, {"n": seq})
    pipe = client.pipeline(transaction=False)
    pipe.xadd(keyspace.job_stream(job_id), event.to_fields())
    if notice:
        pipe.publish(keyspace.job_stream(job_id), "")
    entry_id, *_ = await pipe.execute()
    return str(entry_id.decode())


async def test_one_reader_serves_many_streams_and_positions(clients) -> None:
    writer, reader = clients
    relay = Relay(reader)
    a, b = new_job(), new_job()
    first = await add(writer, a, 0)
    await add(writer, a, 1)
    from_start, after_first, other = relay.subscribe(a), relay.subscribe(a, first), relay.subscribe(b)
    await add(writer, b, 0)
    await add(writer, a, 2, "done")
    got_start = [(await from_start.next(5)).type for _ in range(3)]
    got_after = [(await after_first.next(5)).type for _ in range(2)]
    got_other = (await other.next(5)).type
    assert got_start == ["token", "token", "done"] and got_after == ["token", "done"] and got_other == "token"
    assert from_start.queue.empty() and after_first.queue.empty()
    assert relay.streams_open == 3 and len(relay.subs) == 2
    for sub in (from_start, after_first, other):
        relay.unsubscribe(sub)
    assert relay.streams_open == 0 and relay.cursors == {}
    await relay.close()


async def test_streams_open_counts_each_subscription_once_however_often_it_is_let_go(clients) -> None:
    _, reader = clients
    relay = Relay(reader)
    job = new_job()
    first, second, other = relay.subscribe(job), relay.subscribe(job), relay.subscribe(new_job())
    assert relay.streams_open == 3
    relay.end(first)  # the client left; then its stream's generator unsubscribes it again on its way out
    relay.unsubscribe(first)
    relay.unsubscribe(first)
    assert relay.streams_open == 2 == sum(len(subs) for subs in relay.subs.values())
    relay.hand_over()
    relay.unsubscribe(second)
    relay.end(other)
    assert relay.streams_open == 0 and relay.subs == {}
    await relay.close()


async def test_an_entry_that_is_no_event_is_skipped_and_read_past(clients) -> None:
    writer, reader = clients
    relay = Relay(reader)
    job = new_job()
    stream = keyspace.job_stream(job)
    await add(writer, job, 0)
    stray = (await writer.xadd(stream, {"w": "1"})).decode()  # the last entry, and not an event
    sub = relay.subscribe(job)
    assert (await sub.next(5)).type == "token"
    await asyncio.sleep(0.2)
    assert relay.cursors[stream] == parse_id(stray)  # the next read starts after it, not at it again
    await add(writer, job, 1, "done")
    assert (await sub.next(5)).type == "done" and sub.queue.empty()
    relay.unsubscribe(sub)
    await relay.close()


async def test_a_new_subscriber_gets_what_its_stream_holds_at_once(clients) -> None:
    writer, reader = clients
    relay = Relay(reader)
    idle = relay.subscribe(new_job())  # the reader waits for news on this stream alone
    await asyncio.sleep(0.2)
    job = new_job()
    await add(writer, job, 0, notice=False)  # written before anyone watched: no notice will come for it
    started = time.monotonic()
    sub = relay.subscribe(job)
    delivery = await sub.next(8)
    assert delivery is not None and delivery.type == "token"
    assert time.monotonic() - started < 0.5, "the subscriber waited for a notice or the sweep"
    relay.unsubscribe(idle)
    relay.unsubscribe(sub)
    await relay.close()


async def test_a_read_names_only_the_streams_with_news(clients) -> None:
    """500 streams open, events on one: the reads name that stream, not all 500 (the cost follows the events)."""
    writer, reader = clients
    relay = Relay(reader, sweep=0)
    quiet = [relay.subscribe(new_job()) for _ in range(499)]
    job = new_job()
    busy = relay.subscribe(job)
    await asyncio.sleep(0.5)  # the first read of each stream, and the subscriptions, are done
    before = relay.keys_read
    ids = [await add(writer, job, n) for n in range(20)]
    assert [(await busy.next(5)).id for _ in range(20)] == ids
    assert relay.keys_read - before <= 20, relay.keys_read - before
    for sub in [*quiet, busy]:
        relay.unsubscribe(sub)
    await relay.close()


async def test_a_writer_that_sends_no_notice_is_still_read_by_the_sweep(clients) -> None:
    writer, reader = clients
    relay = Relay(reader, sweep=64)
    job = new_job()
    sub = relay.subscribe(job)
    await asyncio.sleep(0.2)
    entry = await add(writer, job, 0, notice=False)
    delivery = await sub.next(5)  # a quiet second sweeps up to 64 streams: this one is among them
    assert delivery is not None and delivery.id == entry
    relay.unsubscribe(sub)
    await relay.close()


async def test_notices_come_back_after_their_connection_is_killed(clients) -> None:
    """Redis drops the relay's subscription connection: it reconnects, subscribes again, reads what it missed."""
    writer, reader = clients
    relay = Relay(reader, sweep=0)
    job = new_job()
    sub = relay.subscribe(job)
    first = await add(writer, job, 0)
    assert (await sub.next(5)).id == first
    assert await writer.client_kill_filter(_type="pubsub") >= 1
    missed = await add(writer, job, 1)  # its notice went nowhere
    later = await add(writer, job, 2)
    got = [(await sub.next(5)).id for _ in range(2)]
    assert got == [missed, later]
    relay.unsubscribe(sub)
    await relay.close()


async def test_a_thousand_viewers_of_one_job_share_each_read_and_get_every_event_once_in_order(clients) -> None:
    writer, reader = clients
    relay = Relay(reader, sweep=0)
    job = new_job()
    viewers = [relay.subscribe(job) for _ in range(1000)]
    await asyncio.sleep(0.3)
    before = relay.keys_read
    ids = [await add(writer, job, n) for n in range(20)]
    for viewer in viewers:
        assert [(await viewer.next(5)).id for _ in range(20)] == ids
        assert viewer.queue.empty()
    assert relay.keys_read - before <= 20  # one stream per read, whoever watches it
    for viewer in viewers:
        relay.unsubscribe(viewer)
    await relay.close()


async def test_a_subscriber_that_falls_behind_is_dropped_and_others_keep_going(clients) -> None:
    writer, reader = clients
    relay = Relay(reader, buffer=16)
    job = new_job()
    slow, fast = relay.subscribe(job), relay.subscribe(job)
    received = []

    async def drain() -> None:
        while len(received) < 40:
            delivery = await fast.next(5)
            assert delivery is not None
            received.append(delivery.id)

    reading = asyncio.create_task(drain())
    ids = [await add(writer, job, n) for n in range(40)]
    await asyncio.wait_for(reading, 10)
    assert received == ids
    assert slow.dropped and slow.queue.full()
    assert slow not in relay.subs.get(keyspace.job_stream(job), set())
    relay.unsubscribe(fast)
    await relay.close()


async def test_a_subscriber_arriving_while_a_read_is_in_flight_gets_every_event_in_order(clients) -> None:
    writer, reader = clients
    other = aioredis.Redis(port=writer.get_connection_kwargs()["port"])
    relay = Relay(reader)
    try:
        for _ in range(20):
            job = new_job()
            first = relay.subscribe(job)
            ids = [await add(writer, job, n) for n in range(3)]
            assert [(await first.next(5)).id for _ in range(3)] == ids
            late = relay.subscribe(job)  # from the start, while that read is in flight
            ids.append(await add(other, job, 3))
            ids.append(await add(other, job, 4, "done"))
            got = []
            while len(got) < 5:
                delivery = await late.next(5)
                assert delivery is not None, f"missed events: got {got} of {ids}"
                got.append(delivery.id)
            assert got == ids
            assert [(await first.next(5)).id for _ in range(2)] == ids[3:]
            assert first.queue.empty() and late.queue.empty()
            relay.unsubscribe(first)
            relay.unsubscribe(late)
    finally:
        await relay.close()
        await other.aclose()


async def test_a_draining_process_hands_every_stream_over_after_what_it_already_has(clients) -> None:
    """On SIGTERM (api/drain.py) each subscriber gets the events queued for it, then HANDOVER; so does one that
    subscribes afterwards, at once, and the relay holds no stream any more."""
    writer, reader = clients
    relay = Relay(reader)
    job = new_job()
    sub = relay.subscribe(job)
    first = await add(writer, job, 0)
    while sub.queue.empty():
        await asyncio.sleep(0.01)
    relay.hand_over()
    assert [(await sub.next(2)).id, await sub.next(2)] == [first, HANDOVER]
    late = relay.subscribe(job)
    assert await late.next(2) is HANDOVER
    assert sub.dropped and late.dropped and relay.streams_open == 0
    await relay.close()


async def test_readiness_turns_false_when_the_drain_begins(redis_server: RedisServer) -> None:
    drain = Drain()
    redis, reader = aioredis.Redis.from_url(redis_server.url), aioredis.Redis.from_url(redis_server.url)
    app = create_app(Settings.from_env(base_env(redis_server.url)), redis=redis, reader=reader, drain=drain)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            assert (await client.get("/api/v1/monitoring/ready")).status_code == 200
            drain.begin()
            resp = await client.get("/api/v1/monitoring/ready")
            assert resp.status_code == 503 and resp.json() == {"status": "draining"}
            assert resp.headers["Retry-After"] == "2"
            assert (await client.get("/api/v1/monitoring/live")).status_code == 200  # alive, just not taking work
    finally:
        await redis.aclose()
        await reader.aclose()
