"""Budget holds and spend as typed script calls: hold, extend, charge, settle, spend.

A job's hold is reserved at submit against every scope with a budget (user, session, agent), all or nothing
(`hold`). Before each model call the worker extends it to cover that call's worst case against every budget that
applies then, one set after the submit included (`extend`); a call that does not fit never starts. Each call's
cost is charged to the hold once (`charge`), and at the end `settle` swaps the hold for the actual spend exactly
once. Every key of one user shares the hash tag {user}, so these scripts stay in one slot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any, Mapping, Sequence

from events.envelope import text
from events.money.periods import PERIOD_TTL_S, PERIODS, period_ids
from events.store import keyspace
from events.store.scripts import Call, Scripts, call

ALERTS_MAX_LEN = 100_000  # the alerts stream's cap, written in _budget.lua (tests/test_scripts.py checks both agree)


def hold_member(user_id: str, job_id: str) -> str:
    """A hold's member in the global index."""
    return f"{user_id}\t{job_id}"


def period_id_list(now: float) -> str:
    """The ids of the four periods at `now`, as a hold records them (JSON, in the order of PERIODS)."""
    return _period_id_json(int(now // 86400))


@lru_cache(maxsize=8)
def _period_id_json(day: int) -> str:
    ids = period_ids(day * 86400)
    return json.dumps([ids[p] for p in PERIODS])


@lru_cache(maxsize=64)
def _period_id_names(ids: str) -> tuple[str, ...]:
    return tuple(json.loads(ids))


def period_keys(user_id: str, ids: str) -> list[str]:
    """The user's four period keys named by a hold's recorded period ids."""
    return [keyspace.budget_period(user_id, period) for period in _period_id_names(ids)]


PERIOD_TTLS = json.dumps([PERIOD_TTL_S[p] for p in PERIODS])


@dataclass(frozen=True)
class Rejection:
    """Why a reservation did not fit: the budget's scope, what it has left, its limit and period, and how much of
    the period's money is spent and how much only held by running jobs."""

    scope: str
    remaining_micros: int
    limit_micros: int
    period: str
    spent_micros: int = 0
    held_micros: int = 0


def _rejection(reply: Any) -> Rejection:
    spent, held = (int(text(reply[5])), int(text(reply[6]))) if len(reply) > 6 else (0, 0)
    return Rejection(text(reply[1]), int(text(reply[2])), int(text(reply[3])), text(reply[4]), spent, held)


class Held(StrEnum):
    """What a reservation did."""

    HELD = "held"
    EXISTS = "exists"  # the job has a hold already
    REJECTED = "rejected"
    NO_HOLD = "nohold"  # nothing to extend: the hold was settled or swept
    MOVED = "moved"  # the period keys given are not the hold's


@dataclass(frozen=True)
class HoldReply:
    """A reservation's outcome; the hold's amount after an extension; why it was rejected."""

    outcome: Held
    amount_micros: int = 0
    rejection: Rejection | None = None


def _held(reply: Any) -> HoldReply:
    outcome = Held(text(reply[0]))
    if outcome is Held.REJECTED:
        return HoldReply(outcome, rejection=_rejection(reply))
    return HoldReply(outcome, int(text(reply[1])) if outcome is Held.HELD and len(reply) > 1 else 0)


def hold(
    *, user_id: str, job_id: str, amount_micros: int, scopes: Sequence[str], now: float, expires_at: float
) -> Call[HoldReply]:
    """Reserve `amount_micros` for a job against every scope's budget, all or nothing."""
    ids = period_id_list(now)
    return call(
        "hold",
        [
            keyspace.budget_config(user_id),
            *period_keys(user_id, ids),
            keyspace.budget_hold(user_id, job_id),
            keyspace.HOLDS_INDEX,
        ],
        [
            amount_micros,
            f"{expires_at:.6f}",
            hold_member(user_id, job_id),
            job_id,
            user_id,
            PERIOD_TTLS,
            ids,
            json.dumps(list(scopes)),
        ],
        _held,
    )


def extend(*, user_id: str, job_id: str, needed_micros: int, period_ids: str) -> Call[HoldReply]:
    """Grow a job's hold to `needed_micros` against every budget that applies now (`period_ids` as the hold
    recorded them)."""
    return call(
        "extend",
        [keyspace.budget_config(user_id), keyspace.budget_hold(user_id, job_id), *period_keys(user_id, period_ids)],
        [needed_micros, period_ids, PERIOD_TTLS],
        _held,
    )


def charge(
    *,
    user_id: str,
    job_id: str,
    attempt: int,
    charge_id: str,
    cost_micros: int,
    now: float,
    usage: Mapping[str, Any],
) -> Call[int]:
    """Record one call's cost on the hold, the job and the usage stream, once per `charge_id`; returns the
    hold's spend so far (-1 without a hold)."""
    return _charge(user_id, job_id, keyspace.job(job_id), attempt, charge_id, cost_micros, now, usage)


def charge_document(
    *, user_id: str, doc_id: str, charge_id: str, cost_micros: int, now: float, usage: Mapping[str, Any]
) -> Call[int]:
    """`charge` for a document's embedding: its hold is under the document's id, its charges counted in the
    document's charges hash (events/documents/billing.py)."""
    return _charge(user_id, doc_id, keyspace.doc_charges(user_id, doc_id), 1, charge_id, cost_micros, now, usage)


def _charge(
    user_id: str,
    hold_id: str,
    record_key: str,
    attempt: int,
    charge_id: str,
    cost_micros: int,
    now: float,
    usage: Mapping[str, Any],
) -> Call[int]:
    return call(
        "charge",
        [keyspace.budget_hold(user_id, hold_id), record_key, keyspace.USAGE_STREAM],
        [cost_micros, charge_id, hold_id, f"{now:.6f}", attempt, json.dumps(usage)],
        lambda r: int(r),
    )


class Settled(StrEnum):
    """What settling did."""

    SETTLED = "settled"
    NONE = "none"  # there was no hold (settled before, or never made)
    MOVED = "moved"  # the period ids given are not the hold's: read them again


@dataclass(frozen=True)
class Alert:
    """A budget's soft alert, raised once per period when spend crosses its percentage."""

    scope: str
    spent_micros: int
    limit_micros: int


@dataclass(frozen=True)
class SettleReply:
    """Settling's outcome; the hold's spend and amount; the alerts it raised (or, for MOVED, the hold's ids)."""

    outcome: Settled
    spent_micros: int = 0
    amount_micros: int = 0
    alerts: list[Alert] = field(default_factory=list)
    period_ids: str = ""


def _alerts(raw: Any) -> list[Alert]:
    return [Alert(text(scope), int(text(spent)), int(text(limit))) for scope, spent, limit in raw or []]


def _settled(reply: Any) -> SettleReply:
    outcome = Settled(text(reply[0]))
    if outcome is Settled.MOVED:
        return SettleReply(outcome, period_ids=text(reply[1]))
    if outcome is Settled.NONE:
        return SettleReply(outcome)
    return SettleReply(outcome, int(text(reply[1])), int(text(reply[2])), _alerts(reply[3]))


def settle(*, user_id: str, job_id: str, now: float, period_ids: str | None = None) -> Call[SettleReply]:
    """Swap a job's hold for its spend, once.

    `period_ids` are the hold's, as it recorded them; without them the periods of `now` are tried, and a hold made
    in other periods answers MOVED with its own ids, to settle again with.
    """
    period_ids = period_ids or period_id_list(now)
    return call(
        "settle",
        [
            keyspace.budget_hold(user_id, job_id),
            keyspace.HOLDS_INDEX,
            keyspace.budget_config(user_id),
            keyspace.ALERTS_STREAM,
            *period_keys(user_id, period_ids),
        ],
        [hold_member(user_id, job_id), f"{now:.6f}", period_ids, PERIOD_TTLS],
        _settled,
    )


def spend(
    *, user_id: str, cost_micros: int, scopes: Sequence[str], now: float, usage: Mapping[str, Any]
) -> Call[list[Alert]]:
    """Record spend that had no hold (usage tracked by hand) against every scope's budget, with its usage event."""
    return call(
        "spend",
        [
            keyspace.budget_config(user_id),
            *period_keys(user_id, period_id_list(now)),
            keyspace.ALERTS_STREAM,
            keyspace.USAGE_STREAM,
        ],
        [cost_micros, user_id, f"{now:.6f}", PERIOD_TTLS, json.dumps(list(scopes)), json.dumps(usage)],
        _alerts,
    )


def settle_hold(scripts: Scripts, *, user_id: str, job_id: str, now: float) -> SettleReply:
    """Settle a job's hold with a blocking client, whatever periods it was made in."""
    reply = scripts.run(settle(user_id=user_id, job_id=job_id, now=now))
    if reply.outcome is Settled.MOVED:
        reply = scripts.run(settle(user_id=user_id, job_id=job_id, now=now, period_ids=reply.period_ids))
    return reply
