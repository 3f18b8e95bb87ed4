"""Redis clients, made one way for every process.

After a Redis restart every pooled connection is dead; without a retry each would fail one request before
being replaced. So a command that meets a broken connection reconnects and is sent again, twice at most, with
a short backoff. Only connection errors are retried, never timeouts (a slow server must not get the same work
again); the scripts that move money are idempotent, so a retried one never counts twice.

The API's asyncio client waits a bounded time for a free connection instead of failing when a burst takes them
all; past the wait the request gets 503 with Retry-After.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

RETRIES = 2
HEALTH_CHECK_S = 10


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.5, base=0.05)


def sync_client(url: str, *, socket_timeout: float, connect_timeout: float = 2, **options: Any) -> redis.Redis:
    """A client for threads and processes that block (workers, the events process, scripts)."""
    return redis.Redis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
        health_check_interval=HEALTH_CHECK_S, retry_on_error=[redis.ConnectionError],
        retry=Retry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,)), **options)


def async_client(url: str, *, socket_timeout: float, max_connections: int, pool_timeout: float,
                 connect_timeout: float = 1, **options: Any) -> aioredis.Redis:
    """An asyncio client whose pool queues a burst for up to `pool_timeout` seconds rather than failing it."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout, health_check_interval=HEALTH_CHECK_S,
        retry_on_error=[redis.ConnectionError],
        retry=AsyncRetry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,)), **options)
    return aioredis.Redis.from_pool(pool)


def pool_exhausted(error: BaseException) -> bool:
    """True when `error` is the pool's 'no free connection within the wait', not Redis being away."""
    return isinstance(error, redis.ConnectionError) and "No connection available" in str(error)
