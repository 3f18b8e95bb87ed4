"""The system's state read from Redis for monitoring: what no single process knows.

`system_state` reads, in one pipelined round trip, queue depth, job counts, consumer lag, dead letters, holds,
alerts, workers seen and active users. Every API instance reports the same figures, so dashboards take the
`max` of them across instances, never the `sum`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from events.envelope import text, text_map
from events.process.audit_chain import GROUP as AUDIT_GROUP
from events.process.ledger import GROUP as LEDGER_GROUP
from events.process.lifecycle import GROUP as LIFECYCLE_GROUP
from events.store import keyspace

ACTIVE_WINDOW_S = 300  # a user counts as active for five minutes after an authenticated request
GROUPS = {
    LIFECYCLE_GROUP: keyspace.LIFECYCLE_STREAM,
    LEDGER_GROUP: keyspace.USAGE_STREAM,
    AUDIT_GROUP: keyspace.AUDIT_STREAM,
}


def _decode_group(raw: Mapping[Any, Any]) -> dict[str, Any]:
    group = {text(k): v for k, v in raw.items()}
    return {"lag": group.get("lag"), "pending": int(group.get("pending") or 0)}


async def system_state(client: Any, queue: str, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Everything the system gauges show, read from Redis in one pipelined round trip."""
    now = clock()
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.hlen("unacked")  # kombu's messages delivered to a worker and not yet acknowledged
    pipe.hgetall(keyspace.JOB_COUNTS)
    pipe.zcard(keyspace.RUNNING_JOBS)
    for stream in GROUPS.values():
        pipe.xinfo_groups(stream)
    for group, stream in GROUPS.items():
        pipe.xinfo_consumers(stream, group)
    for group in GROUPS:
        pipe.xlen(keyspace.dead_letters(group))
    pipe.zcard(keyspace.HOLDS_INDEX)
    pipe.xinfo_stream(keyspace.ALERTS_STREAM)
    pipe.zcount(keyspace.WORKERS_SEEN, now - keyspace.WORKER_GONE_S, "+inf")
    pipe.zremrangebyscore(keyspace.ACTIVE_USERS, "-inf", now - ACTIVE_WINDOW_S)
    pipe.zcard(keyspace.ACTIVE_USERS)
    pipe.hgetall(keyspace.ledger_total("all"))
    replies = await pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
            raise reply
    r = iter(replies)
    depth, unacked, counts, running = next(r), next(r), next(r), next(r)
    consumers: dict[str, Any] = {}
    for group, stream in GROUPS.items():
        groups = next(r)
        found = {} if isinstance(groups, Exception) else {text(g["name"]): g for g in groups}
        consumers[group] = (
            {**_decode_group(found[group]), "stream": stream}
            if group in found
            else {"lag": None, "pending": 0, "stream": stream, "missing": True}
        )
    for group in GROUPS:
        members = next(r)
        idle = [] if isinstance(members, Exception) else [int(m["idle"]) for m in members]
        consumers[group].update(consumers=len(idle), idle_ms=min(idle) if idle else None)
    for group in GROUPS:
        consumers[group]["dead_letters"] = int(next(r))
    holds, alerts, workers = next(r), next(r), next(r)
    next(r)
    active, ledger = next(r), next(r)
    alerts_total = 0 if isinstance(alerts, Exception) else int(text_map(alerts).get("entries-added", 0))
    return {
        "queue": {"name": queue, "depth": int(depth), "unacked": int(unacked)},
        "jobs": {"counts": {k: int(v) for k, v in text_map(counts).items()}, "running": int(running)},
        "consumers": consumers,
        "budget": {"holds_outstanding": int(holds), "alerts_total": alerts_total},
        "workers_up": int(workers),
        "active_sessions": int(active),
        "usage": {k: int(v) for k, v in text_map(ledger).items()},
    }


class SystemCollector:
    """The system state as Prometheus families (same from every instance: aggregate with max)."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterable[Any]:
        """One family per system figure."""
        s = self.state
        yield _gauge(
            "active_sessions", "Users with an authenticated request in the last 5 minutes.", s["active_sessions"]
        )
        depth = GaugeMetricFamily("agentic_queue_depth", "Celery messages waiting in a queue.", labels=["queue"])
        depth.add_metric([s["queue"]["name"]], s["queue"]["depth"])
        yield depth
        yield _gauge(
            "agentic_queue_unacked", "Messages delivered to workers and not yet acknowledged.", s["queue"]["unacked"]
        )
        jobs = CounterMetricFamily(
            "agentic_jobs", "Job transitions counted by the lifecycle consumer.", labels=["status"]
        )
        for status, count in sorted(s["jobs"]["counts"].items()):
            jobs.add_metric([status], count)
        yield jobs
        yield _gauge("agentic_jobs_running", "Jobs a worker is running now.", s["jobs"]["running"])
        lag = GaugeMetricFamily("agentic_consumer_lag", "Entries a consumer group has not read yet.", labels=["group"])
        pending = GaugeMetricFamily(
            "agentic_consumer_pending", "Entries read but not yet acknowledged.", labels=["group"]
        )
        dead = GaugeMetricFamily("agentic_dead_letters", "Entries a consumer group gave up on.", labels=["group"])
        members = GaugeMetricFamily("agentic_consumers", "Consumers a group has (live or not).", labels=["group"])
        idle = GaugeMetricFamily(
            "agentic_consumer_idle_seconds",
            "Time since the group's most recently active consumer read or acknowledged.",
            labels=["group"],
        )
        for group, info in sorted(s["consumers"].items()):
            if info["lag"] is not None:
                lag.add_metric([group], info["lag"])
            pending.add_metric([group], info["pending"])
            dead.add_metric([group], info["dead_letters"])
            members.add_metric([group], info["consumers"])
            if info["idle_ms"] is not None:
                idle.add_metric([group], info["idle_ms"] / 1000)
        yield from (lag, pending, dead, members, idle)
        yield _gauge(
            "agentic_budget_holds",
            "Budget holds outstanding (jobs queued or running).",
            s["budget"]["holds_outstanding"],
        )
        alerts = CounterMetricFamily(
            "agentic_budget_alerts", "Soft budget alerts raised (a budget crossed its alert percentage)."
        )
        alerts.add_metric([], s["budget"]["alerts_total"])
        yield alerts
        yield _gauge("agentic_workers_up", "Celery workers with a heartbeat in the last 15 seconds.", s["workers_up"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
