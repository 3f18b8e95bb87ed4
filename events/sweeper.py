"""The sweeper: a running job whose lease lapsed (its worker died) runs again as the next attempt, budget holds
whose job ended or vanished are settled (their spend counted, the rest returned), and windows of failed
authentications that are over become one audit record per address with its count."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from events import jobs, keys
from events.budgets import BudgetScripts, settle_call
from events.envelope import text
from events.taskmsg import RUN_AGENT_TASK, task_message

log = logging.getLogger("events.sweeper")


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
        max_attempts: int = jobs.MAX_ATTEMPTS,
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
        self._requeue = client.register_script(jobs.lua("requeue"))
        self._summarise = client.register_script(jobs.lua("auth_summary"))
        self._settle = BudgetScripts.register(client).settle

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many jobs ended up in each outcome."""
        now = self.clock()
        # Jobs that started less than a grace period ago may not have renewed their lease yet.
        ids = [text(i) for i in self.client.zrangebyscore(keys.RUNNING_JOBS, "-inf", now - self.grace_s)]
        outcomes: dict[str, int] = {}
        if not ids:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keys.job_lease(job_id))
            pipe.hmget(keys.job(job_id), "attempt", "owner")
        replies = pipe.execute()
        for i, job_id in enumerate(ids):
            leased, (attempt, owner) = replies[2 * i], replies[2 * i + 1]
            if leased:
                continue
            attempt_no = int(attempt or 0)
            message = task_message(RUN_AGENT_TASK, [job_id, attempt_no + 1], self.queue, origin="sweeper")
            outcome = text(
                self._requeue(
                    keys=jobs.requeue_keys(job_id, self.queue),
                    args=[job_id, attempt_no, f"{now:.6f}", message, self.max_attempts,
                          self.job_ttl_s, self.stream_ttl_s],
                )
            )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome in ("failed", "cancelled") and owner is not None:  # ended for good: settle its hold now
                keys_, args = settle_call(text(owner), job_id, now)
                self._settle(keys=keys_, args=args)
            if outcome not in ("alive", "changed"):
                log.warning("job %s lost its worker on attempt %d: %s", job_id, attempt_no, outcome)
        return outcomes


    def sweep_holds(self, batch: int = 500) -> dict[str, int]:
        """Settle holds past their expiry whose job has ended or is gone; extend those of live jobs."""
        now = self.clock()
        members = [text(m) for m in self.client.zrangebyscore(keys.HOLDS_INDEX, "-inf", now, start=0, num=batch)]
        outcomes = {"settled": 0, "extended": 0}
        if not members:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.hget(keys.job(member.partition("\t")[2]), "status")
        for member, status in zip(members, pipe.execute(), strict=True):
            user, _, job_id = member.partition("\t")
            if status is not None and text(status) not in jobs.TERMINAL_STATUSES:
                self.client.zadd(keys.HOLDS_INDEX, {member: now + self.hold_ttl_s})
                outcomes["extended"] += 1
                continue
            keys_, args = settle_call(user, job_id, now)
            self._settle(keys=keys_, args=args)
            outcomes["settled"] += 1
        return outcomes

    def summarise_auth_failures(self) -> int:
        """Turn each finished window of failed authentications into audit records; returns how many were written."""
        now = self.clock()
        current = int(now // self.auth_window_s)
        written = 0
        for raw in self.client.zrangebyscore(keys.AUTH_FAILURE_WINDOWS, "-inf", f"({current}"):
            window = int(text(raw))
            written += int(self._summarise(
                keys=[keys.auth_failures(window), keys.AUTH_FAILURE_WINDOWS, keys.AUDIT_STREAM],
                args=[window, window * self.auth_window_s, self.auth_window_s, f"{now:.6f}", keys.AUDIT_STREAM_MAXLEN]))
        return written
