"""The job's transitions as typed script calls: submit, start, heartbeat, finish, cancel, requeue, recheck.

Each transition that touches more than one key is one Lua script, so the job hash, its event stream, its lease,
the running set and the queue never disagree. Every key of a job shares the job's hash tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping

from events.envelope import text, text_map
from events.store import keyspace
from events.store.scripts import Call, call
from events.store.taskmsg import MessageIds, message_ids


class Submitted(StrEnum):
    """How a submit ended."""

    CREATED = "created"
    EXISTS = "exists"  # the Idempotency-Key already names a job
    NEEDS_HOLD = "needs_hold"  # sent without a hold in the hope of a cache answer, but the job must run


class CacheRole(StrEnum):
    """What the response cache made of a created job (docs/cache.md)."""

    NONE = "none"  # not cached: it runs on its own
    HIT = "hit"  # answered from a cache entry, at no model cost
    FOLLOWER = "follower"  # waits for the identical job in flight and gets its outcome
    LEADER = "leader"  # runs; identical jobs submitted meanwhile wait for it, its answer is stored


@dataclass(frozen=True)
class SubmitCache:
    """The response cache's part of a submit: the request's digest and the documents version it was made with."""

    digest: str
    docs_version: str
    may_run: bool  # False: the caller holds no budget for the job, so it may only be a hit or a follower
    inflight_ttl_s: int
    max_followers: int
    stream_ttl_s: int
    followers_ttl_s: int  # the followers set outlives the leader's marker: a waiting job is never lost from it
    provider: str
    usage: Mapping[str, Any]  # what a hit's record and `done` event show (zero tokens, zero cost)


@dataclass(frozen=True)
class SubmitReply:
    """`outcome`; for CREATED the cache's role and its source job (the entry's or the leader); for EXISTS the
    job id and body digest the key was first used with."""

    outcome: Submitted
    job_id: str = ""
    digest: str = ""
    role: CacheRole = CacheRole.NONE
    source: str = ""


def _submitted(reply: Any) -> SubmitReply:
    outcome = Submitted(text(reply[0]))
    if outcome is Submitted.CREATED:
        return SubmitReply(outcome, text(reply[1]), role=CacheRole(text(reply[2])), source=text(reply[3]))
    if outcome is Submitted.NEEDS_HOLD:
        return SubmitReply(outcome)
    return SubmitReply(outcome, *idempotency_record(reply[1]))


def idempotency_record(raw: Any) -> tuple[str, str]:
    """(job id, body digest) of an Idempotency-Key's record, as submit.lua writes it: `job_id:digest`."""
    job_id, _, digest = text(raw).partition(":")
    return job_id, digest


def submit(
    *,
    job_id: str,
    owner: str,
    fields: Mapping[str, str],
    now: float,
    job_ttl_s: int,
    queue: str,
    message: str,
    idempotency_key: str | None,
    digest: str,
    idempotency_ttl_s: int,
    lifecycle: Mapping[str, Any],
    audit: Mapping[str, Any] | None,
    audit_max_len: int,
    cache: SubmitCache | None = None,
) -> Call[SubmitReply]:
    """Save a queued job, index it, push its task message and write its lifecycle and audit events; with `cache`,
    answer it from the response cache or make it wait for the identical job in flight instead of running it."""
    idem = keyspace.idempotency(owner, idempotency_key) if idempotency_key else keyspace.idempotency(owner, "-")
    fields = {**fields, **_message_fields(message_ids(message))}
    keys = [
        keyspace.job(job_id),
        keyspace.user_jobs(owner),
        keyspace.JOBS_ALL,
        keyspace.LIFECYCLE_STREAM,
        queue,
        idem,
        keyspace.AUDIT_STREAM,
        keyspace.QUEUED_JOBS,
    ]
    cached = ""
    if cache is not None:
        keys += [
            keyspace.docs_version(owner),
            keyspace.CACHE_ENTRIES,
            keyspace.CACHE_EXPIRY,
            keyspace.CACHE_STATS,
            keyspace.cache_inflight(cache.digest),
            keyspace.cache_followers(cache.digest),
            keyspace.job_stream(job_id),
        ]
        cached = json.dumps(
            {
                "digest": cache.digest,
                "docs_version": cache.docs_version,
                "may_run": cache.may_run,
                "inflight_ttl": cache.inflight_ttl_s,
                "max_followers": cache.max_followers,
                "stream_ttl": cache.stream_ttl_s,
                "followers_ttl": cache.followers_ttl_s,
                "provider": cache.provider,
                "usage": json.dumps(cache.usage),
            }
        )
    return call(
        "submit",
        keys,
        [
            job_id,
            f"{now:.6f}",
            job_ttl_s,
            message,
            digest,
            "1" if idempotency_key else "0",
            idempotency_ttl_s,
            json.dumps(lifecycle),
            audit_max_len,
            json.dumps(audit) if audit else "",
            json.dumps(dict(fields)),
            cached,
        ],
        _submitted,
    )


