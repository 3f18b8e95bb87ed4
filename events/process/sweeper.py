"""The sweeper: a running job whose lease lapsed (its worker died) runs again as the next attempt, budget holds
whose job ended or vanished are settled (their spend counted, the rest returned), and windows of failed
authentications that are over become one audit record per address with its count."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from events import job_record
from events.envelope import text
from events.store import job_scripts, keyspace, user_scripts
from events.store.budget_scripts import settle_hold
from events.store.job_scripts import Requeued
from events.store.scripts import Scripts
from events.store.taskmsg import RUN_AGENT_TASK, task_message

log = logging.getLogger("events.process.sweeper")


class Sweeper:
    """Finds running jobs without a lease and requeues (or ends) them, one script per job."""

    def __init__(
        self,
        client: Any,
        queue: str,
        *,
        grace_s: float,
        job_ttl_s: int,
        stream_ttl_s: int,
        max_attempts: int = job_record.MAX_ATTEMPTS,
        hold_ttl_s: int = 600,
        auth_window_s: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.queue = queue
        self.grace_s = grace_s
        self.job_ttl_s = job_ttl_s
        self.stream_ttl_s = stream_ttl_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.hold_ttl_s = hold_ttl_s
        self.auth_window_s = auth_window_s
        self.scripts = Scripts(client)

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many jobs ended up in each outcome."""
        now = self.clock()
        # Jobs that started less than a grace period ago may not have renewed their lease yet.
        ids = [text(i) for i in self.client.zrangebyscore(keyspace.RUNNING_JOBS, "-inf", now - self.grace_s)]
        outcomes: dict[str, int] = {}
        if not ids:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keyspace.job_lease(job_id))
            pipe.hmget(keyspace.job(job_id), "attempt", "owner")
        replies = pipe.execute()
        for i, job_id in enumerate(ids):
            leased, (attempt, owner) = replies[2 * i], replies[2 * i + 1]
            if leased:
                continue
            attempt_no = int(attempt or 0)
            message = task_message(RUN_AGENT_TASK, [job_id, attempt_no + 1], self.queue, origin="sweeper")
            outcome = self.scripts.run(
                job_scripts.requeue(
                    job_id=job_id,
                    attempt=attempt_no,
                    now=now,
                    message=message,
                    max_attempts=self.max_attempts,
                    queue=self.queue,
                    job_ttl_s=self.job_ttl_s,
                    stream_ttl_s=self.stream_ttl_s,
                )
            )
            outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
            if outcome in (Requeued.FAILED, Requeued.CANCELLED) and owner is not None:
                settle_hold(self.scripts, user_id=text(owner), job_id=job_id, now=now)  # ended for good
            if outcome not in (Requeued.ALIVE, Requeued.CHANGED):
                log.warning("job %s lost its worker on attempt %d: %s", job_id, attempt_no, outcome.value)
        return outcomes

    def sweep_holds(self, batch: int = 500) -> dict[str, int]:
        """Settle holds past their expiry whose job has ended or is gone; extend those of live jobs."""
        now = self.clock()
        members = [text(m) for m in self.client.zrangebyscore(keyspace.HOLDS_INDEX, "-inf", now, start=0, num=batch)]
        outcomes = {"settled": 0, "extended": 0}
        if not members:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.hget(keyspace.job(member.partition("\t")[2]), "status")
        for member, status in zip(members, pipe.execute(), strict=True):
            user, _, job_id = member.partition("\t")
            if status is not None and text(status) not in job_record.TERMINAL_STATUSES:
                self.client.zadd(keyspace.HOLDS_INDEX, {member: now + self.hold_ttl_s})
                outcomes["extended"] += 1
                continue
            settle_hold(self.scripts, user_id=user, job_id=job_id, now=now)
            outcomes["settled"] += 1
        return outcomes

    def summarise_auth_failures(self) -> int:
        """Turn each finished window of failed authentications into audit records; returns how many were written."""
        now = self.clock()
        current = int(now // self.auth_window_s)
        written = 0
        for raw in self.client.zrangebyscore(keyspace.AUTH_FAILURE_WINDOWS, "-inf", f"({current}"):
            window = int(text(raw))
            written += self.scripts.run(
                user_scripts.summarise_auth_failures(
                    window=window, window_s=self.auth_window_s, now=now, audit_max_len=keyspace.AUDIT_STREAM_MAXLEN
                )
            )
        return written
