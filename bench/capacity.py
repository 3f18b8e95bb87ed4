"""Capacity of the scaled set-up on this machine, per number of API instances (behind nginx) and worker processes:
jobs/s end to end, streams held with every stream fed, tokens/s relayed to them, and what one job and one relayed
token cost Redis (commands and CPU), from which the ceiling of one Redis follows. docs/SCALING_GUIDE.md's table
is this benchmark's output (`python -m bench capacity`).

Everything (client, nginx, API instances, workers, Redis) shares this machine's cores, so the figures are what the
whole system does here, not what one tier would do on its own hardware.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.common import LOGDIR, fresh_stack, line, percentile, user_key
from bench.rawhttp import Connection
from bench.streams import ROUND_EVERY_S, ROUNDS, _owner, hold_streams, make_jobs, publish_rounds
from events.store import keyspace
from tests.balancer import Nginx
from tests.stack import free_port

CONFIGS = ((1, 2), (2, 4), (4, 4))  # (API instances, worker processes)
JOBS = int(os.environ.get("BENCH_CAPACITY_JOBS", "300"))
STREAMS_PER_INSTANCE = int(os.environ.get("BENCH_CAPACITY_STREAMS", "500"))
CONNECTIONS = 32


@dataclass
class RedisCost:
    """Redis's own counters: commands executed (those inside scripts included), scripts run, CPU seconds."""

    commands: int
    scripts: int
    cpu_s: float

    @classmethod
    def read(cls, client: redis.Redis) -> RedisCost:
        """The counters now."""
        stats = client.info("commandstats")
        cpu = client.info("cpu")
        commands = sum(int(v["calls"]) for v in stats.values())
        scripts = sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
        return cls(commands, scripts, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))

    def __sub__(self, other: RedisCost) -> RedisCost:
        return RedisCost(self.commands - other.commands, self.scripts - other.scripts, self.cpu_s - other.cpu_s)

    def scaled(self, factor: float) -> RedisCost:
        """These counters times `factor` (a rate times a duration)."""
        return RedisCost(round(self.commands * factor), round(self.scripts * factor), self.cpu_s * factor)


def idle_rate(client: redis.Redis, seconds: float = 3.0) -> RedisCost:
    """What the idle system costs Redis per second (heartbeats, blocked reads, consumers), to take off a measurement."""
    before, started = RedisCost.read(client), time.perf_counter()
    time.sleep(seconds)
    return (RedisCost.read(client) - before).scaled(1 / (time.perf_counter() - started))


def measured(client: redis.Redis, before: RedisCost, started: float, idle: RedisCost) -> RedisCost:
    """Redis's cost since `before` (at `started`), less what the idle system would have cost meanwhile."""
    return RedisCost.read(client) - before - idle.scaled(time.perf_counter() - started)