class StartOutcome(StrEnum):
    """Whether an attempt may run."""

    OK = "ok"
    MISSING = "missing"
    STALE = "stale"  # the job moved on to another attempt
    LEASED = "leased"  # another attempt holds the lease
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Started:
    """The start's outcome; for OK the next event's seq and the job's record."""

    outcome: StartOutcome
    next_seq: int = 0
    job: Mapping[str, str] | None = None


def _started(reply: Any) -> Started:
    outcome = StartOutcome(text(reply[0]))
    if outcome is not StartOutcome.OK:
        return Started(outcome)
    flat = reply[2]
    return Started(outcome, int(reply[1]), text_map(dict(zip(flat[::2], flat[1::2], strict=True))))


def _attempt_keys(job_id: str) -> list[str]:
    return [
        keyspace.job(job_id),
        keyspace.job_lease(job_id),
        keyspace.job_stream(job_id),
        keyspace.RUNNING_JOBS,
        keyspace.LIFECYCLE_STREAM,
    ]


def _message_fields(ids: MessageIds) -> dict[str, str]:
    """The job's record of its current message (what `recheck` needs to find it)."""
    return {"msg_id": ids.task_id, "msg_origin": ids.origin, "msg_tag": ids.delivery_tag}


def start(
    *, job_id: str, attempt: int, now: float, lease_token: str, lease_ms: int, worker: str, data: Mapping[str, Any]
) -> Call[Started]:
    """Take the job's lease for `attempt`, mark it running and emit `start` with `data`."""
    return call(
        "start",
        [*_attempt_keys(job_id), keyspace.QUEUED_JOBS],
        [job_id, attempt, f"{now:.6f}", lease_token, lease_ms, worker, json.dumps(data)],
        _started,
    )


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learned."""

    lease_ours: bool
    cancel_requested: bool


def heartbeat(*, job_id: str, lease_token: str, lease_ms: int) -> Call[Beat]:
    """Renew the lease if it is still ours, and read the cancel flag."""
    return call(
        "heartbeat",
        [keyspace.job_lease(job_id), keyspace.job(job_id)],
        [lease_token, lease_ms],
        lambda r: Beat(bool(int(r[0])), text(r[1]) == "1"),
    )


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: the job status, its terminal event, and what the record keeps."""

    status: str
    event: str
    data: Mapping[str, Any]
    result: str = ""
    error: Mapping[str, str] | None = None


def finish(
    *,
    job_id: str,
    attempt: int,
    now: float,
    lease_token: str,
    outcome: Outcome,
    usage: Mapping[str, Any],
    seq: int,
    job_ttl_s: int,
    stream_ttl_s: int,
) -> Call[bool]:
    """Store the attempt's outcome and emit its terminal event at `seq`; False when the lease was lost."""
    ended = {
        "status": outcome.status,
        "result": outcome.result,
        "error": json.dumps(outcome.error) if outcome.error else "",
        "usage": json.dumps(usage),
        "event": outcome.event,
        "data": json.dumps(outcome.data),
        "seq": seq,
    }
    return call(
        "finish",
        _attempt_keys(job_id),
        [job_id, attempt, f"{now:.6f}", lease_token, job_ttl_s, stream_ttl_s, json.dumps(ended)],
        lambda r: text(r) == "ok",
    )


