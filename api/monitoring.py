"""The API's side of monitoring: request metrics, who is active, and the system's state read from Redis.

`MetricsMiddleware` counts every request by method, route template and status. `SystemState` reads, in one
pipelined round trip, what no single process knows: queue depth, job counts, consumer lag, dead letters,
holds, alerts, workers seen and active users. Every API instance reports the same figures, so dashboards
take the `max` of them across instances, never the `sum`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterable, Mapping

import falcon.asgi
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from events import keys
from events.audit import GROUP as AUDIT_GROUP
from events.envelope import text, text_map
from events.ledger import GROUP as LEDGER_GROUP
from events.lifecycle import GROUP as LIFECYCLE_GROUP
from events.metrics import ACTIVE_REQUESTS, HTTP_DURATION, HTTP_REQUESTS

ACTIVE_WINDOW_S = 300  # a user counts as active for five minutes after an authenticated request
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
GROUPS = {LIFECYCLE_GROUP: keys.LIFECYCLE_STREAM, LEDGER_GROUP: keys.USAGE_STREAM, AUDIT_GROUP: keys.AUDIT_STREAM}


class MetricsMiddleware:
    """Counts requests (`http_requests_total`), times them and keeps `active_requests`; first in the chain."""

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Note the start and count the request as active."""
        req.context.started = time.perf_counter()
        ACTIVE_REQUESTS.inc()

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any,
                               req_succeeded: bool) -> None:
        """Count the answer by route template (unmatched paths share one label) and status."""
        started = getattr(req.context, "started", None)
        if started is None:
            return
        ACTIVE_REQUESTS.dec()
        route = req.uri_template or "unmatched"  # raw paths would make a series per job id
        method = req.method if req.method in METHODS else "other"
        HTTP_REQUESTS.labels(method, route, str(resp.status_code)).inc()
        HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)


class ActivityTracker:
    """Remembers which users made requests and writes them to Redis within a second, in one write per second."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.time, every_s: float = 1.0) -> None:
        self.client = client
        self.clock = clock
        self.every_s = every_s
        self.pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def seen(self, user_id: str) -> None:
        """Record an authenticated request by `user_id` (no round trip on the request's path)."""
        self.pending[user_id] = self.clock()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.every_s)
        await self.flush()

    async def flush(self) -> None:
        """Write what was seen; on a Redis error keep it for the next flush."""
        batch, self.pending = self.pending, {}
        if not batch:
            return
        try:
            await self.client.zadd(keys.ACTIVE_USERS, batch)
        except redis.RedisError:
            for user, ts in batch.items():
                self.pending.setdefault(user, ts)


def _decode_group(raw: Mapping[Any, Any]) -> dict[str, Any]:
    group = {text(k): v for k, v in raw.items()}
    return {"lag": group.get("lag"), "pending": int(group.get("pending") or 0)}


async def system_state(client: Any, queue: str, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Everything the system gauges show, read from Redis in one pipelined round trip."""
    now = clock()
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.hlen("unacked")  # kombu's messages delivered to a worker and not yet acknowledged
    pipe.hgetall(keys.JOB_COUNTS)
    pipe.zcard(keys.RUNNING_JOBS)
    for stream in GROUPS.values():
        pipe.xinfo_groups(stream)
    for group, stream in GROUPS.items():
        pipe.xinfo_consumers(stream, group)
    for group in GROUPS:
        pipe.xlen(keys.dead_letters(group))
    pipe.zcard(keys.HOLDS_INDEX)
    pipe.xinfo_stream(keys.ALERTS_STREAM)
    pipe.zcount(keys.WORKERS_SEEN, now - keys.WORKER_GONE_S, "+inf")
    pipe.zremrangebyscore(keys.ACTIVE_USERS, "-inf", now - ACTIVE_WINDOW_S)
    pipe.zcard(keys.ACTIVE_USERS)
    pipe.hgetall(keys.ledger_total("all"))
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
        consumers[group] = ({**_decode_group(found[group]), "stream": stream} if group in found
                            else {"lag": None, "pending": 0, "stream": stream, "missing": True})
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
        yield _gauge("active_sessions", "Users with an authenticated request in the last 5 minutes.",
                     s["active_sessions"])
        depth = GaugeMetricFamily("agentic_queue_depth", "Celery messages waiting in a queue.", labels=["queue"])
        depth.add_metric([s["queue"]["name"]], s["queue"]["depth"])
        yield depth
        yield _gauge("agentic_queue_unacked", "Messages delivered to workers and not yet acknowledged.",
                     s["queue"]["unacked"])
        jobs = CounterMetricFamily("agentic_jobs", "Job transitions counted by the lifecycle consumer.",
                                   labels=["status"])
        for status, count in sorted(s["jobs"]["counts"].items()):
            jobs.add_metric([status], count)
        yield jobs
        yield _gauge("agentic_jobs_running", "Jobs a worker is running now.", s["jobs"]["running"])
        lag = GaugeMetricFamily("agentic_consumer_lag", "Entries a consumer group has not read yet.",
                                labels=["group"])
        pending = GaugeMetricFamily("agentic_consumer_pending", "Entries read but not yet acknowledged.",
                                    labels=["group"])
        dead = GaugeMetricFamily("agentic_dead_letters", "Entries a consumer group gave up on.", labels=["group"])
        members = GaugeMetricFamily("agentic_consumers", "Consumers a group has (live or not).", labels=["group"])
        idle = GaugeMetricFamily("agentic_consumer_idle_seconds", "Time since the group's most recently active "
                                 "consumer read or acknowledged.", labels=["group"])
        for group, info in sorted(s["consumers"].items()):
            if info["lag"] is not None:
                lag.add_metric([group], info["lag"])
            pending.add_metric([group], info["pending"])
            dead.add_metric([group], info["dead_letters"])
            members.add_metric([group], info["consumers"])
            if info["idle_ms"] is not None:
                idle.add_metric([group], info["idle_ms"] / 1000)
        yield from (lag, pending, dead, members, idle)
        yield _gauge("agentic_budget_holds", "Budget holds outstanding (jobs queued or running).",
                     s["budget"]["holds_outstanding"])
        alerts = CounterMetricFamily("agentic_budget_alerts", "Soft budget alerts raised (a budget crossed its "
                                     "alert percentage).")
        alerts.add_metric([], s["budget"]["alerts_total"])
        yield alerts
        yield _gauge("agentic_workers_up", "Celery workers with a heartbeat in the last 15 seconds.",
                     s["workers_up"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
