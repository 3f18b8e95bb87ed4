"""/api/v1/monitoring: Prometheus metrics, a JSON summary, dependency health, custom metrics and system info."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import socket
import time
from importlib.metadata import version
from typing import Any

import falcon
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.address import client_ip
from api.audit import AuditLog
from api.auth import principal_of
from api.http_errors import ConflictError
from api.models import MetricRecord
from api.permissions import PUBLIC, Permission
from api.resources.health import VERSION, redis_check, unavailable
from api.system_state import SystemCollector, system_state
from events.store import keyspace, metric_scripts
from events.store.metric_scripts import Registered
from events.store.scripts import AsyncScripts
from events.telemetry import metrics, multiprocess
from settings import Settings, mask_password

LAG_DEGRADED = 10_000  # consumer lag above this marks the consumers degraded


class _Monitoring:
    """What the monitoring resources share: the Redis client and the settings."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings


class MetricsResource(_Monitoring):
    """GET /monitoring/metrics: the Prometheus text exposition of this instance and the system state."""

    permissions = {"GET": Permission.METRICS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Render every family; the per-process files are read off the event loop."""
        state = await system_state(self.client, self.settings.queue)
        resp.data = await asyncio.to_thread(metrics.render, SystemCollector(state))
        resp.content_type = metrics.CONTENT_TYPE


class SummaryResource(_Monitoring):
    """GET /monitoring/summary: the figures that matter, as JSON."""

    permissions = {"GET": Permission.METRICS_READ}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """This instance's request figures (all its worker processes) and the system's state."""
        state = await system_state(self.client, self.settings.queue)
        exposition = await asyncio.to_thread(metrics.render)
        resp.media = {"instance": summarize(exposition.decode()), "system": state}


def summarize(exposition: str) -> dict[str, Any]:
    """Requests, errors, latency and security counts out of a Prometheus exposition."""
    totals: dict[str, float] = {}
    by_status: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "http_requests_total":
                code = labels.get("status", "")
                by_status[code[:1] + "xx"] = by_status.get(code[:1] + "xx", 0) + value
            elif name == "http_request_duration_seconds_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0) + value
            elif name in ("auth_attempts_total", "permission_checks_total"):
                key = f"{name[:-6]}:{labels['result']}"
                totals[key] = totals.get(key, 0) + value
            elif name in (
                "http_request_duration_seconds_sum",
                "active_requests",
                "agentic_sse_streams_open",
                "agentic_rate_limited_total",
            ):
                totals[name] = totals.get(name, 0) + value
    count = sum(by_status.values())
    return {
        "requests": int(count),
        "requests_by_status": {k: int(v) for k, v in sorted(by_status.items())},
        "error_rate": round(by_status.get("5xx", 0) / count, 6) if count else 0.0,
        "latency_avg_s": round(totals.get("http_request_duration_seconds_sum", 0) / count, 6) if count else None,
        "latency_p50_s": quantile(buckets, 0.5),
        "latency_p95_s": quantile(buckets, 0.95),
        "active_requests": int(totals.get("active_requests", 0)),
        "sse_streams_open": int(totals.get("agentic_sse_streams_open", 0)),
        "auth": {
            "success": int(totals.get("auth_attempts:success", 0)),
            "failure": int(totals.get("auth_attempts:failure", 0)),
        },
        "permission_checks": {
            "allowed": int(totals.get("permission_checks:allowed", 0)),
            "denied": int(totals.get("permission_checks:denied", 0)),
        },
        "rate_limited": int(totals.get("agentic_rate_limited_total", 0)),
    }


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The bucket bound at or above the `q` quantile of a cumulative histogram (an upper estimate)."""
    if not buckets or not buckets.get(math.inf):
        return None
    target = q * buckets[math.inf]
    for le in sorted(buckets):
        if buckets[le] >= target:
            return None if math.isinf(le) else le
    return None


class MonitoringHealthResource(_Monitoring):
    """GET /monitoring/health: each dependency with its status and latency; 503 while Redis is down."""

    permissions = {"GET": PUBLIC}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Check Redis, the broker queue, the workers and the consumer groups."""
        store = await redis_check(self.client)
        started = time.perf_counter()
        try:
            if store["status"] != "ok":
                raise redis.ConnectionError(store.get("error", "down"))
            state = await system_state(self.client, self.settings.queue)
        except (redis.ConnectionError, redis.TimeoutError) as ex:
            unavailable(
                resp,
                {
                    "status": "down",
                    "version": VERSION,
                    "checks": {"redis": {"status": "down", "error": store.get("error", type(ex).__name__)}},
                },
            )
            return
        latency = round((time.perf_counter() - started) * 1000, 3)
        checks = {
            "redis": store,
            "broker": {
                "status": "ok",
                "latency_ms": latency,
                "queue": state["queue"]["name"],
                "depth": state["queue"]["depth"],
                "unacked": state["queue"]["unacked"],
            },
            "workers": {
                "status": "ok" if state["workers_up"] else "down",
                "latency_ms": latency,
                "seen": state["workers_up"],
                "window_s": keyspace.WORKER_GONE_S,
            },
            "consumers": {
                "status": consumer_status(state["consumers"], self.settings.consumer_stall_s),
                "latency_ms": latency,
                "stall_s": self.settings.consumer_stall_s,
                "groups": state["consumers"],
            },
        }
        degraded = any(c["status"] != "ok" for c in checks.values())
        resp.media = {"status": "degraded" if degraded else "ok", "version": VERSION, "checks": checks}


def consumer_status(groups: dict[str, Any], stall_s: float) -> str:
    """'ok', or 'degraded' when a group is missing, lags far behind, dead-lettered entries, or has work while
    none of its consumers has read for `stall_s` seconds (the events process is down or stuck)."""
    for info in groups.values():
        if info.get("missing") or (info["lag"] or 0) > LAG_DEGRADED or info["dead_letters"]:
            return "degraded"
        waiting = (info["lag"] or 0) > 0 or info["pending"] > 0
        if waiting and (info["idle_ms"] is None or info["idle_ms"] > stall_s * 1000):
            return "degraded"
    return "ok"


class RecordResource(_Monitoring):
    """POST /monitoring/record (admins): add to a custom counter, set a gauge or observe a histogram."""

    permissions = {"POST": Permission.METRICS_WRITE}

    def __init__(self, client: Any, settings: Settings, audit: AuditLog) -> None:
        super().__init__(client, settings)
        self.audit = audit
        self.scripts = AsyncScripts(client)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Body: {name, kind?: counter|gauge|histogram, value?: number, labels?: {name: value}}."""
        body: MetricRecord = req.context.body
        name, kind, value = body.name, body.kind, body.value
        family = metrics.check_name(name, kind)  # beyond its shape: names the system keeps for itself
        labels = metrics.check_labels(body.labels)
        if kind == "counter" and value < 0:
            raise metrics.MetricError("A counter only goes up; send a value of 0 or more.")
        names = sorted(labels)
        reply = await self.scripts.run(
            metric_scripts.register(
                family=family,
                kind=kind,
                label_names=names,
                label_values=[labels[k] for k in names],
                max_families=metrics.MAX_FAMILIES,
                max_series=metrics.MAX_SERIES,
            )
        )
        if reply.outcome is Registered.CONFLICT:
            raise ConflictError(
                f"Metric {family!r} is already defined as {reply.registered}; use the same kind and "
                "label names, or another name.",
                code="metric_conflict",
            )
        if reply.outcome is not Registered.OK:
            limit = (
                f"at most {metrics.MAX_FAMILIES} custom metrics"
                if reply.outcome is Registered.TOO_MANY_METRICS
                else f"at most {metrics.MAX_SERIES} label sets per metric"
            )
            raise metrics.MetricLimitError(f"There may be {limit}; this one would exceed it.", code=reply.outcome.value)
        record(kind, str(name), float(value), labels)  # this process has bounds of its own too (422 metric_limit)
        await self.audit.record(
            principal_of(req).user_id,
            "metrics.record",
            resource=family,
            ip=client_ip(req),
            details={"kind": kind, "labels": labels},
        )
        resp.status = falcon.HTTP_201
        resp.media = {"recorded": {"name": name, "family": family, "kind": kind, "value": value, "labels": labels}}


def record(kind: str, name: str, value: float, labels: dict[str, str]) -> None:
    """Apply one custom sample through the seed's helper."""
    if kind == "counter":
        metrics.metrics.increment_counter(name, labels, value)
    elif kind == "gauge":
        metrics.metrics.set_gauge(name, value, labels)
    else:
        metrics.metrics.observe(name, value, labels)


class InfoResource:
    """GET /monitoring/info: version, provider mode and the settings that matter, without secrets."""

    permissions = {"GET": Permission.METRICS_READ}

    def __init__(self, settings: Settings, instance: str) -> None:
        self.settings = settings
        self.instance = instance
        self.started = time.time()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Describe this instance."""
        s = self.settings
        resp.media = {
            "version": VERSION,
            "instance": self.instance,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "python": platform.python_version(),
            "packages": {p: version(p) for p in ("falcon", "celery", "redis", "prometheus-client", "openai")},
            "provider": {
                "mode": s.provider_mode,
                "base_url": mask_password(s.openai_base_url) or None,
                "default_model": s.default_model,
                "api_key_set": bool(s.openai_api_key),
            },
            "metrics": {
                "multiprocess": multiprocess.in_use() is not None,
                "worker_metrics_port": s.worker_metrics_port,
            },
            "tracing": {"enabled": bool(s.otlp_endpoint), "otlp_endpoint": mask_password(s.otlp_endpoint) or None},
            "settings": s.public(),
        }
