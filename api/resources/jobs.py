"""Routes of /api/v1/jobs: submit, list, get (with long-poll), cancel."""

from __future__ import annotations

from typing import Any, Mapping

import falcon

from api import keys as apikeys
from api.audit import AuditLog, client_ip
from api.auth import principal_of
from api.body import read_json
from api.errors import bad_request, budget_exceeded, not_found
from api.jobs import BudgetExceededError, IdempotencyConflictError, JobService, body_hash, parse_cursor
from api.permissions import Permission, allowed
from api.validation import InvalidFieldError, check_idempotency_key, parse_submission
from events import jobs
from events.envelope import Event
from events.prices import UnknownModelError
from settings import Settings

MAX_PAGE = 100


def public_job(job: dict[str, str], settings: Settings) -> dict[str, Any]:
    """The job as clients see it, with its trace id and a stream URL that carries a job-scoped token."""
    view = jobs.view(job)
    view["trace_id"] = job.get("trace_id") or None
    token = apikeys.stream_token(settings.secret_key, job["id"], settings.stream_token_ttl_s)
    view["stream_url"] = f"/api/v1/jobs/{job['id']}/events?token={token}"
    return view


async def visible_job(req: falcon.asgi.Request, service: JobService, job_id: str) -> dict[str, str]:
    """The job if this request may see it; 404 otherwise, so other users' ids reveal nothing."""
    job = await service.load(job_id)
    principal = principal_of(req)
    if job is not None:
        if principal is None and req.context.stream_job == job_id:
            return job
        if principal is not None and (job.get("owner") == principal.user_id
                                      or allowed(principal.role, Permission.JOBS_READ_ALL)):
            return job
    raise not_found(f"There is no job {job_id!r} that you can see.", code="job_not_found")


async def submit_job(req: falcon.asgi.Request, service: JobService, settings: Settings, audit: AuditLog,
                     body: dict[str, Any], *, agent: str | None = None,
                     idempotency_key: str | None = None) -> tuple[dict[str, str], bool]:
    """The one submit path of POST /jobs and POST /stream/{agent}: validate, check the caller's agent allow list,
    hold and enqueue, audit; domain errors become 400, 402, 403 and 422. Returns (job, created)."""
    try:
        submission = parse_submission({**body, "agent_type": agent} if agent else body,
                                      max_query_chars=settings.max_query_chars,
                                      max_tokens_default=settings.max_tokens_default,
                                      max_tokens_limit=settings.max_tokens_limit)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
    except InvalidFieldError as ex:
        raise bad_request(str(ex), code="invalid_field") from ex
    principal = principal_of(req)
    assert principal is not None
    if not principal.may_use(submission.agent_type):
        raise falcon.HTTPForbidden(title="Forbidden", code="agent_not_allowed",
                                   description=f"Your account may not use the {submission.agent_type!r} agent.")
    def audited(job: Mapping[str, str]) -> Event:
        return audit.event(principal.user_id, "job.submit", resource=job["id"], ip=client_ip(req),
                           details={"agent": job["agent"], "model": job["model"],
                                    "hold_micros": int(job.get("hold_micros") or 0)})

    try:
        job, created = await service.submit(principal.user_id, submission, idempotency_key=idempotency_key,
                                            digest=body_hash(body), traceparent=req.get_header("traceparent"),
                                            audit=audited)
    except IdempotencyConflictError as ex:
        raise falcon.HTTPUnprocessableEntity(title="Idempotency-Key reused", description=str(ex),
                                             code="idempotency_conflict") from ex
    except UnknownModelError as ex:
        raise bad_request(str(ex), code="unpriced_model") from ex
    except BudgetExceededError as ex:
        raise budget_exceeded(ex) from ex
    return job, created


class JobsResource:
    """POST submits a job; GET lists your jobs (an admin's, everyone's)."""

    permissions = {"POST": Permission.JOBS_SUBMIT, "GET": Permission.JOBS_READ}

    def __init__(self, service: JobService, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.settings = settings
        self.audit = audit

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Submit a job: 202 with its id, status and stream URL."""
        body = await read_json(req, self.settings.max_body_bytes)
        job, created = await submit_job(req, self.service, self.settings, self.audit, body,
                                        idempotency_key=req.get_header("Idempotency-Key"))
        resp.status = falcon.HTTP_202 if created else falcon.HTTP_200
        if not created:
            resp.set_header("Idempotent-Replayed", "true")
        resp.location = f"/api/v1/jobs/{job['id']}"
        view = public_job(job, self.settings)
        resp.media = view

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List jobs, newest first: ?status=, ?limit= (1-100), ?cursor= from the previous page."""
        principal = principal_of(req)
        assert principal is not None
        status = req.get_param("status")
        if status is not None and status not in jobs.STATUSES:
            raise bad_request(f"Unknown status {status!r}; use one of: {', '.join(jobs.STATUSES)}.",
                              code="invalid_field")
        limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_PAGE, default=20)
        raw_cursor = req.get_param("cursor")
        try:
            cursor = parse_cursor(raw_cursor) if raw_cursor else None
        except ValueError as ex:
            raise bad_request(str(ex), code="invalid_cursor") from ex
        wants_all = req.get_param_as_bool("all", default=True)  # parsed for everyone: a bad value is a 400
        every = wants_all and allowed(principal.role, Permission.JOBS_READ_ALL)
        found, after = await self.service.list(None if every else principal.user_id, status=status,
                                               limit=limit, cursor=cursor)
        resp.media = {"jobs": [public_job(j, self.settings) for j in found], "next_cursor": after}


class JobResource:
    """GET one job; ?wait=N long-polls up to N seconds (at most 60) for it to end."""

    permissions = {"GET": Permission.JOBS_READ}

    def __init__(self, service: JobService, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.settings = settings
        self.audit = audit

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str) -> None:
        """The job's status, result, error, usage and timestamps."""
        wait = req.get_param_as_float("wait", min_value=0, max_value=60, default=0)
        job = await visible_job(req, self.service, job_id)
        if wait and job["status"] not in jobs.TERMINAL_STATUSES:
            job = await self.service.wait(job_id, wait) or job
        resp.media = public_job(job, self.settings)


class CancelResource:
    """POST cancels a job: queued ones never run, running ones stop within a second."""

    permissions = {"POST": Permission.JOBS_CANCEL}

    def __init__(self, service: JobService, settings: Settings, audit: AuditLog) -> None:
        self.service = service
        self.settings = settings
        self.audit = audit

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: str) -> None:
        """200 when the job is cancelled, 202 while a running one stops, 409 if it already ended otherwise."""
        outcome = await self.service.cancel(await visible_job(req, self.service, job_id))
        if outcome in ("cancelled", "cancelling"):
            actor = principal_of(req)
            await self.audit.record(actor.user_id if actor else "anonymous", "job.cancel", resource=job_id,
                                    ip=client_ip(req), details={"outcome": outcome})
        if outcome == "missing":
            raise not_found(f"There is no job {job_id!r} that you can see.", code="job_not_found")
        if outcome in ("succeeded", "failed"):
            raise falcon.HTTPConflict(title="Conflict", code="job_finished",
                                      description=f"The job already {outcome}; there is nothing to cancel.")
        job = await self.service.load(job_id)
        resp.status = falcon.HTTP_202 if outcome == "cancelling" else falcon.HTTP_200
        resp.media = public_job(job, self.settings) if job else {"id": job_id, "status": outcome}
