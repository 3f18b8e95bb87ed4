"""(c) SSE streams one API process holds and their event lag, beside a bare Falcon SSE endpoint in the same run.

On one fresh Redis, the same load on two servers: first the baseline, bench/bare_sse.py in one uvicorn process,
then ours, STREAMS authenticated job streams held by ONE API process (gunicorn, one uvicorn worker). A publisher
gives every stream one token event per round, each round spread evenly, ROUNDS rounds at 5,000 events/s in all,
then ROUNDS at 10,000, on the same open streams. Per rate: streams fed (each got every event of that rate) and
event lag (client receive time - the event's `ts`) p50 / p99. Then memory per stream (the server's RSS with the
streams open minus idle, over the streams), and our worker's RSS a few seconds after every stream closed; then
the same streams opened and closed once more, to show whether the memory the first ones left is used again. Last,
fan-out: FANOUT_VIEWERS clients of one job through our API, each of which must get every event once, in order,
and how many XREADs Redis ran meanwhile, beside the number of events (one read serves every viewer).

The publisher and the load client are in bench/sse_load.py; the client is split over processes (that module says
why it is not the bottleneck; the busiest client process's CPU is printed).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Callable

import httpx
import redis

from bench import bare_sse
from bench.common import LOGDIR, fresh_stack, line, percentile, user_key
from bench.rawhttp import Connection
from bench.sse_load import (
    PROCS,
    ROUND_EVERY_S,
    ROUNDS,
    LoadClient,
    cpu_s,
    hold_streams,
    lags_of,
    make_jobs,
    publish_rounds,
    rss_kb,
    sockets,
    streams_fed,
    wait_closed,
    worker_pid,
    xread_stats,
)
from events.store import keyspace
from tests.stack import Stack

STREAMS = int(os.environ.get("BENCH_STREAMS", "10000"))
RATES = (5000, 10000)  # events/s in all, one phase each
DRAIN_S = 20.0  # how long a phase's last events may take to arrive
SETTLE_S = 3.0  # after the last stream closed, before reading RSS
RELEASE_S = 60.0  # how long the server may take to let go of closed streams before the bench goes on
LAG_TARGET_MS, MEMORY_TARGET_KB = 50, 20
FANOUT_VIEWERS, FANOUT_EVENTS, FANOUT_RATE = 1000, 50, 10  # 10,000 deliveries/s, like the top rate
__all__ = ["ROUNDS", "ROUND_EVERY_S", "hold_streams", "make_jobs", "publish_rounds", "run"]  # bench/capacity.py's too


@dataclass(frozen=True)
class Figures:
    """What one server did under the load; per-rate lists follow RATES."""

    fed: list[int]
    lags: list[list[float]]  # seconds
    per_stream_kb: float
    idle_kb: int
    closed_kb: int
    client_cpu: float  # the busiest client process at the highest rate, % of a core
    server_cpu: float  # the server process at the highest rate, % of a core
    xreads: tuple[int, float]  # XREADs Redis ran while events were published, and their seconds there in all
    held: int = 0  # streams the server still held SETTLE_S after the last one closed
    released_s: float = 0.0  # when the last of them went, after the close (inf: not within RELEASE_S)


@dataclass(frozen=True)
class Server:
    """A server under load: its port, the process that serves the streams, and how to ask for each stream."""

    name: str
    port: int
    pid: int
    paths: list[str]  # one per job of the publisher's ids
    warm: str  # a stream of no job in `paths`, opened once before idle is read
    headers: dict[str, str]
    open_streams: Callable[[], int] | None = None  # how many streams the server says it holds


def measure(server: Server, client: redis.Redis, ids: list[str]) -> Figures:
    """The streams load on one server: open them all, publish at each rate, close them all."""
    pid = server.pid
    asyncio.run(_warm(server.port, server.warm, server.headers))
    idle_kb, idle_sockets = rss_kb(pid), sockets(pid)
    with LoadClient(server.port, server.paths, server.headers) as load:
        opened, error = load.opened()
        if opened < len(ids):
            failed = (
                f"{server.name}: {opened:,} of {len(ids):,} streams opened; first failure: {error} (logs: {LOGDIR})"
            )
            if not opened:
                raise RuntimeError(f"{failed}. Is the server up, and does it answer {server.paths[0]}?")
            print("  " + failed)
        cpu, xreads_before = (0.0, 0.0), xread_stats(client)
        for n, rate in enumerate(RATES):
            _, clients_before = load.stats()
            server_before, started = cpu_s(pid), time.monotonic()
            achieved = publish_rounds(client, ids, ROUNDS, every_s=len(ids) / rate, first_seq=n * ROUNDS)
            if achieved < 0.95 * rate:
                print(f"  {server.name}: the publisher reached {achieved:,.0f} of {rate:,} events/s; lags understated")
            load.wait_received(opened * (n + 1) * ROUNDS, DRAIN_S)
            _, clients_after = load.stats()
            wall = time.monotonic() - started
            busiest = max(b - a for a, b in zip(clients_before, clients_after, strict=True))
            cpu = (100 * busiest / wall, 100 * (cpu_s(pid) - server_before) / wall)
        xreads_after = xread_stats(client)
        xreads = (xreads_after[0] - xreads_before[0], xreads_after[1] - xreads_before[1])
        tallies = load.report()
        open_kb = rss_kb(pid)
        load.close()
        closed_at = time.monotonic()
        wait_closed(pid, idle_sockets, SETTLE_S)
        closed_kb = rss_kb(pid)
    held = still = server.open_streams() if server.open_streams else 0
    while still and time.monotonic() < closed_at + RELEASE_S:  # the next phase must not share the CPU with them
        time.sleep(0.5)
        still = server.open_streams() if server.open_streams else 0
    phases = [range(n * ROUNDS, (n + 1) * ROUNDS) for n in range(len(RATES))]
    per_stream = (open_kb - idle_kb) / max(1, opened)
    fed_lags = [streams_fed(tallies, p) for p in phases], [lags_of(tallies, p) for p in phases]
    released_s = time.monotonic() - closed_at if not still else float("inf")
    return Figures(*fed_lags, per_stream, idle_kb, closed_kb, *cpu, xreads, held, released_s)


def run() -> None:
    """Measure and print."""
    with fresh_stack(SSE_HEARTBEAT_S="30") as (stack, redis_server):
        pid = worker_pid(stack.api(workers=1).pid)
        key = user_key(stack)
        headers = {"Authorization": f"Bearer {key}"}
        client = redis.Redis.from_url(redis_server.url)
        owner = _owner(stack, key)
        ids = make_jobs(client, owner, STREAMS)
        warm = make_jobs(client, owner, 1, first=0)[0]
        paths = [f"/api/v1/jobs/{job_id}/events" for job_id in ids]
        bare_proc, bare_port = bare_sse.start(stack.env, LOGDIR)
        try:
            bare_ids = [f"b_{i:032x}" for i in range(1, STREAMS + 1)]
            bare_paths = [f"/s/{job_id}" for job_id in bare_ids]
            bare = measure(Server("bare", bare_port, bare_proc.pid, bare_paths, "/s/b_warm", {}), client, bare_ids)
        finally:
            bare_proc.kill()  # SIGKILL: on SIGTERM uvicorn waits for its streams, which never end by themselves

        def open_streams() -> int:
            return int(httpx.get(f"{stack.url}/api/v1/stream/health", timeout=5).json()["streams_open"])

        warm_path = f"/api/v1/jobs/{warm}/events"
        server = Server("ours", stack.port, pid, paths, warm_path, headers, open_streams)
        ours = measure(server, client, ids)
        _print(ours, bare)
        again(server, ours)
        fan_out(stack.port, headers, client, make_jobs(client, owner, 1, first=STREAMS + 1)[0])


def again(server: Server, first: Figures) -> None:
    """The same streams opened and closed again, no events: does the peak grow past the first round's, or is what
    the first round left in the process used again?"""
    idle_sockets = sockets(server.pid)
    with LoadClient(server.port, server.paths, server.headers) as load:
        opened, _ = load.opened()
        open_kb = rss_kb(server.pid)
        load.close()
        wait_closed(server.pid, idle_sockets, SETTLE_S)
    closed_kb = rss_kb(server.pid)
    first_open_kb = first.idle_kb + first.per_stream_kb * opened
    grew = open_kb - first_open_kb  # a leak would show here; RSS after close varies with what the allocator keeps
    verdict = "peak no higher: memory used again" if grew <= 0.05 * first_open_kb else f"peak {grew / 1024:+.0f} MB"
    line(
        f"(c) RSS, {opened:,} streams opened and closed again",
        f"{open_kb / 1024:.0f} MB open, {closed_kb / 1024:.0f} MB closed",
        f"first {first_open_kb / 1024:.0f} / {first.closed_kb / 1024:.0f} MB",
        verdict,
    )


def fan_out(port: int, headers: dict[str, str], client: redis.Redis, job_id: str) -> None:
    """FANOUT_VIEWERS clients follow one job while FANOUT_EVENTS events are written to it; print what they got."""
    with LoadClient(port, [f"/api/v1/jobs/{job_id}/events"] * FANOUT_VIEWERS, headers) as load:
        opened, error = load.opened()
        if opened < FANOUT_VIEWERS:
            print(f"  fan-out: {opened:,} of {FANOUT_VIEWERS:,} viewers connected; first failure: {error}")
        before, _ = xread_stats(client)
        publish_rounds(client, [job_id], FANOUT_EVENTS, every_s=1 / FANOUT_RATE)
        load.wait_received(opened * FANOUT_EVENTS, DRAIN_S)
        reads = xread_stats(client)[0] - before
        tallies = load.report()
    exact = sum(1 for t in tallies if list(t.seqs) == list(range(FANOUT_EVENTS)))
    verdict = "ok" if exact == FANOUT_VIEWERS else f"{FANOUT_VIEWERS - exact:,} missed, doubled or reordered events"
    line("(c) fan-out: every event once, in order", f"{exact:,}/{FANOUT_VIEWERS:,} viewers", "1 job", verdict)
    line(
        "(c) fan-out event lag p50 / p99",
        _p50_p99(lags_of(tallies, range(FANOUT_EVENTS))),
        f"{FANOUT_RATE} events/s",
        "",
    )
    verdict = "ok: reads follow events, not viewers" if reads <= 2 * FANOUT_EVENTS else "reads grow with viewers"
    deliveries = f"{FANOUT_EVENTS} events, {FANOUT_EVENTS * opened:,} sent"
    line("(c) fan-out XREAD calls in Redis", f"{reads:,}", deliveries, verdict)


def _print(ours: Figures, bare: Figures) -> None:
    for n, rate in enumerate(RATES):
        missed = STREAMS - ours.fed[n]
        verdict = f"{missed:,} streams missed events" if missed else "ok"
        line(f"(c) streams fed, {rate:,} events/s", f"{ours.fed[n]:,}/{STREAMS:,}", f"bare {bare.fed[n]:,}", verdict)
        p99, bare_p99 = (percentile(f.lags[n], 99) if f.lags[n] else float("nan") for f in (ours, bare))
        verdict = f"p99 x{p99 / bare_p99:.1f} bare"
        if rate == RATES[0]:
            verdict += f"; target p99 <= {LAG_TARGET_MS} ms: {'met' if p99 * 1000 <= LAG_TARGET_MS else 'missed'}"
        ours_lag, bare_lag = _p50_p99(ours.lags[n]), _p50_p99(bare.lags[n])
        line(f"(c) event lag p50 / p99, {rate:,} events/s", ours_lag, f"bare {bare_lag}", verdict)
    reads = [f"{calls:,}, {seconds * 1000 / max(1, calls):.2f} ms" for calls, seconds in (ours.xreads, bare.xreads)]
    line("(c) Redis XREADs while publishing, ms each", reads[0], f"bare {reads[1]}", "")
    ratio, met = ours.per_stream_kb / bare.per_stream_kb, ours.per_stream_kb <= MEMORY_TARGET_KB
    verdict = f"x{ratio:.2f} bare; target <= {MEMORY_TARGET_KB} KB: {'met' if met else 'missed'}"
    line("(c) memory per stream", f"{ours.per_stream_kb:.1f} KB", f"bare {bare.per_stream_kb:.1f} KB", verdict)
    growth = (ours.closed_kb / ours.idle_kb - 1) * 100
    verdict = f"target within 10% of idle: {'met' if growth <= 10 else 'missed'}"
    if ours.held:
        verdict += f"; {ours.held:,} streams still held at {SETTLE_S:.0f} s, the last gone at {ours.released_s:.0f} s"
        verdict = verdict.replace("the last gone at inf s", f"some still at {RELEASE_S:.0f} s")
    else:
        verdict += f"; the relay held no stream at {SETTLE_S:.0f} s"
    closed = f"{ours.closed_kb / 1024:.0f} MB, {growth:+.0f}%"
    line("(c) RSS after all streams close", closed, f"idle {ours.idle_kb / 1024:.0f} MB", verdict)
    servers = f"server ours {ours.server_cpu:.0f}% / bare {bare.server_cpu:.0f}%"
    name = f"(c) busiest of {PROCS} client processes, {RATES[-1]:,}/s"
    line(name, f"{ours.client_cpu:.0f}% CPU", f"bare run {bare.client_cpu:.0f}%", servers)


def _p50_p99(lags: list[float]) -> str:
    if not lags:
        return "no events"
    p50, p99 = (percentile(lags, q) * 1000 for q in (50, 99))
    return f"{p50:.1f} / {p99:.1f} ms" if p99 < 10 else f"{p50:.0f} / {p99:.0f} ms"


def _owner(stack: Stack, key: str) -> str:
    from api.credentials import key_hash
    from tests.stack import SECRET

    client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    return str(client.hget(keyspace.apikey(key_hash(SECRET, key)), "user_id") or "")


async def _warm(port: int, path: str, headers: dict[str, str]) -> None:
    """One stream opened and closed, so what the server loads on first use counts as idle."""
    conn = await Connection("127.0.0.1", port).open()
    await conn.open_stream(path, headers)
    conn.close()
    await asyncio.sleep(0.5)
