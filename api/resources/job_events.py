"""GET /api/v1/jobs/{id}/events: the job's events as Server-Sent Events, resumable by Last-Event-ID."""

from __future__ import annotations

from typing import AsyncIterator

import falcon
from falcon.asgi import SSEvent

from api.audit import AuditLog
from api.job_service import JobService, check_event_id
from api.permissions import Permission
from api.relay import HANDOVER, Relay, Subscription, parse_id
from api.resources.jobs import visible_job
from events import job_record
from events.telemetry.metrics import SSE_STREAMS
from settings import Settings

RETRY_MS = 2000


class EventsResource:
    """Streams a job's events: replay from the start or after Last-Event-ID, then live, until the end."""

    permissions = {"GET": Permission.JOBS_READ}
    accepts_stream_token = True  # browsers' EventSource cannot send an Authorization header

    def __init__(self, service: JobService, relay: Relay, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.relay = relay
        self.settings = settings
        self.audit = audit

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str) -> None:
        """Open the stream; 204 once a finished job's stream has expired or was read to its end."""
        raw = req.get_header("Last-Event-ID") or req.get_param("last_event_id")
        after = check_event_id(raw) if raw else "0-0"
        job = await visible_job(req, self.service, self.audit, job_id)
        terminal = job["status"] in job_record.TERMINAL_STATUSES
        if terminal or after != "0-0":
            newest = await self.service.last_event_id(job_id)
            if terminal and (newest is None or parse_id(newest) <= parse_id(after)):
                resp.status = falcon.HTTP_204  # nothing more will come: browsers stop reconnecting
                return
            if newest is None or parse_id(after) > parse_id(newest):
                after = newest or "0-0"  # a cursor past the end: go on from the end, so the stream still ends
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.sse = sse_events(self.relay, self.relay.subscribe(job_id, after), self.settings.sse_heartbeat_s)


async def sse_events(relay: Relay, sub: Subscription, heartbeat_s: float) -> AsyncIterator[SSEvent]:
    """A subscription as SSE: events until the terminal one, comment heartbeats while idle."""
    SSE_STREAMS.inc()
    try:
        yield SSEvent(retry=RETRY_MS, comment="stream open")
        while True:
            delivery = await sub.next(heartbeat_s)
            if delivery is None:
                if sub.dropped:
                    return  # too slow: the client resumes from its last id
                yield SSEvent(comment="heartbeat")
                continue
            if delivery is HANDOVER:
                yield SSEvent(comment="handover: this server is stopping; reconnect with Last-Event-ID")
                return
            yield SSEvent(data=delivery.payload, event=delivery.type, event_id=delivery.id)
            if delivery.terminal:
                return
            if sub.dropped and sub.queue.empty():
                return
    finally:
        SSE_STREAMS.dec()
        relay.unsubscribe(sub)