async def _submit(port: int, key: str, total: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    conns = [await Connection("127.0.0.1", port).open() for _ in range(CONNECTIONS)]
    ids: list[str] = []
    remaining = total

    async def drive(conn: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            body = {"agent_type": "query", "query": "What is 6*7?", "cache": False}  # every job runs, none shared
            status, _, data = await conn.request(
                "POST", "/api/v1/jobs", {**headers, "Idempotency-Key": uuid.uuid4().hex}, body
            )
            assert status == 202, data[:200]
            ids.append(json.loads(data)["id"])

    await asyncio.gather(*(drive(c) for c in conns))
    for conn in conns:
        conn.close()
    return ids


def _wait_done(client: redis.Redis, ids: list[str], timeout: float = 600) -> None:
    # Polls every 0.25 s: a few hundred HGETs each time, small beside what the jobs cost.
    deadline = time.monotonic() + timeout
    left = list(ids)
    while left and time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for job_id in left:
            pipe.hget(keyspace.job(job_id), "status")
        left = [j for j, s in zip(left, pipe.execute(), strict=True) if s not in (b"succeeded", b"failed")]
        time.sleep(0.25)
    assert not left, f"{len(left)} jobs not finished"


def _jobs_per_second(port: int, key: str, client: redis.Redis) -> tuple[float, RedisCost]:
    _wait_done(client, asyncio.run(_submit(port, key, 20)))  # warm every instance and worker
    idle = idle_rate(client)
    before, started = RedisCost.read(client), time.perf_counter()
    ids = asyncio.run(_submit(port, key, JOBS))
    _wait_done(client, ids)
    elapsed = time.perf_counter() - started
    return JOBS / elapsed, measured(client, before, started, idle)


def _relay(port: int, key: str, client: redis.Redis, owner: str, streams: int) -> tuple[int, float, float, RedisCost]:
    """`streams` streams through nginx, each fed one token per round (ROUNDS rounds, ROUND_EVERY_S apart)."""
    ids = make_jobs(client, owner, streams)
    counts = {job_id: 0 for job_id in ids}
    lags: list[float] = []
    stop = threading.Event()
    opened = threading.Event()
    costs: list[RedisCost] = []

    def publish() -> None:
        opened.wait()
        idle = idle_rate(client, 1.0)  # streams open, nothing sent
        before, started = RedisCost.read(client), time.perf_counter()
        publish_rounds(client, ids, ROUNDS, stop)
        time.sleep(0.5)
        costs.append(measured(client, before, started, idle))

    publisher = threading.Thread(target=publish)
    publisher.start()
    asyncio.run(hold_streams(port, key, ids, counts, lags, opened))
    stop.set()
    publisher.join()
    fed = sum(1 for n in counts.values() if n >= ROUNDS)
    delivered = sum(counts.values())
    return fed, delivered / (ROUNDS * ROUND_EVERY_S), percentile(lags, 99) if lags else float("nan"), costs[0]


def _measure(instances: int, workers: int) -> dict[str, float]:
    env = {"TRUSTED_PROXIES": "127.0.0.1", "OFFLINE_TOKEN_DELAY_MS": "0", "SSE_HEARTBEAT_S": "30"}
    with fresh_stack(**env) as (stack, server):
        stack.events()
        stack.worker(concurrency=workers)
        ports = [free_port() for _ in range(instances)]
        for port in ports:
            stack.api(workers=1, port=port)
        nginx = Nginx(Path(LOGDIR) / f"nginx-{instances}-{workers}-{time.time_ns()}", ports).start()
        try:
            key = user_key(stack)
            client = redis.Redis.from_url(server.url)
            rate, job_cost = _jobs_per_second(nginx.port, key, client)
            streams = STREAMS_PER_INSTANCE * instances
            fed, tokens, lag, token_cost = _relay(nginx.port, key, client, _owner(stack, key), streams)
            client.close()
        finally:
            nginx.stop()
    relayed = tokens * ROUNDS * ROUND_EVERY_S
    return {
        "jobs_s": rate,
        "streams": streams,
        "fed": fed,
        "tokens_s": tokens,
        "lag_p99_ms": lag * 1000,
        "commands_per_job": job_cost.commands / JOBS,
        "scripts_per_job": job_cost.scripts / JOBS,
        "cpu_ms_per_job": job_cost.cpu_s * 1000 / JOBS,
        "cpu_ms_per_1k_tokens": token_cost.cpu_s * 1e6 / relayed if relayed else float("nan"),
        "commands_per_1k_tokens": token_cost.commands * 1000 / relayed if relayed else float("nan"),
    }


def run() -> None:
    """Measure each configuration and print; the first one is the others' baseline."""
    results = []
    for instances, workers in CONFIGS:
        result = _measure(instances, workers)
        results.append(result)
        base = results[0]
        name = f"{instances} API + {workers} worker procs"
        line(
            f"capacity {name}: jobs/s",
            f"{result['jobs_s']:,.0f}/s",
            f"{base['jobs_s']:,.0f}/s (1 API + 2)",
            f"{result['jobs_s'] / base['jobs_s']:.2f}x",
        )
        line(
            f"capacity {name}: streams fed / tokens/s",
            f"{result['fed']:,.0f}/{result['streams']:,.0f} {result['tokens_s']:,.0f}/s",
            f"{result['streams'] / ROUND_EVERY_S:,.0f}/s offered",
            f"p99 lag {result['lag_p99_ms']:,.0f} ms",
        )
    cost = results[-1]
    line(
        "Redis per job: commands (scripts) / CPU",
        f"{cost['commands_per_job']:.0f} ({cost['scripts_per_job']:.0f}) / {cost['cpu_ms_per_job']:.2f} ms",
        f"at {cost['jobs_s']:,.0f} jobs/s",
        f"ceiling ~{1000 / cost['cpu_ms_per_job']:,.0f} jobs/s",
    )
    line(
        "Redis per 1,000 relayed tokens: cmds / CPU",
        f"{cost['commands_per_1k_tokens']:.0f} / {cost['cpu_ms_per_1k_tokens']:.1f} ms",
        f"at {cost['tokens_s']:,.0f} tokens/s",
        f"ceiling ~{1e6 / cost['cpu_ms_per_1k_tokens']:,.0f} tokens/s",
    )
