"""Writing audit records: every auth failure, denial, user/role/key change, job submit/cancel, budget change.

Records go to `stream:audit` as "audit" events; the audit consumer (`python -m events`) chains them into the
tamper-evident log. Callers pass ids and key prefixes, never a secret.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from events.envelope import Event
from events.store import keyspace


class AuditLog:
    """Appends audit records; `client` is a redis.asyncio client (or pipeline)."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.clock = clock

    def event(
        self,
        actor: str,
        action: str,
        *,
        resource: str = "",
        result: str = "success",
        ip: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        """The audit event for one action."""
        data = {
            "actor": actor,
            "action": action,
            "resource": resource,
            "result": result,
            "ip": ip,
            "details": dict(details or {}),
        }
        return Event("audit", "", 0, self.clock(), 0, data)

    async def record(
        self,
        actor: str,
        action: str,
        *,
        resource: str = "",
        result: str = "success",
        ip: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one record."""
        event = self.event(actor, action, resource=resource, result=result, ip=ip, details=details)
        await self.client.xadd(
            keyspace.AUDIT_STREAM, event.to_fields(), maxlen=keyspace.AUDIT_STREAM_MAXLEN, approximate=True
        )
