"""The seed's streaming routes: submit and stream in one response, a demo page, and the relay's health."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import falcon
from falcon.asgi import SSEvent

from api.audit import AuditLog
from api.auth import principal_of
from api.disconnects import on_disconnect
from api.http_errors import not_found
from api.job_service import JobService
from api.permissions import PUBLIC, Permission
from api.relay import Relay, Subscription
from api.resources.job_events import Frame, data_first_frame, sse_events
from api.resources.jobs import public_job, submit_job
from events.catalog import AGENT_TYPES
from settings import Settings

DEMO_PAGE = Path(__file__).resolve().parent.parent / "static" / "demo.html"


class StreamSubmitResource:
    """POST /api/v1/stream/{agent}: submit a job and stream its events in the same response.

    The path names the agent; `/stream/query` is also the seed's general route, where a body's `agent_type` picks
    the agent (the other routes' bodies have no `agent_type`).

    The first event (`job`) carries the job id and its stream URL, so a client that loses the connection
    resumes on /api/v1/jobs/{id}/events with the id of the last event it saw. Events are framed data first, so
    the seed's own fetch-reading JavaScript client works unchanged (see `data_first_frame`).
    """

    permissions = {"POST": Permission.JOBS_SUBMIT}
    accepts_stream_token = False

    def __init__(self, service: JobService, relay: Relay, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.relay = relay
        self.settings = settings
        self.audit = audit

    async def on_post_query(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Submit to the agent the body names (`query` when it names none) and stream: the seed's route."""
        await self._submit(req, resp, req.context.body.agent_type or "query")

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, agent: str) -> None:
        """Submit to `agent` and stream."""
        if agent not in AGENT_TYPES:
            raise not_found(
                f"There is no agent {agent!r}; use one of: {', '.join(sorted(AGENT_TYPES))}.", code="unknown_agent"
            )
        await self._submit(req, resp, agent)

    async def _submit(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, agent: str) -> None:
        job, created = await submit_job(req, self.service, self.audit, agent=agent)
        view = public_job(job, self.settings, principal_of(req))
        if not created:  # a retried request: the same job, streamed from its first event
            resp.set_header("Idempotent-Replayed", "true")
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.set_header("Location", f"/api/v1/jobs/{job['id']}")
        sub = self.relay.subscribe(job["id"])
        on_disconnect(req, lambda: self.relay.end(sub))
        resp.sse = self._with_job(view, sub)

    async def _with_job(self, view: dict[str, Any], sub: Subscription) -> AsyncIterator[SSEvent]:
        job = {"type": "job", "job_id": view["id"], "status": view["status"], "stream_url": view["stream_url"]}
        yield Frame(b"data: %s\n\n" % json.dumps(job, separators=(",", ":")).encode())
        async for event in sse_events(self.relay, sub, data_first_frame):
            yield event


class DemoResource:
    """GET /api/v1/stream/demo: a page that submits a job and follows it with EventSource."""

    permissions = {"GET": PUBLIC}

    def __init__(self, page: Path = DEMO_PAGE) -> None:
        self.page = page.read_bytes()  # read once, when the app is built

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Serve the page."""
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self.page
        resp.set_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
        )


class StreamHealthResource:
    """GET /api/v1/stream/health: whether this process's relay runs, and how many streams it holds."""

    permissions = {"GET": PUBLIC}

    def __init__(self, relay: Relay, settings: Settings) -> None:
        self.relay = relay
        self.settings = settings

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Report the relay's state."""
        resp.media = {
            "status": "ok",
            "streams_open": self.relay.streams_open,
            "jobs_watched": len(self.relay.subs),
            "heap_frozen_at_streams": self.relay.heap.frozen_at,
            "heartbeat_s": self.settings.sse_heartbeat_s,
            "agents": sorted(AGENT_TYPES),
        }
