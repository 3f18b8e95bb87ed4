"""Health, liveness and readiness: open to anyone, no secrets in them."""

from __future__ import annotations

import time
from typing import Any

import falcon
import redis

from api.drain import Drain
from api.permissions import PUBLIC
from settings import Settings

VERSION = "0.1.0"


async def redis_check(client: Any) -> dict[str, Any]:
    """Ping Redis: status and latency in milliseconds."""
    started = time.perf_counter()
    try:
        await client.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as ex:
        return {"status": "down", "error": type(ex).__name__}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


def unavailable(resp: falcon.asgi.Response, body: dict[str, Any]) -> None:
    """Answer 503 with Retry-After and `body`: a balancer skips this instance, a client retries shortly."""
    resp.status = falcon.HTTP_503
    resp.set_header("Retry-After", "2")
    resp.media = body


class HealthResource:
    """GET /api/v1/health: overall status and Redis; 503 while Redis is unreachable."""

    permissions = {"GET": PUBLIC}

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report health."""
        check = await redis_check(self.client)
        ok = check["status"] == "ok"
        body = {
            "status": "ok" if ok else "degraded",
            "version": VERSION,
            "provider": self.settings.provider_mode,
            "redis": check,
        }
        if ok:
            resp.media = body
        else:
            unavailable(resp, body)


class LiveResource:
    """GET /api/v1/monitoring/live: the process answers (no dependency checked)."""

    permissions = {"GET": PUBLIC}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Always 200 while the event loop runs."""
        resp.media = {"status": "alive"}


class ReadyResource:
    """GET /api/v1/monitoring/ready: 200 when Redis answers, else 503 so the balancer skips this instance; 503 too
    once the process is stopping (draining)."""

    permissions = {"GET": PUBLIC}

    def __init__(self, client: Any, drain: Drain) -> None:
        self.client = client
        self.drain = drain

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report readiness."""
        if self.drain.draining:
            unavailable(resp, {"status": "draining"})
            return
        check = await redis_check(self.client)
        if check["status"] == "ok":
            resp.media = {"status": "ready", "redis": check}
        else:
            unavailable(resp, {"status": "not ready", "redis": check})
