"""The ledger consumer: every usage event adds its tokens and cost to hourly buckets, exactly once.

Buckets are per user (`ledger:{user}:h:{YYYYMMDDHH}`) and for everyone (`ledger:all:h:…`), with fields for
the totals and per model (m:), agent (a:), session (s:) and, in the 'all' buckets, user (u:). The stats,
usage, forecast and recommendations read these buckets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from events import keys
from events.consumer import Entry
from events.periods import hour_bucket

GROUP = "ledger"
DEDUPE_TTL_S = 7 * 24 * 3600
BUCKET_TTL_S = 400 * 24 * 3600
QUERIES_TTL_S = 30 * 24 * 3600
_APPLY_ONCE = (Path(__file__).with_name("lua") / "apply_once.lua").read_text()


def _int(data: Any, name: str) -> int:
    try:
        return int(data.get(name) or 0)
    except (TypeError, ValueError):
        return 0


def ledger_ops(entry_id: str, event: Any) -> dict[str, Any]:
    """The counter increments one usage event makes, with its dedupe key. Pure."""
    data = event.data
    user = str(data.get("user_id") or "unknown")
    model = str(data.get("model") or "unknown")
    agent = str(data.get("agent") or "")
    session = str(data.get("session_id") or "")
    cost, tin, tout = _int(data, "cost_micros"), _int(data, "input_tokens"), _int(data, "output_tokens")
    cached = _int(data, "cached_input_tokens")
    bucket = hour_bucket(event.ts)
    mine, everyone = keys.ledger_hour(user, bucket), keys.ledger_hour("all", bucket)
    figures = {"cost": cost, "in": tin, "out": tout, "cached": cached, "calls": 1}
    ops: list[list[Any]] = []
    for key in (mine, everyone, keys.ledger_total(user), keys.ledger_total("all")):
        ops += [[key, name, value] for name, value in figures.items()]
    for prefix in (f"m:{model}:",):
        ops += [[key, prefix + name, value] for key in (mine, everyone) for name, value in figures.items()]
    if agent:
        ops += [[key, f"a:{agent}:{name}", figures[name]] for key in (mine, everyone) for name in ("cost", "calls")]
    if session:
        ops += [[mine, f"s:{session}:{name}", figures[name]] for name in ("cost", "calls")]
    ops += [[everyone, f"u:{user}:{name}", value] for name, value in figures.items()]
    ttl = [[mine, BUCKET_TTL_S], [everyone, BUCKET_TTL_S]]
    query = str(data.get("query_hash") or "")
    if query:
        ops.append([keys.ledger_queries(user), f"c:{query}", cost])
        if _int(data, "call") == 0 and event.attempt <= 1:
            ops.append([keys.ledger_queries(user), f"n:{query}", 1])
        ttl.append([keys.ledger_queries(user), QUERIES_TTL_S])
    return {"d": keys.dedupe(GROUP, entry_id), "ops": ops, "ttl": ttl}


class Ledger:
    """Handler for the usage stream; effects and dedupe marks land together in one script."""

    def __init__(self, client: Any) -> None:
        self._apply = client.register_script(_APPLY_ONCE)

    def __call__(self, entries: Sequence[Entry]) -> None:
        """Apply each usage event not applied before."""
        batch = [ledger_ops(entry_id, event) for entry_id, event in entries if event.type == "usage"]
        if batch:
            self._apply(keys=[], args=[DEDUPE_TTL_S, json.dumps(batch)])
