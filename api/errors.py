"""Domain errors mapped to HTTP once. Every error body is {"title", "description", "code"}."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import redis
from kombu.exceptions import OperationalError

from events.clients import pool_exhausted
from events.money import micros_to_usd

log = logging.getLogger("api.errors")

RETRY_AFTER_S = 2


def bad_request(description: str, code: str = "invalid_request") -> falcon.HTTPError:
    """A 400 that says what to fix."""
    return falcon.HTTPBadRequest(title="Bad Request", description=description, code=code)


def not_found(description: str = "There is no such resource.", code: str = "not_found") -> falcon.HTTPError:
    """A 404; also what another user's job looks like."""
    return falcon.HTTPNotFound(title="Not Found", description=description, code=code)


class PaymentRequired(falcon.HTTPError):
    """402 whose body also carries the figures a client needs to decide what to do."""

    def __init__(self, description: str, figures: dict[str, Any]) -> None:
        # Falcon types `code` as int, but it is any JSON value; ours are strings everywhere.
        super().__init__(falcon.HTTP_402, title="Payment Required", description=description,
                         code="budget_exceeded")  # type: ignore[arg-type]
        self.figures = figures

    def to_dict(self, obj_type: Any = dict) -> Any:
        """The standard error fields plus the figures."""
        body = super().to_dict(obj_type)
        body.update(self.figures)
        return body


def budget_exceeded(ex: Any) -> falcon.HTTPError:
    """The 402 for a BudgetExceededError: remaining budget and the hold that was asked for."""
    return PaymentRequired(str(ex), {
        "scope": ex.scope, "period": ex.period, "limit_usd": micros_to_usd(ex.limit),
        "remaining_usd": micros_to_usd(max(ex.remaining, 0)), "hold_usd": micros_to_usd(ex.hold)})


async def unavailable(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]) -> None:
    """Redis or the broker is down: 503 with Retry-After; the API keeps running and recovers by itself.

    A burst that finds every pooled connection busy for the whole bounded wait is shed the same way, by design,
    with its own code so that clients and dashboards can tell load from an outage.
    """
    if pool_exhausted(ex):
        log.warning("shed %s %s: no Redis connection free within the wait", req.method, req.path)
        raise falcon.HTTPServiceUnavailable(title="Service Unavailable", code="overloaded", retry_after=RETRY_AFTER_S,
                                            description="The API is busy right now; retry shortly.")
    log.warning("dependency unavailable on %s %s: %s", req.method, req.path, type(ex).__name__)
    raise falcon.HTTPServiceUnavailable(
        title="Service Unavailable",
        description="The data store is unreachable right now; retry shortly.",
        code="store_unavailable",
        retry_after=RETRY_AFTER_S,
    )


async def internal(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]) -> None:
    """Anything unexpected: logged with its traceback, answered without one."""
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(
        title="Internal Server Error", description="Something went wrong on our side; it has been logged.",
        code="internal_error",
    )


def install(app: falcon.asgi.App) -> None:
    """Register the handlers, most general first (Falcon picks the most specific match)."""
    app.add_error_handler(Exception, internal)
    for error in (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OperationalError):
        app.add_error_handler(error, unavailable)
