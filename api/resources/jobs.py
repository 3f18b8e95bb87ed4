"""Routes of /api/v1/jobs: submit, list, get (with long-poll), cancel."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import falcon

from api import credentials
from api.address import client_ip
from api.audit import AuditLog
from api.auth import principal_of
from api.http_errors import ConflictError, ForbiddenError, not_found
from api.job_service import (
    JobService,
    Submission,
    body_hash,
    parse_cursor,
)
from api.models import check_idempotency_key
from api.permissions import Permission, allowed
from api.resources.attachments import check_uploads
from api.users import Principal
from events import job_record
from events.store.job_scripts import Cancelled
from settings import Settings

log = logging.getLogger("api.job_service")


def public_job(job: dict[str, str], settings: Settings, principal: Principal) -> dict[str, Any]:
    """The job as clients see it, with its trace id and a stream URL whose token acts for the caller's key."""
    view = job_record.view(job)
    view["trace_id"] = job.get("trace_id") or None
    token = credentials.stream_token(
        settings.secret_key, job["id"], settings.stream_token_ttl_s, user_id=principal.user_id, key_id=principal.key_id
    )
    view["stream_url"] = f"/api/v1/jobs/{job['id']}/events?token={token}"
    return view


def listed_job(job: dict[str, str], settings: Settings, principal: Principal) -> dict[str, Any]:
    """A job as a list shows it: a record too damaged to show becomes a stub, never an error for the whole list."""
    try:
        return public_job(job, settings, principal)
    except Exception:  # one bad record must not hide the others
        log.warning("job %s cannot be shown", job.get("id"), exc_info=True)
        return {
            "id": job.get("id", ""),
            "status": job.get("status", "unknown"),
            "error": {"code": "unreadable_record", "message": "This job's record is damaged."},
        }


async def visible_job(req: falcon.asgi.Request, service: JobService, audit: AuditLog, job_id: str) -> dict[str, str]:
    """The job if this request may see it; 404 otherwise, so other users' ids reveal nothing.

    Asking for another user's job is audited as `access.denied`.
    """
    job = await service.load(job_id)
    principal = principal_of(req)
    if job is not None:
        if job.get("owner") == principal.user_id or allowed(principal.role, Permission.JOBS_READ_ALL):
            return job
        await audit.access_denied(req, job_id)
    raise not_found(f"There is no job {job_id!r} that you can see.", code="job_not_found")


async def submit_job(
    req: falcon.asgi.Request,
    service: JobService,
    audit: AuditLog,
    *,
    agent: str | None = None,
) -> tuple[dict[str, str], bool]:
    """The one submit path of POST /jobs and POST /stream/{agent}: check the caller's agent allow list and
    Idempotency-Key, hold and enqueue, audit (the body was checked against its model already). Returns (job,
    created)."""
    body = req.context.body
    idempotency_key = req.get_header("Idempotency-Key")
    submission = Submission(
        agent_type=agent or body.agent_type,
        query=body.query,
        model=body.model,
        max_tokens=body.max_tokens,
        session_id=body.session_id or "",
        metadata=body.metadata or {},
        attachments=body.attachments or [],
        cache=body.cache,
    )
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    principal = principal_of(req)
    if not principal.may_use(submission.agent_type):
        raise ForbiddenError(f"Your account may not use the {submission.agent_type!r} agent.", code="agent_not_allowed")

    def audited(job: Mapping[str, str]) -> Mapping[str, Any]:
        return audit.event(
            principal.user_id,
            "job.submit",
            resource=job["id"],
            ip=client_ip(req),
            details={"agent": job["agent"], "model": job["model"], "hold_micros": int(job.get("hold_micros") or 0)},
        ).data

    await check_uploads(req, service.client, audit, submission.attachments)  # 404 now, not a failed job later
    return await service.submit(
        principal.user_id,
        submission,
        idempotency_key=idempotency_key,
        # The agent counts as part of the request: a stream route names it in the path, not the body.
        digest=body_hash({**req.context.json, "agent_type": submission.agent_type}),
        traceparent=req.get_header("traceparent"),
        tracestate=req.get_header("tracestate"),
        audit=audited,
    )


class JobsResource:
    """POST submits a job; GET lists your jobs (an admin's, everyone's)."""

    permissions = {"POST": Permission.JOBS_SUBMIT, "GET": Permission.JOBS_READ}

    def __init__(self, service: JobService, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.settings = settings
        self.audit = audit

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Submit a job: 202 with its id, status and stream URL."""
        job, created = await submit_job(req, self.service, self.audit)
        resp.status = falcon.HTTP_202 if created else falcon.HTTP_200
        if not created:
            resp.set_header("Idempotent-Replayed", "true")
        resp.location = f"/api/v1/jobs/{job['id']}"
        resp.media = public_job(job, self.settings, principal_of(req))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List jobs, newest first: ?status=, ?limit= (1-100), ?cursor= from the previous page."""
        principal, query = principal_of(req), req.context.query
        cursor = parse_cursor(query.cursor) if query.cursor else None
        every = query.all and allowed(principal.role, Permission.JOBS_READ_ALL)
        found, after = await self.service.list(
            None if every else principal.user_id, status=query.status, limit=query.limit, cursor=cursor
        )
        resp.media = {"jobs": [listed_job(j, self.settings, principal) for j in found], "next_cursor": after}


class JobResource:
    """GET one job; ?wait=N long-polls up to N seconds (at most 60) for it to end."""

    permissions = {"GET": Permission.JOBS_READ}

    def __init__(self, service: JobService, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.settings = settings
        self.audit = audit

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str) -> None:
        """The job's status, result, error, usage and timestamps."""
        wait = req.context.query.wait
        job = await visible_job(req, self.service, self.audit, job_id)
        if wait and job["status"] not in job_record.TERMINAL_STATUSES:
            job = await self.service.wait(job_id, wait) or job
        resp.media = public_job(job, self.settings, principal_of(req))


class CancelResource:
    """POST cancels a job: queued ones never run, running ones stop within a second."""

    permissions = {"POST": Permission.JOBS_CANCEL}

    def __init__(self, service: JobService, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.settings = settings
        self.audit = audit

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str) -> None:
        """200 when the job is cancelled, 202 while a running one stops, 409 if it already ended otherwise."""
        outcome = await self.service.cancel(await visible_job(req, self.service, self.audit, job_id))
        if outcome in (Cancelled.CANCELLED, Cancelled.CANCELLING):
            await self.audit.record(
                principal_of(req).user_id,
                "job.cancel",
                resource=job_id,
                ip=client_ip(req),
                details={"outcome": outcome},
            )
        if outcome is Cancelled.MISSING:
            raise not_found(f"There is no job {job_id!r} that you can see.", code="job_not_found")
        if outcome in (Cancelled.SUCCEEDED, Cancelled.FAILED):
            raise ConflictError(f"The job already {outcome}; there is nothing to cancel.", code="job_finished")
        job = await self.service.load(job_id)
        resp.status = falcon.HTTP_202 if outcome is Cancelled.CANCELLING else falcon.HTTP_200
        resp.media = public_job(job, self.settings, principal_of(req)) if job else {"id": job_id, "status": outcome}
