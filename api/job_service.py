"""The jobs service behind the routes: submit, find, list, wait for and cancel jobs (async)."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from api.admission import BudgetExceededError, running_eta_s
from api.body import printable
from api.params import parse_number
from api.relay import HANDOVER, Relay
from events import job_record
from events.cache_key import CacheRequest, cacheable, semantic
from events.catalog import AGENT_TYPES
from events.envelope import STREAM_ID, canonical_id, text
from events.errors import DomainError
from events.money.amounts import micros_to_usd
from events.money.budgets import first_call_micros, job_scopes
from events.money.prices import PriceBook
from events.semantic_cache import SemanticIndex
from events.store import budget_scripts, cache_scripts, job_scripts, keyspace
from events.store.budget_scripts import Settled
from events.store.cache_scripts import shared_failure
from events.store.job_scripts import CacheRole, Cancelled, SubmitCache, SubmitReply, Submitted
from events.store.scripts import AsyncScripts
from events.store.taskmsg import RUN_AGENT_TASK, task_message
from events.telemetry import tracing
from events.telemetry.metrics import CACHE_OPS
from settings import Settings

JOB_ID = re.compile(r"^j_[0-9a-f]{32}$")
IDEMPOTENCY_TTL_S = 24 * 3600
MAX_WAIT_S = 60.0
MAX_FOLLOWERS = 10_000  # identical jobs that may wait for one leader; more run on their own
LOOKUP_RESULT = {CacheRole.HIT: "hit", CacheRole.FOLLOWER: "joined", CacheRole.LEADER: "miss", CacheRole.NONE: "miss"}


# What a job answered without a model call shows as its usage.
ZERO_USAGE = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cached_input_tokens": 0,
    "total_tokens": 0,
    "llm_calls": 0,
    "estimated": False,
    "cost_usd": micros_to_usd(0),
    "cached": True,
}


def new_job_id() -> str:
    """A fresh job id."""
    return f"j_{uuid.uuid4().hex}"


def body_hash(body: dict[str, Any]) -> str:
    """A digest of a request body that ignores key order, to match Idempotency-Key replays."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Submission:
    """A checked job submission, with the agent named (by the body, or the stream route's path)."""

    agent_type: str
    query: str
    model: str | None
    max_tokens: int
    session_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    attachments: list[Any] = field(default_factory=list)
    cache: bool = True


class IdempotencyConflictError(DomainError):
    """Raised when an Idempotency-Key is reused with a different body, or names a job that has expired."""

    status = 422
    code = "idempotency_conflict"


class CancelContendedError(DomainError):
    """Raised when identical jobs keep joining a queued leader faster than its cancel can end them."""

    status = 409
    code = "cancel_contended"


