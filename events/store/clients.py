"""Redis clients, made one way for every process.

After a Redis restart every pooled connection is dead; without a retry each would fail one request before
being replaced. So a command that meets a broken connection reconnects and is sent again, twice at most, with
a short backoff. Only connection errors are retried, never timeouts (a slow server must not get the same work
again); the scripts that move money are idempotent, so a retried one never counts twice.

The API's asyncio client waits a bounded time for a free connection instead of failing when a burst takes them
all; past the wait the request gets 503 with Retry-After.

Every client takes a `RedisConnection` (settings.redis): its URL carries the credentials and its TLS options
(CA, client certificate, verification) go to every connection. A plain URL string is accepted for tests and
scripts against an unsecured Redis.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationWrongNumberOfArgsError, NoPermissionError
from redis.retry import Retry

from settings import RedisConnection

RETRIES = 2
HEALTH_CHECK_S = 10


class RedisAccessError(Exception):
    """Raised when Redis answers but will not serve us: wrong credentials, missing permissions, untrusted TLS."""


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.5, base=0.05)


def _target(redis_at: RedisConnection | str) -> tuple[str, dict[str, Any]]:
    """The URL and the TLS keyword arguments of `redis_at`."""
    if isinstance(redis_at, str):
        return redis_at, {}
    return redis_at.url, redis_at.client_options()


def sync_client(
    redis_at: RedisConnection | str, *, socket_timeout: float, connect_timeout: float = 2, **options: Any
) -> redis.Redis:
    """A client for threads and processes that block (workers, the events process, scripts)."""
    url, tls = _target(redis_at)
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=HEALTH_CHECK_S,
        retry_on_error=[redis.ConnectionError],
        retry=Retry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,)),
        **tls,
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
    redis_at: RedisConnection | str,
    *,
    socket_timeout: float,
    max_connections: int,
    pool_timeout: float,
    connect_timeout: float = 1,
    **options: Any,
) -> aioredis.Redis:
    """An asyncio client whose pool queues a burst for up to `pool_timeout` seconds rather than failing it."""
    url, tls = _target(redis_at)
    pool = WaitingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=HEALTH_CHECK_S,
        retry_on_error=[redis.ConnectionError],
        retry=AsyncRetry(_backoff(), RETRIES, supported_errors=(redis.ConnectionError,)),
        **tls,
        **options,
    )
    return aioredis.Redis.from_pool(pool)


def pool_exhausted(error: BaseException) -> bool:
    """True when `error` is the pool's 'no free connection within the wait', not Redis being away."""
    return isinstance(error, redis.ConnectionError) and "No connection available" in str(error)


def access_problem(error: BaseException) -> str | None:
    """What to fix when `error` is one that waiting will not mend (credentials, permissions, TLS), as a sentence
    an operator can act on; None for an outage or anything else. Never quotes a secret: Redis's replies to AUTH
    do not, and TLS errors name certificates, not passwords."""
    if isinstance(error, redis.AuthenticationError):  # WRONGPASS, NOAUTH
        return (
            "Redis refused to let us in (a wrong or missing password or user, or a disabled user). "
            "Check REDIS_USERNAME and REDIS_PASSWORD_FILE (or the credentials in REDIS_URL)."
        )
    if isinstance(error, AuthenticationWrongNumberOfArgsError):
        return "This Redis has no ACL users: give it a password only (REDIS_PASSWORD_FILE), no REDIS_USERNAME."
    if isinstance(error, NoPermissionError):
        return f"The Redis user lacks a permission the system needs ({error}); see docs/security.md, Secured Redis."
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return None  # closed mid-handshake: a restart, perhaps; waited out like any outage
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"Redis's TLS certificate is not trusted ({cause.verify_message}). "
                "Point REDIS_TLS_CA_FILE at the CA that signed it, and name the host as the certificate does."
            )
        if isinstance(cause, ssl.SSLError):
            return (
                f"The TLS handshake with Redis failed ({cause.reason or cause}). Check that REDIS_URL is rediss:// "
                "for a TLS port (redis:// for a plain one) and, for mutual TLS, REDIS_TLS_CERT_FILE/KEY_FILE."
            )
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, redis.ConnectionError) and "certificate verify failed" in str(error):
        return "Redis's TLS certificate is not trusted; point REDIS_TLS_CA_FILE at the CA that signed it."
    return None


def check_access(client: redis.Redis) -> None:
    """PING once; raise RedisAccessError when Redis refuses us for a reason waiting will not mend. A Redis that
    does not answer yet passes: every process waits an outage out."""
    try:
        client.ping()
    except redis.RedisError as ex:
        problem = access_problem(ex)
        if problem:
            raise RedisAccessError(problem) from None
