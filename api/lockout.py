"""Failed authentication, limited per client address and counted rather than logged one by one.

Every failed authentication (no key, an unknown, revoked or expired key, a bad stream token) adds one to its
address's count in the current window (AUTH_FAILURE_WINDOW_S). The first failure of a window is audited in
full; the rest are only counted, and the events process writes one `auth.failures` record per address with
the count once the window is over, so a flood of guesses costs a few audit records, not one each. Past
AUTH_FAILURES_PER_WINDOW failures the address gets 429 with Retry-After for the rest of the window, whatever
key it sends: a guesser cannot tell a right key from a wrong one until the window ends.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import falcon

from events.envelope import Event
from events.store import keyspace, user_scripts
from events.store.scripts import AsyncScripts
from events.telemetry.metrics import RATE_LIMITED

MIN_TTL_S = 3600  # a window's counts outlive it long enough for the events process to summarise them


class Lockout:
    """Counts failed authentications per address; `client` is a redis.asyncio client."""

    def __init__(self, client: Any, *, limit: int, window_s: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.scripts = AsyncScripts(client)

    def counts(self, ip: str) -> tuple[str, str]:
        """(hash key, field) of the address's count in the current window, to read with the key check."""
        return keyspace.auth_failures(int(self.clock() // self.window_s)), ip

    def locked(self, failures: int) -> bool:
        """True when an address with `failures` failures this window must wait for the next one."""
        return failures >= self.limit

    async def note(self, ip: str, event: Event) -> int:
        """Count one failure from `ip` (auditing `event` if it is the window's first); returns the count."""
        return await self.scripts.run(
            user_scripts.note_auth_failure(
                ip=ip,
                window=int(self.clock() // self.window_s),
                ttl_s=max(MIN_TTL_S, 10 * self.window_s),
                now=event.ts,
                audit=event.data,
                audit_max_len=keyspace.AUDIT_STREAM_MAXLEN,
            )
        )

    def refusal(self) -> falcon.HTTPError:
        """The 429 for an address past its limit, with the seconds left in the window."""
        RATE_LIMITED.inc()
        wait = max(1, int(self.window_s - self.clock() % self.window_s + 0.999))
        return falcon.HTTPTooManyRequests(
            title="Too Many Requests",
            code="too_many_auth_failures",
            retry_after=wait,
            description=f"Too many failed authentications from this address; retry in {wait} s.",
        )
