"""The sweeper: a running job whose lease lapsed (its worker died) runs again as the next attempt."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from events import jobs, keys
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.queue = queue
        self.grace_s = grace_s
        self.job_ttl_s = job_ttl_s
        self.stream_ttl_s = stream_ttl_s
        self.max_attempts = max_attempts
        self.clock = clock
        self._requeue = client.register_script(jobs.lua("requeue"))

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many jobs ended up in each outcome."""
        now = self.clock()
        # Jobs that started less than a grace period ago may not have renewed their lease yet.
        ids = [_text(i) for i in self.client.zrangebyscore(keys.RUNNING_JOBS, "-inf", now - self.grace_s)]
        outcomes: dict[str, int] = {}
        if not ids:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keys.job_lease(job_id))
            pipe.hget(keys.job(job_id), "attempt")
        replies = pipe.execute()
        for i, job_id in enumerate(ids):
            leased, attempt = replies[2 * i], replies[2 * i + 1]
            if leased:
                continue
            attempt_no = int(attempt or 0)
            message = task_message(RUN_AGENT_TASK, [job_id, attempt_no + 1], self.queue, origin="sweeper")
            outcome = _text(
                self._requeue(
                    keys=jobs.requeue_keys(job_id, self.queue),
                    args=[job_id, attempt_no, f"{now:.6f}", message, self.max_attempts,
                          self.job_ttl_s, self.stream_ttl_s],
                )
            )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome not in ("alive", "changed"):
                log.warning("job %s lost its worker on attempt %d: %s", job_id, attempt_no, outcome)
        return outcomes


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