class JobService:
    """Jobs in Redis, as the API sees them; `client` is a redis.asyncio client."""

    def __init__(
        self,
        client: Any,
        relay: Relay,
        settings: Settings,
        prices: PriceBook,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_job_id,
    ) -> None:
        self.client = client
        self.relay = relay
        self.settings = settings
        self.clock = clock
        self.new_id = new_id
        self.prices = prices
        self.scripts = AsyncScripts(client)
        threshold = settings.cache_semantic_threshold
        self.semantic = SemanticIndex(client, threshold, clock=clock) if threshold > 0 else None

    async def submit(
        self,
        owner: str,
        sub: Submission,
        *,
        idempotency_key: str | None = None,
        digest: str = "",
        traceparent: str | None = None,
        tracestate: str | None = None,
        audit: Callable[[Mapping[str, str]], Mapping[str, Any]] | None = None,
    ) -> tuple[dict[str, str], bool]:
        """Hold the worst-case cost, then save and enqueue the job; returns (job, created).

        `audit` makes the job's audit record (its data) from the job; it is written in the same script as the job.
        A replayed Idempotency-Key returns the first job. Raises UnknownModelError for an unpriced model and
        BudgetExceededError when the hold does not fit a budget. The job's trace context comes from the current
        span, else the request's `traceparent` header, else fresh ids.
        """
        idem = keyspace.idempotency(owner, idempotency_key) if idempotency_key else ""
        if idem and (first := await self._replay(idem, digest)) is not None:
            return first, False
        job_id = self.new_id()
        now = self.clock()
        offline = self.settings.provider_mode == "offline"
        model = "offline" if offline else (sub.model or self.settings.default_model)
        self.prices.price(model)  # an unpriced model is refused before any cache answer
        record = job_record.job_record(
            job_id=job_id,
            owner=owner,
            agent=sub.agent_type,
            model=model,
            query=sub.query,
            max_tokens=sub.max_tokens,
            now=now,
            session_id=sub.session_id,
            metadata=sub.metadata,
            attachments=sub.attachments,
            provider=self.settings.provider_mode,
        )
        if sub.model and sub.model != model:
            record["requested_model"] = sub.model
        record.update(tracing.new_trace_context(traceparent, tracestate))
        record["trace_id"] = tracing.trace_id(record["traceparent"])

        async def save(cache: SubmitCache | None) -> SubmitReply:
            return await self.scripts.run(
                job_scripts.submit(
                    job_id=job_id,
                    owner=owner,
                    fields=record,
                    now=now,
                    job_ttl_s=self.settings.job_ttl_s,
                    queue=self.settings.queue,
                    message=task_message(RUN_AGENT_TASK, [job_id, 1], self.settings.queue, task_id=job_id),
                    idempotency_key=idempotency_key,
                    digest=digest,
                    idempotency_ttl_s=IDEMPOTENCY_TTL_S,
                    lifecycle={
                        "status": "queued",
                        "agent": sub.agent_type,
                        "model": model,
                        "trace_id": record["trace_id"],
                    },
                    audit=audit(record) if audit else None,
                    audit_max_len=keyspace.AUDIT_STREAM_MAXLEN,
                    cache=cache,
                )
            )

        request = await self._cache_request(owner, sub, model)
        cache = exact = self._submit_cache(request) if request else None
        reply: SubmitReply | None = None
        answerable = cache is not None and await self._answerable(cache.digest)
        if request and cache and self.semantic and semantic(sub.agent_type, self.semantic.threshold):
            # A similar stored request answers this one (docs/cache.md, "Semantic matching"). Only the cache digest
            # changes: an Idempotency-Key still compares the body's digest.
            record["cache_partition"] = request.partition()  # where the worker registers it, once it is stored
            if not answerable and (match := await self.semantic.find(record["cache_partition"], sub.query)):
                record.update(cache_match="semantic", cache_score=f"{match.score:.4f}")
                cache, answerable = replace(cache, digest=match.digest), True
        if answerable:  # a hit or a follower needs no hold
            record["hold_micros"] = "0"
            reply = await save(cache)
            if reply.outcome is Submitted.NEEDS_HOLD:
                reply = None
                if cache is not exact:  # the similar request's entry went meanwhile: this one runs as itself
                    cache = exact
                    del record["cache_match"], record["cache_score"]
        if reply is None:
            amount = await self._hold(owner, job_id, sub, model, now)
            record["hold_micros"] = str(amount)
            reply = await save(replace(cache, may_run=True) if cache else None)
            if reply.outcome is Submitted.CREATED and reply.role in (CacheRole.HIT, CacheRole.FOLLOWER):
                await self.settle(owner, job_id)  # it will never run: return the hold
        if reply.outcome is Submitted.CREATED:
            CACHE_OPS.labels("response_lookup", LOOKUP_RESULT[reply.role] if cache else "bypass").inc()
            if reply.role in (CacheRole.HIT, CacheRole.FOLLOWER):
                return await self.load(job_id) or record, True
            return record, True
        if record.get("hold_micros", "0") != "0":
            await self.settle(owner, job_id)  # a concurrent request with the same key won: return our hold
        first = await self._replay(idem, digest)
        if first is None:
            raise IdempotencyConflictError("This Idempotency-Key belongs to a job that has expired; use a new key.")
        return first, False

    async def _cache_request(self, owner: str, sub: Submission, model: str) -> CacheRequest | None:
        """The cache's view of a submission, or None when it is not cached (docs/cache.md)."""
        if not cacheable(enabled=sub.cache, ttl_s=self.settings.cache_ttl_s, session_id=sub.session_id):
            return None
        version = await self.client.get(keyspace.docs_version(owner))
        return CacheRequest(
            user=owner,
            agent=sub.agent_type,
            model=model,
            query=sub.query,
            max_tokens=sub.max_tokens,
            docs_version=text(version) if version is not None else "0",
            provider=self.settings.provider_mode,
            attachments=sub.attachments,
        )

    def _submit_cache(self, request: CacheRequest) -> SubmitCache:
        """The cache's part of the submit script, for the request's digest (no hold taken yet)."""
        return SubmitCache(
            digest=request.digest(),
            docs_version=request.docs_version,
            may_run=False,
            inflight_ttl_s=self.settings.hard_time_limit_s * job_record.MAX_ATTEMPTS
            + self.settings.visibility_timeout_s,
            max_followers=MAX_FOLLOWERS,
            stream_ttl_s=self.settings.stream_ttl_s,
            followers_ttl_s=self.settings.job_ttl_s,
            provider=self.settings.provider_mode,
            usage=ZERO_USAGE,
        )

    async def _answerable(self, digest: str) -> bool:
        """Whether the request has a cache entry or a job in flight now (then it is tried without a hold)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hexists(keyspace.CACHE_ENTRIES, digest)
        pipe.exists(keyspace.cache_inflight(digest))
        entry, leader = await pipe.execute()
        return bool(entry) or bool(leader)

    async def _replay(self, idem: str, digest: str) -> dict[str, str] | None:
        """The job an Idempotency-Key already made, if any; IdempotencyConflictError if the body differs."""
        raw = await self.client.get(idem)
        if raw is None:
            return None
        first_id, first_digest = job_scripts.idempotency_record(raw)
        if first_digest != digest:
            raise IdempotencyConflictError(
                "This Idempotency-Key was already used with a different body; use a new key for a new job."
            )
        first = await self.load(first_id)
        if first is None:
            raise IdempotencyConflictError("This Idempotency-Key belongs to a job that has expired; use a new key.")
        return first

    async def _hold(self, owner: str, job_id: str, sub: Submission, model: str, now: float) -> int:
        """Reserve the job's first call's worst case against every budget scope; returns the amount held."""
        info = AGENT_TYPES[sub.agent_type]
        amount = first_call_micros(
            self.prices.price(model), info, query=sub.query, max_tokens=sub.max_tokens, images=len(sub.attachments)
        )
        reply = await self.scripts.run(
            budget_scripts.hold(
                user_id=owner,
                job_id=job_id,
                amount_micros=amount,
                scopes=job_scopes(sub.session_id, sub.agent_type),
                now=now,
                expires_at=now + self.settings.hold_ttl_s,
            )
        )
        if reply.rejection is not None:
            eta = await running_eta_s(self.client, owner, now) if reply.rejection.held_micros else None
            raise BudgetExceededError(reply.rejection, amount, now=now, running_eta_s=eta)
        return amount

    async def settle(self, owner: str, job_id: str) -> None:
        """Swap a job's hold for its spend (nothing, for a job that never ran)."""
        now = self.clock()
        reply = await self.scripts.run(budget_scripts.settle(user_id=owner, job_id=job_id, now=now))
        if reply.outcome is Settled.MOVED:
            await self.scripts.run(
                budget_scripts.settle(user_id=owner, job_id=job_id, now=now, period_ids=reply.period_ids)
            )

    async def load(self, job_id: str) -> dict[str, str] | None:
        """The job's record, or None if the id is malformed or unknown."""
        if not JOB_ID.fullmatch(job_id):
            return None
        record = job_record.decode(await self.client.hgetall(keyspace.job(job_id)))
        return record or None

    async def list(
        self, owner: str | None, *, status: str | None, limit: int, cursor: tuple[float, str] | None
    ) -> tuple[list[dict[str, str]], str | None]:
        """A page of jobs, newest first (one user's, or everyone's when `owner` is None); returns (jobs, next)."""
        index = keyspace.user_jobs(owner) if owner else keyspace.JOBS_ALL
        top: float | str = cursor[0] if cursor else "+inf"
        found: list[dict[str, str]] = []
        last: tuple[float, str] | None = None
        while len(found) < limit:
            chunk = await self.client.zrevrangebyscore(index, top, "-inf", start=0, num=200, withscores=True)
            chunk = [(text(m), s) for m, s in chunk]
            if cursor is not None:  # entries at the cursor's score up to its id were on earlier pages
                at_score, at_id = cursor
                chunk = [(m, s) for m, s in chunk if not (s == at_score and m >= at_id)]
            if not chunk:
                return found, None
            pipe = self.client.pipeline(transaction=False)
            for member, _ in chunk:
                pipe.hgetall(keyspace.job(member))
            for (member, score), raw in zip(chunk, await pipe.execute(), strict=True):
                last = (score, member)
                record = job_record.decode(raw)
                if record and (status is None or record.get("status") == status):
                    found.append(record)
                    if len(found) == limit:
                        break
            assert last is not None  # the chunk was not empty
            cursor = last
            top = last[0]
        return found, (f"{last[0]!r}:{last[1]}" if last else None)

    async def cancel(self, job: dict[str, str]) -> Cancelled:
        """Cancel a job: a queued one ends now (its whole hold goes back), a running one stops within a second.

        A queued leader of identical requests also ends the jobs waiting for it, as failed (docs/cache.md).
        """
        ends: dict[str, Any] = {
            "job_id": job["id"],
            "job_ttl_s": self.settings.job_ttl_s,
            "stream_ttl_s": self.settings.stream_ttl_s,
            "data": {"reason": "cancelled by request before it started"},
        }
        digest = job.get("cache_digest", "")
        outcome: Cancelled | cache_scripts.Raced = cache_scripts.Raced.MOVED
        if not digest:
            outcome = await self.scripts.run(job_scripts.cancel(now=self.clock(), **ends))
        shared = shared_failure(
            job["id"],
            "cancelled",
            {"code": "cancelled", "message": "it was cancelled before it started"},
            job.get("provider", ""),
        )
        for _ in range(cache_scripts.MAX_READS if digest else 0):
            followers = sorted(text(f) for f in await self.client.smembers(keyspace.cache_followers(digest)))
            outcome = await self.scripts.run(
                cache_scripts.cancel_leader(now=self.clock(), digest=digest, followers=followers, shared=shared, **ends)
            )
            if outcome is not cache_scripts.Raced.MOVED:
                break
        if not isinstance(outcome, Cancelled):
            raise CancelContendedError("Identical jobs kept joining this one while it was cancelled; cancel it again.")
        if outcome is Cancelled.CANCELLED:
            await self.settle(job.get("owner", ""), job["id"])
        return outcome

    async def last_event_id(self, job_id: str) -> str | None:
        """The id of the job stream's newest entry, if it has one."""
        newest = await self.client.xrevrange(keyspace.job_stream(job_id), count=1)
        return text(newest[0][0]) if newest else None

    async def wait(self, job_id: str, timeout_s: float) -> dict[str, str] | None:
        """The job once it is terminal or `timeout_s` has passed, whichever is first."""
        job = await self.load(job_id)
        if job is None or job["status"] in job_record.TERMINAL_STATUSES or timeout_s <= 0:
            return job
        sub = self.relay.subscribe(job_id, await self.last_event_id(job_id) or "0-0")
        deadline = time.monotonic() + min(timeout_s, MAX_WAIT_S)
        try:
            job = await self.load(job_id)  # it may have ended before we subscribed
            while job is not None and job["status"] not in job_record.TERMINAL_STATUSES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                delivery = await sub.next(left)
                if delivery is None or delivery.terminal or sub.dropped:
                    job = await self.load(job_id)
                    if delivery is None or delivery is HANDOVER:
                        break  # the time is up, or this process is stopping: answer with the job as it is
        finally:
            self.relay.unsubscribe(sub)
        return job


def parse_cursor(raw: str) -> tuple[float, str]:
    """Decode a list cursor ('score:id'); raises InvalidFieldError."""
    score, _, member = raw.partition(":")
    try:
        if JOB_ID.fullmatch(member):
            return parse_number(score), member
    except ValueError:
        pass
    raise DomainError("Field 'cursor': is not one this API gave out; pass back a next_cursor.", code="invalid_cursor")


def check_event_id(raw: str) -> str:
    """Validate a Last-Event-ID; raises InvalidFieldError saying what one looks like."""
    if not STREAM_ID.fullmatch(raw):
        raise DomainError(
            f"Field 'Last-Event-ID': {printable(raw)!r} is not a stream id like 1700000000000-0.",
            code="invalid_last_event_id",
        )
    return canonical_id(raw)
