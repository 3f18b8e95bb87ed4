"""A job's record: its statuses, the fields a new job is saved with, and the view the API shows. Pure.

The transitions between statuses are Lua scripts (events/store/job_scripts.py).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from events.envelope import text_map
from events.money.amounts import micros_to_usd
from events.store.fields import float_field, int_field, json_field

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
MAX_ATTEMPTS = 3

decode = text_map  # a job hash from Redis as str → str


def view(job: Mapping[str, str]) -> dict[str, Any]:
    """The job as the API shows it; a damaged field shows as empty rather than breaking the job or a list."""
    hold = int_field(job.get("hold_micros"), -1)
    return {
        "id": job["id"],
        "status": job.get("status", "unknown"),
        "agent_type": job.get("agent", ""),
        "model": job.get("model", ""),
        "query": job.get("query", ""),
        "session_id": job.get("session_id") or None,
        "metadata": json_field(job.get("metadata"), {}),
        "result": job.get("result") or None,
        "error": json_field(job.get("error"), None),
        "usage": json_field(job.get("usage"), None),
        "cost_usd": micros_to_usd(int_field(job.get("cost_micros"))),
        "hold_usd": micros_to_usd(hold) if hold >= 0 else None,
        "attempts": int_field(job.get("attempt"), 1),
        "provider": job.get("provider") or None,
        "cancel_requested": job.get("cancel") == "1",
        "cached": job.get("cached") == "1",  # answered from the response cache or an identical job's run
        "cache_source": job.get("cache_source") or None,
        "created_at": float_field(job.get("created_at")),
        "started_at": float_field(job.get("started_at")),
        "finished_at": float_field(job.get("finished_at")),
    }


def job_record(
    *,
    job_id: str,
    owner: str,
    agent: str,
    model: str,
    query: str,
    max_tokens: int,
    now: float,
    session_id: str = "",
    metadata: Mapping[str, Any] | None = None,
    attachments: list[Any] | None = None,
    provider: str = "",
) -> dict[str, str]:
    """The fields of a new, queued job."""
    return {
        "id": job_id,
        "owner": owner,
        "agent": agent,
        "model": model,
        "query": query,
        "max_tokens": str(max_tokens),
        "session_id": session_id,
        "metadata": json.dumps(metadata or {}),
        "attachments": json.dumps(attachments or []),
        "status": "queued",
        "attempt": "1",
        "cancel": "0",
        "provider": provider,
        "created_at": f"{now:.6f}",
    }
