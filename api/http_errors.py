"""Errors mapped to HTTP once: every domain error by its status and code, Redis outages as 503, anything else as
a logged 500. Every error body is {"title", "description", "code"} (a 402 adds its budget figures)."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import redis
from kombu.exceptions import OperationalError

from events.errors import DomainError
from events.store.clients import pool_exhausted

log = logging.getLogger("api.http_errors")

RETRY_AFTER_S = 2


class NotFoundError(DomainError):
    """Raised when a resource does not exist, or (to reveal nothing) belongs to another user."""

    status = 404
    code = "not_found"


class ForbiddenError(DomainError):
    """Raised when the caller may not do this (their role, or their agent allow list)."""

    status = 403
    code = "forbidden"


class ConflictError(DomainError):
    """Raised when the resource's state does not allow the request (a finished job cannot be cancelled)."""

    status = 409
    code = "conflict"


def bad_request(description: str, code: str = "invalid_request") -> DomainError:
    """A 400 that says what to fix."""
    return DomainError(description, code=code)


def not_found(description: str = "There is no such resource.", code: str = "not_found") -> DomainError:
    """A 404; also what another user's job looks like."""
    return NotFoundError(description, code=code)


class Answer(falcon.HTTPError):
    """An error answer whose body may carry more than title, description and code (a 402's figures)."""

    def __init__(
        self, status: str, title: str, description: str, code: str, figures: dict[str, Any], headers: dict[str, str]
    ) -> None:
        # Falcon types `code` as int, but it is any JSON value; ours are strings everywhere.
        super().__init__(
            status,
            title=title,
            description=description,
            code=code,  # type: ignore[arg-type]
            headers=headers or None,
        )
        self.figures = figures

    def to_dict(self, obj_type: Any = dict) -> Any:
        """The standard error fields plus the figures."""
        body = super().to_dict(obj_type)
        body.update(self.figures)
        return body


async def domain(req: falcon.Request, resp: falcon.Response, ex: DomainError, params: dict[str, Any]) -> None:
    """Every domain error, answered with its own status, code and figures."""
    raise Answer(falcon.code_to_http_status(ex.status), ex.title, str(ex), ex.code, ex.figures, ex.headers)


async def unavailable(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]) -> None:
    """Redis or the broker is down: 503 with Retry-After; the API keeps running and recovers by itself.

    A burst that finds every pooled connection busy for the whole bounded wait is shed the same way, by design,
    with its own code so that clients and dashboards can tell load from an outage.
    """
    if pool_exhausted(ex):
        log.warning("shed %s %s: no Redis connection free within the wait", req.method, req.path)
        raise falcon.HTTPServiceUnavailable(
            title="Service Unavailable",
            code="overloaded",
            retry_after=RETRY_AFTER_S,
            description="The API is busy right now; retry shortly.",
        )
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
        title="Internal Server Error",
        description="Something went wrong on our side; it has been logged.",
        code="internal_error",
    )


def install(app: falcon.asgi.App) -> None:
    """Register the handlers, most general first (Falcon picks the most specific match)."""
    app.add_error_handler(Exception, internal)
    app.add_error_handler(DomainError, domain)
    for error in (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OperationalError):
        app.add_error_handler(error, unavailable)
