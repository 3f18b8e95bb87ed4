"""Request metrics and who is active: `MetricsMiddleware` counts every request by method, route template and
status (first in the chain); `ActivityTracker` remembers which users made requests, for `active_sessions`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import falcon.asgi
import redis

from events.store import keyspace
from events.telemetry.metrics import ACTIVE_REQUESTS, HTTP_DURATION, HTTP_REQUESTS

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts requests (`http_requests_total`), times them and keeps `active_requests`; first in the chain."""

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Note the start and count the request as active."""
        req.context.started = time.perf_counter()
        ACTIVE_REQUESTS.inc()

    async def process_response(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, resource: Any, req_succeeded: bool
    ) -> None:
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
            await self.client.zadd(keyspace.ACTIVE_USERS, batch)
        except redis.RedisError:
            for user, ts in batch.items():
                self.pending.setdefault(user, ts)
