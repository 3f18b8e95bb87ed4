"""The one builder of usage events: what a model call (or usage tracked by hand) cost, as the ledger reads it.

Pure. The worker charges each call with one; POST /costs/track records outside usage with one.
"""

from __future__ import annotations

from typing import Any

from events.money.amounts import micros_to_usd


def usage_data(
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    cost_micros: int,
    price_source: str,
    user_id: str,
    session_id: str = "",
    agent: str = "",
    provider: str,
    estimated: bool = False,
    call: int = 0,
    query_hash: str = "",
) -> dict[str, Any]:
    """The data of one usage event (stream:usage, and the job's own `usage` events share the public part)."""
    return {
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached_input_tokens,
        "estimated": estimated,
        "call": call,
        "cost_micros": cost_micros,
        "cost_usd": micros_to_usd(cost_micros),
        "price_source": price_source,
        "user_id": user_id,
        "session_id": session_id,
        "agent": agent,
        "provider": provider,
        "query_hash": query_hash,
    }


PRIVATE = ("user_id", "session_id", "agent", "provider", "query_hash")  # left out of a job's own `usage` event


def public(data: dict[str, Any]) -> dict[str, Any]:
    """What a job's stream shows of a usage event."""
    return {k: v for k, v in data.items() if k not in PRIVATE}
