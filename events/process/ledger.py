"""The ledger consumer: every usage event adds its tokens and cost to hourly buckets, exactly once.

Buckets are per user (`ledger:{user}:h:{YYYYMMDDHH}`) and for everyone (`ledger:all:h:…`), with all-time totals
beside them; their fields are named by events/money/ledger_codec.py. The stats, usage, forecast and
recommendations read these buckets.

A batch is summed here, so each counter it touches grows once whatever the number of events, and one script
call applies it: it checks first that none of the batch's entries was applied before (a redelivery), and only
then adds the sums and marks the entries, in one step. When some were, nothing changes; the batch is summed
again without them and applied (the rare path: a consumer killed between applying and acking).
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Sequence

import orjson

from events.envelope import EnvelopeError, Event
from events.money.ledger_codec import FIGURES, TOTAL_FIELDS, member_fields, query_fields
from events.money.periods import hour_bucket
from events.store import counter_scripts, keyspace
from events.store.counter_scripts import LedgerBatch
from events.store.scripts import Scripts

GROUP = "ledger"
# Entries per read (main.py): the larger, the more events share each counter's write; one script call then takes a
# few ms of Redis. Keep it under 8,000, the most ids ledger_apply.lua can unpack into one command.
BATCH = 1000
SEEN_TTL_S = 7 * 24 * 3600  # marks outlive the longest a pending entry is expected to wait for redelivery
BUCKET_TTL_S = 400 * 24 * 3600
QUERIES_TTL_S = 30 * 24 * 3600

ALL = tuple(FIGURES)  # a usage event's figures, in the order `profile` gives them: cost, in, out, cached, calls
SOME = ("cost", "calls")  # the figures kept per agent and per session
Who = tuple[int, str, str, str, str, str, bool]  # hour (since the epoch), user, model, agent, session, query, run
Usage = tuple[Who, list[int]]  # what one usage event counts for, and its figures
_FIELDS: dict[type, tuple[Any, ...]] = {
    bytes: (b"type", b"ts", b"attempt", b"data", b"usage"),
    str: ("type", "ts", "attempt", "data", "usage"),
}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


@functools.lru_cache(maxsize=256)
def _hour(hour: int) -> str:
    return hour_bucket(hour * 3600)


# The same users, models and hours come back batch after batch: name each once.
_fields = functools.lru_cache(maxsize=8192)(member_fields)
_bucket = functools.lru_cache(maxsize=8192)(keyspace.ledger_hour)


def profile(event: Event) -> Usage:
    """Who and what a usage event counts for, and its figures (in the order of ALL). Pure."""
    return _usage(event.data, event.ts, event.attempt)


def read_usage(raw: Mapping[Any, Any]) -> Usage | None:
    """`profile` of a usage stream entry read straight from its fields (None for another type): the consumer
    group's decoder for the ledger, which needs four of an event's fields; raises EnvelopeError as
    Event.from_fields does. Pure."""
    etype, ts, attempt, data, usage = _FIELDS[type(next(iter(raw), ""))]
    found = raw.get(etype)
    if found is None:
        raise EnvelopeError("The entry has no 'type' field.")
    if found != usage:
        return None
    try:
        decoded = orjson.loads(raw.get(data) or b"{}")
        when, tries = float(raw.get(ts) or 0.0), int(raw.get(attempt) or 0)
    except ValueError as ex:
        raise EnvelopeError(f"The entry has a malformed field: {ex}.") from ex
    return _usage(decoded if isinstance(decoded, dict) else {}, when, tries)


def _usage(data: Mapping[str, Any], ts: float, attempt: int) -> Usage:
    query = str(data.get("query_hash") or "")
    who = (
        int(ts // 3600),
        str(data.get("user_id") or "unknown"),
        str(data.get("model") or "unknown"),
        str(data.get("agent") or ""),
        str(data.get("session_id") or ""),
        query,
        bool(query) and _int(data.get("call")) == 0 and attempt <= 1,  # a job's first call counts its run
    )
    figures = [
        _int(data.get("cost_micros")),
        _int(data.get("input_tokens")),
        _int(data.get("output_tokens")),
        _int(data.get("cached_input_tokens")),
        1,
    ]
    return who, figures


def _sum_into(sums: dict[Any, list[int]], key: Any, figures: Sequence[int]) -> None:
    found = sums.get(key)
    if found is None:
        sums[key] = list(figures)
    else:
        for i, value in enumerate(figures):
            found[i] += value


def counters(events: Iterable[Event]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """What usage events add to the ledger: `tally` of their profiles. Pure."""
    return tally(map(profile, events))


def tally(usages: Iterable[Usage]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """What usage events (their profiles) add to the ledger, summed per counter (per hash, field -> amount), and
    the TTL of the hashes that expire. Pure.

    Figures are summed from the finest grouping to the coarsest (a user's model and agent in an hour, then
    everyone's, then all time), so each counter is named and added once per batch, not once per event. A field
    that would grow by 0 is left out (it reads as 0), but in the all-time totals, which are shown as they are.
    """
    by_user: dict[tuple[int, str, str, str], list[int]] = {}  # hour, user, model, agent
    by_session: dict[tuple[int, str, str], list[int]] = {}  # hour, user, session: cost, calls
    by_query: dict[tuple[str, str], list[int]] = {}  # user, query: cost, runs
    for (hour, user, model, agent, session, query, run), figures in usages:
        _sum_into(by_user, (hour, user, model, agent), figures)
        if session:
            _sum_into(by_session, (hour, user, session), (figures[0], 1))
        if query:
            _sum_into(by_query, (user, query), (figures[0], 1 if run else 0))
    by_hour: dict[tuple[int, str, str], list[int]] = {}  # hour, model, agent: everyone's
    by_owner: dict[str, list[int]] = {}  # user: all time
    everything = [0] * len(ALL)
    for (hour, user, model, agent), figures in by_user.items():
        _sum_into(by_hour, (hour, model, agent), figures)
        _sum_into(by_owner, user, figures)
        for i, value in enumerate(figures):
            everything[i] += value

    out: dict[str, dict[str, int]] = {}
    ttls: dict[str, int] = {}

    def add(key: str, fields: Sequence[str], values: Sequence[int], *, zeros: bool = False) -> None:
        row = out.setdefault(key, {})
        for field, value in zip(fields, values, strict=True):
            if value or zeros:
                row[field] = row.get(field, 0) + value

    for (hour, user, model, agent), figures in by_user.items():
        mine = _bucket(user, _hour(hour))
        add(mine, TOTAL_FIELDS, figures)
        add(mine, _fields("model", model, ALL), figures)
        if agent:
            add(mine, _fields("agent", agent, SOME), (figures[0], figures[4]))
        add(_bucket("all", _hour(hour)), _fields("user", user, ALL), figures)
        ttls[mine] = BUCKET_TTL_S
    for (hour, user, session), figures in by_session.items():
        add(_bucket(user, _hour(hour)), _fields("session", session, SOME), figures)
    for (hour, model, agent), figures in by_hour.items():
        everyone = _bucket("all", _hour(hour))
        add(everyone, TOTAL_FIELDS, figures)
        add(everyone, _fields("model", model, ALL), figures)
        if agent:
            add(everyone, _fields("agent", agent, SOME), (figures[0], figures[4]))
        ttls[everyone] = BUCKET_TTL_S
    for user, figures in by_owner.items():
        add(keyspace.ledger_total(user), TOTAL_FIELDS, figures, zeros=True)
    add(keyspace.ledger_total("all"), TOTAL_FIELDS, everything, zeros=True)
    for (user, query), (cost, runs) in by_query.items():
        queries = keyspace.ledger_queries(user)
        jobs_field, cost_field = query_fields(query)
        add(queries, (cost_field, jobs_field), (cost, runs))
        ttls[queries] = QUERIES_TTL_S
    return out, ttls


def seen_sets(entry_ids: Iterable[str]) -> dict[str, list[str]]:
    """Stream entry ids ('{ms}-{seq}') by the mark set that records them: one per hour they were added in. Pure."""
    by_hour: dict[int, list[str]] = {}
    for entry_id in entry_ids:
        hour = int(entry_id.partition("-")[0]) // 3_600_000
        found = by_hour.get(hour)
        if found is None:
            by_hour[hour] = [entry_id]
        else:
            found.append(entry_id)
    return {keyspace.ledger_seen(_hour(hour)): ids for hour, ids in by_hour.items()}


class Ledger:
    """Handler for the usage stream; a batch's counters and its marks land together in one script.

    Its consumer group reads each entry with `decode` (read_usage); `apply_events` takes decoded events."""

    decode = staticmethod(read_usage)

    def __init__(self, client: Any) -> None:
        self.scripts = Scripts(client)

    def apply_events(self, entries: Sequence[tuple[str, Event]]) -> None:
        """Apply each usage event not applied before."""
        self([(entry_id, profile(event) if event.type == "usage" else None) for entry_id, event in entries])

    def __call__(self, entries: Sequence[tuple[str, Usage | None]]) -> None:
        """Apply each usage entry (read by `decode`) not applied before."""
        usage = {entry_id: found for entry_id, found in entries if found is not None}
        while usage:
            summed, ttls = tally(usage.values())
            batch = LedgerBatch(seen=seen_sets(usage), counters=summed, ttls=ttls)
            applied_before = self.scripts.run(counter_scripts.apply_ledger(batch=batch, seen_ttl_s=SEEN_TTL_S))
            if not applied_before:
                return
            usage = {entry_id: found for entry_id, found in usage.items() if entry_id not in applied_before}
