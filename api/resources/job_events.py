"""GET /api/v1/jobs/{id}/events: the job's events as Server-Sent Events, resumable by Last-Event-ID."""

from __future__ import annotations

from typing import AsyncIterator, Callable

import falcon
from falcon.asgi import SSEvent
from falcon.media import BaseHandler

from api.audit import AuditLog
from api.disconnects import on_disconnect
from api.job_service import JobService, check_event_id
from api.permissions import Permission
from api.relay import GONE, HANDOVER, HEARTBEAT, Delivery, Relay, Subscription, parse_id
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
        raw = req.get_header("Last-Event-ID") or req.context.query.last_event_id
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
        sub = self.relay.subscribe(job_id, after)
        on_disconnect(req, lambda: self.relay.end(sub))
        resp.sse = sse_events(self.relay, sub)


class Frame(SSEvent):
    """One SSE block, already serialised: falcon writes whatever `serialize` returns."""

    __slots__ = ("block",)

    def __init__(self, block: bytes) -> None:
        self.block = block  # SSEvent's own __init__ is not called (six checks per event): falcon only serializes

    def serialize(self, handler: BaseHandler | None = None) -> bytes:
        """The block as it was built."""
        return self.block


def typed_frame(delivery: Delivery) -> bytes:
    """`event:`, `id:` and `data:` in one block: what EventSource's typed listeners and Last-Event-ID need."""
    return b"event: %s\nid: %s\ndata: %s\n\n" % (delivery.type.encode(), delivery.id.encode(), delivery.payload)


def data_first_frame(delivery: Delivery) -> bytes:
    """For clients that read the body with fetch, like the seed's: every block that starts with `data: ` is that
    and the JSON only (the seed parses the rest of the block as JSON), so the event's name travels as the JSON's
    `type` and its stream id as the JSON's `id`. The id also goes first in a block of its own, which sets a
    standard parser's last event id without dispatching an event (an `event:` line cannot: it would have to share
    the data's block)."""
    return b"id: %s\n\ndata: %s\n\n" % (delivery.id.encode(), delivery.payload)


async def sse_events(
    relay: Relay, sub: Subscription, frame: Callable[[Delivery], bytes] = typed_frame
) -> AsyncIterator[SSEvent]:
    """A subscription as SSE, each event framed by `frame`: events until the terminal one, comment heartbeats
    while idle (the relay's HEARTBEAT; comments start with `:`, which every client skips)."""
    SSE_STREAMS.inc()
    try:
        yield SSEvent(retry=RETRY_MS, comment="stream open")
        while True:
            delivery = await sub.get()
            if delivery is GONE:
                return
            if delivery is HANDOVER:
                yield SSEvent(comment="handover: this server is stopping; reconnect with Last-Event-ID")
                return
            yield SSEvent(comment="heartbeat") if delivery is HEARTBEAT else Frame(frame(delivery))
            if delivery.terminal or (sub.dropped and sub.queue.empty()):
                return  # the end; or dropped as too slow, and the client resumes from its last id
            del delivery  # not held while the stream waits for its next event
    finally:
        SSE_STREAMS.dec()
        relay.unsubscribe(sub)