class Cancelled(StrEnum):
    """What a cancel did."""

    CANCELLED = "cancelled"  # it was queued: it never runs
    CANCELLING = "cancelling"  # it runs: its worker stops it within a second
    MISSING = "missing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def cancel(*, job_id: str, now: float, job_ttl_s: int, stream_ttl_s: int, data: Mapping[str, Any]) -> Call[Cancelled]:
    """Cancel a job: a queued one ends now, a running one is flagged for its worker."""
    return call(
        "cancel",
        [keyspace.job(job_id), keyspace.job_stream(job_id), keyspace.LIFECYCLE_STREAM, keyspace.QUEUED_JOBS],
        [job_id, f"{now:.6f}", job_ttl_s, stream_ttl_s, json.dumps(data)],
        lambda r: Cancelled(text(r)),
    )


class Requeued(StrEnum):
    """What the sweeper did with a running job whose lease lapsed."""

    REQUEUED = "requeued"
    ALIVE = "alive"  # the lease is back: nothing to do
    GONE = "gone"  # the job is no longer running
    CHANGED = "changed"  # another attempt started meanwhile
    FAILED = "failed"  # it lost its worker on every attempt
    CANCELLED = "cancelled"


def requeue(
    *,
    job_id: str,
    attempt: int,
    now: float,
    message: str,
    max_attempts: int,
    queue: str,
    job_ttl_s: int,
    stream_ttl_s: int,
) -> Call[Requeued]:
    """Run a job whose worker died again as the next attempt, or end it (cancelled, out of attempts)."""
    ids = message_ids(message)
    return call(
        "requeue",
        [*_attempt_keys(job_id), queue, keyspace.QUEUED_JOBS],
        [job_id, attempt, f"{now:.6f}", message, max_attempts, job_ttl_s, stream_ttl_s, *_message_fields(ids).values()],
        lambda r: Requeued(text(r)),
    )


class Rechecked(StrEnum):
    """What the sweeper learned about the message of a job queued for long."""

    GONE = "gone"  # the job is no longer queued
    CHANGED = "changed"  # it has another message or attempt since it was read
    DELIVERED = "delivered"  # in kombu's `unacked`: a worker holds it
    WAITING = "waiting"  # in the queue list
    UNKNOWN = "unknown"  # the list is longer than the search, and the message is not in its tail
    MISSING = "missing"  # found nowhere; re-enqueued only when a later look finds it missing too
    REENQUEUED = "reenqueued"


def recheck(
    *,
    job_id: str,
    attempt: int,
    now: float,
    queue: str,
    message: str,
    restored: str,
    depth: int,
    confirm_s: float,
    new_message: str | None,
) -> Call[Rechecked]:
    """Look for a queued job's `message` (or its `restored` form) in `unacked` and the queue; when it was missing
    on a look at least `confirm_s` earlier and is missing still, push `new_message` (if given) to the queue's front.
    """
    new = list(_message_fields(message_ids(new_message)).values()) if new_message else ["", "", ""]
    return call(
        "recheck",
        [keyspace.job(job_id), keyspace.QUEUED_JOBS, queue, keyspace.KOMBU_UNACKED, keyspace.LIFECYCLE_STREAM],
        [
            job_id,
            f"{now:.6f}",
            attempt,
            message_ids(message).delivery_tag,
            message,
            restored,
            max(1, depth),  # LPOS reads MAXLEN 0 as the whole list
            confirm_s,
            new_message or "",
            *new,
        ],
        lambda r: Rechecked(text(r)),
    )
