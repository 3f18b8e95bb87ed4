"""The response cache's script calls: a leader's finish and a queued leader's cancel (docs/cache.md).

A leader is the one job that runs for identical requests in flight; the others (followers) wait. Its end stores
the answer (on success), stops it being the leader, and ends every follower with its outcome, in one script with
the job's own end (finish.lua, cancel.lua). The caller reads the followers first and passes their keys; when one
joined meanwhile the script writes nothing and answers 'moved', and the caller reads them again (at most
`MAX_READS` times: followers cannot join faster than that for long).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping, Sequence

from events.envelope import text
from events.store import job_scripts, keyspace
from events.store.job_scripts import Cancelled, Outcome
from events.store.scripts import Call, call

MAX_READS = 20


@dataclass(frozen=True)
class Shared:
    """The outcome every follower of a leader gets."""

    status: str
    provider: str
    result: str = ""
    usage: Mapping[str, Any] | None = None
    error: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, str]:
        """As the scripts read it."""
        return {
            "status": self.status,
            "provider": self.provider,
            "result": self.result,
            "usage": json.dumps(self.usage or {}),
            "error": json.dumps(self.error or {}),
        }


def shared_failure(leader: str, status: str, error: Mapping[str, str] | None, provider: str) -> Shared:
    """What followers get when their leader did not succeed: a failure that says why and what to do."""
    why = f" ({error.get('code')}: {error.get('message')})" if error else ""
    message = (
        f"This job shared the run of the identical job {leader}, which ended {status}{why}. "
        "Submit it again to run it anew."
    )
    return Shared("failed", provider, error={"code": "shared_run_failed", "message": message})


@dataclass(frozen=True)
class Bounds:
    """The response cache's TTL and size bounds."""

    ttl_s: int
    max_entries: int
    max_bytes: int


class Raced(StrEnum):
    """Why a cache script did nothing: the state it was given changed since it was read."""

    MOVED = "moved"  # the followers changed since they were read: read them again and retry
    RUNNING = "running"  # the leader runs again (release only): its next end releases them
    LOST = "lost"  # another attempt holds the lease (finish only)


class Ended(StrEnum):
    """A leader's finish that took effect."""

    OK = "ok"


@dataclass(frozen=True)
class LeaderFinished:
    """How a leader's finish went: `outcome` is Ended.OK, or Raced.LOST / Raced.MOVED."""

    outcome: Ended | Raced
    stored: bool = False
    evicted: int = 0
    expired: int = 0
    cache_bytes: int = 0
    followers_ended: int = 0


def _leader_finished(reply: Any) -> LeaderFinished:
    if not isinstance(reply, list):
        said = text(reply)
        return LeaderFinished(Ended.OK if said == Ended.OK else Raced(said))
    return LeaderFinished(Ended.OK, bool(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]), int(reply[5]))


def _follower_keys(followers: Sequence[str]) -> list[str]:
    return [key for f in followers for key in (keyspace.job(f), keyspace.job_stream(f))]


def finish_leader(
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
    digest: str,
    entry: str,
    bounds: Bounds,
    followers: Sequence[str],
    shared: Shared,
) -> Call[LeaderFinished]:
    """End a leader's attempt as `job_scripts.finish` does, store `entry` (JSON, '' for none) under `digest`
    within `bounds`, and end `followers` (as read just before) with `shared`."""
    base = job_scripts.finish(
        job_id=job_id,
        attempt=attempt,
        now=now,
        lease_token=lease_token,
        outcome=outcome,
        usage=usage,
        seq=seq,
        job_ttl_s=job_ttl_s,
        stream_ttl_s=stream_ttl_s,
    )
    cache = {
        "digest": digest,
        "entry": entry,
        "ttl": bounds.ttl_s,
        "max_entries": bounds.max_entries,
        "max_bytes": bounds.max_bytes,
        "followers": list(followers),
        "shared": shared.to_json(),
    }
    keys = [
        *base.keys,
        keyspace.CACHE_ENTRIES,
        keyspace.CACHE_EXPIRY,
        keyspace.CACHE_STATS,
        keyspace.cache_inflight(digest),
        keyspace.cache_followers(digest),
        *_follower_keys(followers),
    ]
    return call("finish", keys, [*base.args, json.dumps(cache)], _leader_finished)


def cancel_leader(
    *,
    job_id: str,
    now: float,
    job_ttl_s: int,
    stream_ttl_s: int,
    data: Mapping[str, Any],
    digest: str,
    followers: Sequence[str],
    shared: Shared,
) -> Call[Cancelled | Raced]:
    """Cancel a leader as `job_scripts.cancel` does; a queued one also ends `followers` (as read) with `shared`.
    Returns Raced.MOVED when the followers changed since they were read."""
    base = job_scripts.cancel(job_id=job_id, now=now, job_ttl_s=job_ttl_s, stream_ttl_s=stream_ttl_s, data=data)
    cache = {"followers": list(followers), "shared": shared.to_json()}
    keys = [
        *base.keys,
        keyspace.cache_inflight(digest),
        keyspace.cache_followers(digest),
        *_follower_keys(followers),
    ]
    return call(
        "cancel",
        keys,
        [*base.args, json.dumps(cache)],
        lambda r: Raced.MOVED if text(r) == "moved" else Cancelled(text(r)),
    )


def release(
    *,
    job_id: str,
    now: float,
    job_ttl_s: int,
    stream_ttl_s: int,
    digest: str,
    followers: Sequence[str],
    shared: Shared,
) -> Call[int | Raced]:
    """End the followers (as read) of a leader that ended outside finish.lua; an int (how many), or
    Raced.RUNNING / Raced.MOVED."""
    cache = {"followers": list(followers), "shared": shared.to_json()}
    keys = [
        keyspace.job(job_id),
        keyspace.cache_inflight(digest),
        keyspace.cache_followers(digest),
        keyspace.LIFECYCLE_STREAM,
        *_follower_keys(followers),
    ]
    return call(
        "cache_release",
        keys,
        [job_id, f"{now:.6f}", job_ttl_s, stream_ttl_s, json.dumps(cache)],
        lambda r: r if isinstance(r, int) else Raced(text(r)),
    )


def release_followers(scripts: Any, client: Any, job_id: str, *, now: float, job_ttl_s: int, stream_ttl_s: int) -> int:
    """End the followers of a leader that ended outside finish.lua (blocking clients); returns how many ended."""
    raw = client.hmget(keyspace.job(job_id), "cache_digest", "status", "error", "provider")
    digest, status, error, provider = (text(v) if v is not None else "" for v in raw)
    if not digest:
        return 0
    shared = shared_failure(job_id, status, json.loads(error) if error else None, provider)
    for _ in range(MAX_READS):
        followers = sorted(text(f) for f in client.smembers(keyspace.cache_followers(digest)))
        reply = scripts.run(
            release(
                job_id=job_id,
                now=now,
                job_ttl_s=job_ttl_s,
                stream_ttl_s=stream_ttl_s,
                digest=digest,
                followers=followers,
                shared=shared,
            )
        )
        if reply is not Raced.MOVED:
            return reply if isinstance(reply, int) else 0
    return 0
