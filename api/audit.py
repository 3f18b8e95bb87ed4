"""Writing audit records: every auth failure, denial, user/role/key change, job submit/cancel, budget change.

Records go to `stream:audit` as "audit" events; the audit consumer (`python -m events`) chains them into the
tamper-evident log. Callers pass ids and key prefixes, never a secret.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from api.address import client_ip
from events.envelope import Event
from events.process.audit_chain import audit_event
from events.store import keyspace


class AuditLog:
    """Appends audit records; `client` is a redis.asyncio client (or pipeline)."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.clock = clock

    def event(self, actor: str, action: str, **fields: Any) -> Event:
        """The audit event for one action (the fields of `audit_event`), stamped with this log's clock."""
        return audit_event(actor, action, ts=self.clock(), **fields)

    async def record(self, actor: str, action: str, **fields: Any) -> None:
        """Append one record: `resource`, `result`, `ip` and `details` as `audit_event` takes them."""
        event = self.event(actor, action, **fields)
        await self.client.xadd(
            keyspace.AUDIT_STREAM, event.to_fields(), maxlen=keyspace.AUDIT_STREAM_MAXLEN, approximate=True
        )

    async def access_denied(self, req: Any, resource: str) -> None:
        """Audit a request for something that is not the caller's (answered 404, so it reveals nothing)."""
        await self.record(
            req.context.principal.user_id,
            "access.denied",
            resource=resource,
            result="denied",
            ip=client_ip(req),
            details={"path": req.path, "method": req.method},
        )
