"""The load of the SSE benches (bench/streams.py, bench/capacity.py): the publisher, the clients that hold the
streams, and probes of the server under them.

The publisher writes token events as the workers' JobPublisher does (XADD, then a notice on the channel named
like the stream, which is how a relay learns which streams to read), in rounds spread evenly, each event stamped
with `ts` as it is sent.

`LoadClient` spawns PROCS processes (multiprocessing) and deals the streams out among them in turn. Each opens
its share on one event loop as `SSECounter` protocols (bench/rawhttp.py: one callback per socket read, no task
or StreamReader per event) and answers the parent over a pipe: `stats` (events received, its CPU seconds),
`report` (every stream's seqs and lags), `close`, `quit`. A pipe, not a temp file, because the parent asks at each
phase's end and waits for the answer.

Why the client is not the bottleneck: an event costs it one parse of a `data:` line in a callback (a few
microseconds), and the streams are shared by PROCS event loops, so no loop queues one stream's events behind
another's. The bench prints the busiest client process's CPU beside the servers'. Measured on the 2-core machine
at 2,000 streams and 10,000 events/s: one client process used 17-20% of a core and four used 6-7% each, with the
same lags within run-to-run noise (bare p99 14-35 ms at 5,000 events/s, 24-51 ms at 10,000; ours likewise), so
splitting further changes nothing; eight processes only crowded the two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import socket
import threading
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import hiredis
import redis
import uvloop

from api.relay_reads import bulk_strings, command
from bench.rawhttp import Connection, SSECounter
from events import job_record
from events.envelope import Event
from events.store import keyspace

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))  # per phase
ROUND_EVERY_S = 2.0  # bench/capacity.py's rounds (bench/streams.py's take streams / rate)
TICK_S = 0.01  # one pipelined write of a round's events this often
PROCS = int(os.environ.get("BENCH_CLIENT_PROCS", "4"))
OPEN_AT_ONCE = 250  # streams a process opens concurrently
ANSWER_S = 30.0  # how long a client process may take to answer a command


def make_jobs(client: redis.Redis, owner: str, count: int, first: int = 1) -> list[str]:
    """Running jobs with empty streams, written straight into Redis."""
    ids = [f"j_{i:032x}" for i in range(first, first + count)]
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        record = job_record.job_record(
            job_id=job_id, owner=owner, agent="query", model="offline", query="bench", max_tokens=16, now=time.time()
        )
        record["status"] = "running"
        pipe.hset(keyspace.job(job_id), mapping=dict[Any, Any](record))
    pipe.execute()
    return ids


Token = tuple[bytes, bytes]  # an XADD up to its seq and ts fields, and the notice after it


def tokens(ids: list[str]) -> list[Token]:
    """A token event for each job of `ids`, for `write` to number, stamp and send."""
    return [_commands(job_id) for job_id in ids]


@functools.cache
def _commands(job_id: str) -> tuple[bytes, bytes]:
    """The XADD of a token to the job's stream, as Redis's wire protocol up to its `seq` and `ts` fields (which
    `write` appends), and the notice that follows it (PUBLISH on the stream's channel)."""
    key = keyspace.job_stream(job_id).encode()
    fields = Event("token", job_id, 0, 0.0, 1, {"text": "x"}).to_fields()
    del fields["seq"], fields["ts"]
    args = [b"XADD", key, b"*", *(part.encode() for pair in fields.items() for part in pair)]
    return b"*%d\r\n" % (len(args) + 4) + bulk_strings(args), command([b"PUBLISH", key, b""])


class Wire:
    """A plain socket to the bench's Redis for the publisher. The events are packed here rather than through a
    redis-py pipeline, which cost the publisher about 80 µs an event: 40% of a core at 5,000 events/s, taken
    from the two cores the servers measured here share with it."""

    def __init__(self, client: redis.Redis) -> None:
        options = client.connection_pool.connection_kwargs
        self.sock = socket.create_connection((options.get("host", "127.0.0.1"), options.get("port", 6379)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        if options.get("db"):
            self.call(command([b"SELECT", b"%d" % options["db"]]), 1)

    def call(self, packed: bytes, replies: int) -> None:
        """Send `packed` and read its `replies`; raises on an error reply."""
        self.sock.sendall(packed)
        while replies:
            reply = self.reader.gets()
            if reply is False:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("Redis closed the publisher's connection.")
                self.reader.feed(chunk)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"Redis refused a published event: {reply}")
            replies -= 1

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def write(wire: Wire, events: list[Token], seq: int) -> None:
    """Number `events` `seq`, stamp them with the time now and write them in one round trip as JobPublisher does
    (events/publisher.py): each entry, then its stream's notice. They are built beforehand, so `ts` is the moment
    they are sent."""
    fields = bulk_strings([b"seq", b"%d" % seq, b"ts", b"%.6f" % time.time()])
    wire.call(b"".join(xadd + fields + notice for xadd, notice in events), 2 * len(events))


def publish_rounds(
    client: redis.Redis,
    ids: list[str],
    rounds: int,
    stop: threading.Event | None = None,
    *,
    every_s: float = ROUND_EVERY_S,
    first_seq: int = 0,
) -> float:
    """Give every stream one event (seq first_seq, first_seq + 1, ...) per round, each round spread evenly over
    `every_s` in pipelined writes TICK_S apart, until `stop`; returns the events/s achieved."""
    stop = stop or threading.Event()
    size = -(-len(ids) // max(1, round(every_s / TICK_S)))
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]
    tick = every_s / len(batches)
    sent, start = 0, time.monotonic()
    next_at = start
    wire = Wire(client)
    try:
        for seq in range(first_seq, first_seq + rounds):
            for batch in batches:
                events = tokens(batch)
                next_at += tick
                if stop.wait(max(0.0, next_at - time.monotonic())):
                    return sent / (time.monotonic() - start)
                write(wire, events, seq)
                sent += len(batch)
    finally:
        wire.close()
    return sent / (time.monotonic() - start)


async def hold_streams(
    port: int, key: str, ids: list[str], received: dict[str, int], lags: list[float], opened: threading.Event
) -> None:
    """Follow each job of `ids` on its own connection to `port`, counting its events in `received` and their lags
    in `lags`; set `opened` once all are open, and hold them through ROUNDS rounds ROUND_EVERY_S apart. The
    one-process client of bench/capacity.py, which reads through nginx."""
    headers = {"Authorization": f"Bearer {key}"}

    async def follow(job_id: str) -> Connection:
        conn = await Connection("127.0.0.1", port).open()
        assert await conn.open_stream(f"/api/v1/jobs/{job_id}/events", headers) == 200
        return conn

    conns: list[Connection] = []
    for start in range(0, len(ids), 250):
        conns += await asyncio.gather(*(follow(j) for j in ids[start : start + 250]))

    async def count(job_id: str, conn: Connection) -> None:
        assert conn.reader is not None
        while True:
            row = await conn.reader.readline()
            if not row:
                return
            if row.startswith(b"data:"):
                lags.append(time.time() - json.loads(row[5:])["ts"])
                received[job_id] += 1

    readers = [asyncio.create_task(count(j, c)) for j, c in zip(ids, conns, strict=True)]
    opened.set()
    hold_for = ROUNDS * ROUND_EVERY_S + 3
    await asyncio.sleep(hold_for)
    for task in readers:
        task.cancel()
    for conn in conns:
        conn.close()


@dataclass(frozen=True)
class StreamTally:
    """What one stream received: each event's seq and lag in seconds, in arrival order."""

    seqs: array[int]
    lags: array[float]
    lost: bool  # the connection ended before the client closed it


def streams_fed(tallies: list[StreamTally], seqs: range) -> int:
    """How many streams received every event of `seqs`."""
    want = set(seqs)
    return sum(1 for t in tallies if want <= set(t.seqs))


def lags_of(tallies: list[StreamTally], seqs: range) -> list[float]:
    """The lags of every event of `seqs`, in seconds."""
    return [lag for t in tallies for seq, lag in zip(t.seqs, t.lags, strict=True) if seq in seqs]


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """CPU seconds a process used so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sockets(pid: int) -> int:
    """How many sockets a process holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            count += os.readlink(fd).startswith("socket:")
    return count


def worker_pid(master: int) -> int:
    """The single uvicorn worker under a gunicorn master."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, f"expected one API worker under gunicorn {master}, found {children}"
    return int(children[0])


def xread_stats(client: Any) -> tuple[int, float]:
    """XREAD commands Redis has run, and the seconds they took there in all."""
    stats = client.info("commandstats").get("cmdstat_xread", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0)) / 1e6


def wait_closed(pid: int, idle_sockets: int, settle_s: float) -> None:
    """Wait until the server process is back to about its idle sockets (30 s at most), then `settle_s` more."""
    deadline = time.monotonic() + 30
    while sockets(pid) > idle_sockets + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(settle_s)


class LoadClient:
    """Streams of `paths` on 127.0.0.1:`port`, held by `procs` client processes until `stop`."""

    def __init__(self, port: int, paths: list[str], headers: dict[str, str], procs: int = PROCS) -> None:
        ctx = multiprocessing.get_context("spawn")  # the bench holds threads and sockets a fork would copy
        self.count = len(paths)
        self.pipes: list[Pipe] = []
        self.procs: list[Any] = []
        procs = max(1, min(procs, len(paths)))
        for n in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, port, paths[n::procs], headers), name=f"sse-client-{n}")
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def __enter__(self) -> LoadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def opened(self, timeout: float = 120.0) -> tuple[int, str]:
        """How many streams answered 200, once every process has tried all of its own; and the first failure."""
        answers = [self._answer(n, timeout) for n in range(len(self.pipes))]
        errors = [error for _, error in answers if error]
        return sum(ok for ok, _ in answers), errors[0] if errors else ""

    def stats(self) -> tuple[int, list[float]]:
        """Events received so far by all processes, and each process's CPU seconds."""
        answers = self._ask("stats")
        return sum(received for received, _ in answers), [cpu for _, cpu in answers]

    def wait_received(self, expected: int, timeout: float) -> int:
        """Poll until `expected` events arrived in all, or `timeout` seconds passed; the count either way."""
        deadline = time.monotonic() + timeout
        received, _ = self.stats()
        while received < expected and time.monotonic() < deadline:
            time.sleep(0.1)
            received, _ = self.stats()
        return received

    def report(self) -> list[StreamTally]:
        """Every stream's tally, in the order of `paths`."""
        tallies: list[StreamTally | None] = [None] * self.count
        for n, share in enumerate(self._ask("report")):
            tallies[n :: len(self.pipes)] = share
        return [t for t in tallies if t is not None]

    def close(self) -> None:
        """Close every stream (the processes stay, for `stats`)."""
        self._ask("close")

    def stop(self) -> None:
        """End the processes (these only: this object started them)."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # it is gone already
                pipe.send("quit")
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)

    def _ask(self, command: str) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(command)
        return [self._answer(n, ANSWER_S, command) for n in range(len(self.pipes))]

    def _answer(self, n: int, timeout: float, command: str = "open") -> Any:
        try:
            if not self.pipes[n].poll(timeout):
                raise TimeoutError(f"Client process {n} did not answer {command!r} within {timeout:.0f}s.")
            return self.pipes[n].recv()
        except (EOFError, OSError) as ex:
            code = self.procs[n].exitcode
            raise RuntimeError(f"Client process {n} exited (code {code}) at {command!r}: see its traceback.") from ex


def _serve(pipe: Pipe, port: int, paths: list[str], headers: dict[str, str]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_hold(pipe, port, paths, headers))


async def _hold(pipe: Pipe, port: int, paths: list[str], headers: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    streams = [SSECounter(SSECounter.get("127.0.0.1", port, path, headers)) for path in paths]
    errors: list[str] = []

    async def open_one(stream: SSECounter) -> None:
        try:
            await loop.create_connection(lambda: stream, "127.0.0.1", port)
            async with asyncio.timeout(30):
                status = await stream.head
            if status != 200:
                errors.append(f"HTTP {status} opening a stream")
                stream.close()
        except (OSError, TimeoutError) as ex:
            errors.append(f"{type(ex).__name__} opening a stream: {ex}")

    for start in range(0, len(streams), OPEN_AT_ONCE):
        await asyncio.gather(*(open_one(s) for s in streams[start : start + OPEN_AT_ONCE]))
    pipe.send((sum(s.status == 200 for s in streams), errors[0] if errors else ""))

    async def answer(command: str) -> Any:
        if command == "stats":
            return sum(len(s.seqs) for s in streams), time.process_time()
        if command == "report":
            return [StreamTally(array("q", s.seqs), array("d", s.lags), s.lost and s.status == 200) for s in streams]
        for stream in streams:  # close
            stream.close()
        return "closed"

    def serve_commands() -> None:  # a thread: the pipe blocks, and a big answer must not stall the loop
        while True:
            try:
                command = pipe.recv()
            except EOFError:  # the bench is gone
                return
            if command == "quit":
                return
            pipe.send(asyncio.run_coroutine_threadsafe(answer(command), loop).result())

    await asyncio.to_thread(serve_commands)
