"""The ledger consumer: every usage event adds its tokens and cost to hourly buckets, exactly once.

Buckets are per user (`ledger:{user}:h:{YYYYMMDDHH}`) and for everyone (`ledger:all:h:…`), with all-time totals
beside them; their fields are named by events/money/ledger_codec.py. The stats, usage, forecast and
recommendations read these buckets.
"""

from __future__ import annotations

from typing import Any, Sequence

from events.envelope import Event
from events.money.ledger_codec import member_field, query_fields, total_field
from events.money.periods import hour_bucket
from events.process.consumer import Entry
from events.store import counter_scripts, keyspace
from events.store.counter_scripts import Increments
from events.store.scripts import Scripts

GROUP = "ledger"
DEDUPE_TTL_S = 7 * 24 * 3600
BUCKET_TTL_S = 400 * 24 * 3600
QUERIES_TTL_S = 30 * 24 * 3600


def _int(data: Any, name: str) -> int:
    try:
        return int(data.get(name) or 0)
    except (TypeError, ValueError):
        return 0


def increments(entry_id: str, event: Event) -> Increments:
    """The counter increments one usage event makes. Pure."""
    data = event.data
    user = str(data.get("user_id") or "unknown")
    model = str(data.get("model") or "unknown")
    agent = str(data.get("agent") or "")
    session = str(data.get("session_id") or "")
    figures = {
        "cost": _int(data, "cost_micros"),
        "in": _int(data, "input_tokens"),
        "out": _int(data, "output_tokens"),
        "cached": _int(data, "cached_input_tokens"),
        "calls": 1,
    }
    bucket = hour_bucket(event.ts)
    mine, everyone = keyspace.ledger_hour(user, bucket), keyspace.ledger_hour("all", bucket)
    ops: list[tuple[str, str, int]] = []
    for key in (mine, everyone, keyspace.ledger_total(user), keyspace.ledger_total("all")):
        ops += [(key, total_field(name), value) for name, value in figures.items()]
    ops += [
        (key, member_field("model", model, name), value) for key in (mine, everyone) for name, value in figures.items()
    ]
    if agent:
        ops += [
            (key, member_field("agent", agent, name), figures[name])
            for key in (mine, everyone)
            for name in ("cost", "calls")
        ]
    if session:
        ops += [(mine, member_field("session", session, name), figures[name]) for name in ("cost", "calls")]
    ops += [(everyone, member_field("user", user, name), value) for name, value in figures.items()]
    ttls = [(mine, BUCKET_TTL_S), (everyone, BUCKET_TTL_S)]
    query = str(data.get("query_hash") or "")
    if query:
        jobs, cost = query_fields(query)
        ops.append((keyspace.ledger_queries(user), cost, figures["cost"]))
        if _int(data, "call") == 0 and event.attempt <= 1:
            ops.append((keyspace.ledger_queries(user), jobs, 1))
        ttls.append((keyspace.ledger_queries(user), QUERIES_TTL_S))
    return Increments(entry_id, ops, ttls)


class Ledger:
    """Handler for the usage stream; effects and dedupe marks land together in one script."""

    def __init__(self, client: Any) -> None:
        self.scripts = Scripts(client)

    def __call__(self, entries: Sequence[Entry]) -> None:
        """Apply each usage event not applied before."""
        batch = [increments(entry_id, event) for entry_id, event in entries if event.type == "usage"]
        if batch:
            self.scripts.run(counter_scripts.apply_ledger(group=GROUP, batch=batch, dedupe_ttl_s=DEDUPE_TTL_S))
