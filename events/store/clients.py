"""Redis clients, made one way for every process.

After a Redis restart every pooled connection is dead; without a retry each would fail one request before
being replaced. So a command that meets a broken connection reconnects and is sent again, twice at most, with
a short backoff. Only connection errors are retried, never timeouts (a slow server must not get the same work
again); the scripts that move money are idempotent, so a retried one never counts twice.

The API's asyncio client waits a bounded time for a free connection instead of failing when a burst takes them
all; past the wait the request gets 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
from collections import deque
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
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=HEALTH_CHECK_S,
        retry_on_error=[redis.ConnectionError],
        retry=Retry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,)),
        **options,
    )


class WaitingConnectionPool(aioredis.ConnectionPool):
    """redis-py's asyncio pool, except that a request finding every connection busy waits (up to `timeout`
    seconds, first come first served) for one to be released, instead of failing at once.

    redis-py's BlockingConnectionPool does the same but takes a lock and a condition on every checkout, which
    cost about 15% of a pipelined round trip here; this one pays only when the pool is exhausted.
    """

    def __init__(self, *, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connection, waiting for a free one while all `max_connections` are in use."""
        deadline: float | None = None
        while True:
            try:
                return await super().get_connection(*args, **kwargs)
            except redis.MaxConnectionsError:
                if self._available_connections:
                    continue  # one came back between the attempt and here
                loop = asyncio.get_running_loop()
                deadline = deadline or loop.time() + self.timeout
                waiter = loop.create_future()
                self._waiters.append(waiter)
                try:
                    async with asyncio.timeout_at(deadline):
                        await waiter
                except TimeoutError:
                    raise redis.ConnectionError("No connection available.") from None
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    async def release(self, connection: Any) -> None:
        """Return a connection and hand it to the longest-waiting request, if any."""
        await super().release(connection)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def async_client(
    url: str,
    *,
    socket_timeout: float,
    max_connections: int,
    pool_timeout: float,
    connect_timeout: float = 1,
    **options: Any,
) -> aioredis.Redis:
    """An asyncio client whose pool queues a burst for up to `pool_timeout` seconds rather than failing it."""
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=HEALTH_CHECK_S,
        retry_on_error=[redis.ConnectionError],
        retry=AsyncRetry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,)),
        **options,
    )
    return aioredis.Redis.from_pool(pool)


def pool_exhausted(error: BaseException) -> bool:
    """True when `error` is the pool's 'no free connection within the wait', not Redis being away."""
    return isinstance(error, redis.ConnectionError) and "No connection available" in str(error)
