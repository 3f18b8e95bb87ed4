"""Admitting a job against its owner's budgets: the hold it takes at submit, and the 402 that says what blocks it.

A job holds only its first model call's worst case at submit (events/money/budgets.py: `first_call_micros`); the
worker extends the hold before each further call by that call's own worst case (workers/spending.py). A refusal
tells apart the two reasons a budget has no room: money spent in the period (it comes back when the period
resets), and money only held by the user's running jobs (it comes back as they end, most of it unspent).
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime
from typing import Any

from events.envelope import text
from events.errors import DomainError
from events.money.amounts import micros_to_usd
from events.money.periods import period_bounds
from events.store import keyspace
from events.store.budget_scripts import Rejection

RECENT_JOBS = 50  # the user's newest jobs read to estimate when running ones end
TYPICAL_RUN_S = 10.0  # a run's length when none of the recent jobs has finished
MAX_RETRY_AFTER_S = 300


class BudgetExceededError(DomainError):
    """Raised when a job's first call's worst case does not fit what a budget has free."""

    status = 402
    code = "budget_exceeded"

    def __init__(self, no: Rejection, hold: int, *, now: float, running_eta_s: int | None = None) -> None:
        free = max(no.remaining_micros, 0)
        if no.limit_micros < hold:
            blocked_by = "limit"  # no period and no running job will ever make room
        elif no.held_micros > 0 and no.remaining_micros + no.held_micros >= hold:
            blocked_by = "running_jobs"
        else:
            blocked_by = "spent"
        figures: dict[str, Any] = {
            "scope": no.scope,
            "period": no.period,
            "limit_usd": micros_to_usd(no.limit_micros),
            "spent_usd": micros_to_usd(no.spent_micros),
            "held_usd": micros_to_usd(no.held_micros),
            "remaining_usd": micros_to_usd(free),
            "hold_usd": micros_to_usd(hold),
            "blocked_by": blocked_by,
            "resets_at": None,
        }
        state = (
            f"The {no.period} budget for scope '{no.scope}' has ${micros_to_usd(free)} free of "
            f"${micros_to_usd(no.limit_micros)}: ${micros_to_usd(no.spent_micros)} is spent and "
            f"${micros_to_usd(no.held_micros)} is held by your running jobs. This job needs "
            f"${micros_to_usd(hold)} to start (its first model call's worst case)."
        )
        headers = {}
        if blocked_by == "running_jobs":
            wait = running_eta_s or 1
            headers["Retry-After"] = str(wait)
            advice = (
                " The running jobs' holds are what blocks it: they return what they do not spend as they end; retry "
                f"in about {wait} s."
            )
        elif blocked_by == "limit":
            advice = (
                " Its first call alone could cost more than the whole budget: lower max_tokens, shorten the query, use "
                "a cheaper model, or ask an admin to raise the budget."
            )
        elif no.period == "total":
            advice = " A total budget never resets: lower max_tokens, use a cheaper model, or ask an admin to raise it."
        else:
            _, end = period_bounds(no.period, now)
            resets = datetime(end.year, end.month, end.day, tzinfo=UTC)
            figures["resets_at"] = resets.isoformat().replace("+00:00", "Z")
            headers["Retry-After"] = str(max(1, math.ceil(resets.timestamp() - now)))
            advice = (
                f" The period's money is spent; it resets at {figures['resets_at']}. Until then lower max_tokens, "
                "use a cheaper model, or ask an admin to raise the budget."
            )
        super().__init__(state + advice, figures=figures, headers=headers)
        self.rejection, self.hold = no, hold


async def running_eta_s(client: Any, owner: str, now: float) -> int:
    """Seconds until the first of `owner`'s running jobs is likely to end: the median run of their recently
    finished jobs less how long each running one has run, at least 1 s, at most 5 minutes."""
    ids = [text(i) for i in await client.zrevrange(keyspace.user_jobs(owner), 0, RECENT_JOBS - 1)]
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keyspace.job(job_id), "status", "started_at", "finished_at")
    runs, started = [], []
    for status, began, ended in await pipe.execute():
        if began is None:
            continue
        if ended is not None:
            runs.append(float(text(ended)) - float(text(began)))
        elif status is not None and text(status) == "running":
            started.append(float(text(began)))
    typical = statistics.median(runs) if runs else TYPICAL_RUN_S
    soonest = min((typical - (now - began) for began in started), default=typical)
    return int(min(max(math.ceil(soonest), 1), MAX_RETRY_AFTER_S))
