"""A job's state in Redis: its record, its status transitions (Lua scripts), and its public view.

Every transition that touches more than one key (start, heartbeat, finish, cancel, requeue) is one
Lua script, so the job hash, its event stream, its lease and the queue never disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from events import keys
from events.envelope import text_map
from events.fields import float_field, int_field, json_field
from events.money import micros_to_usd

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
MAX_ATTEMPTS = 3

_LUA = Path(__file__).with_name("lua")


def lua(name: str, *helpers: str) -> str:
    """The source of one script with the shared helper files in front (`_emit` always, then `helpers`)."""
    return "".join((_LUA / f"{part}.lua").read_text() for part in ("_emit", *helpers, name))


SCRIPT_NAMES = ("submit", "start", "heartbeat", "finish", "cancel", "requeue")


@dataclass
class JobScripts:
    """The job scripts registered on one client (sync or asyncio); each loads once, then runs by EVALSHA."""

    submit: Any
    start: Any
    heartbeat: Any
    finish: Any
    cancel: Any
    requeue: Any

    @classmethod
    def register(cls, client: Any) -> JobScripts:
        """Register every job script on `client`."""
        return cls(**{name: client.register_script(lua(name)) for name in SCRIPT_NAMES})



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


def start_keys(job_id: str) -> list[str]:
    """KEYS for the start and finish scripts."""
    return [keys.job(job_id), keys.job_lease(job_id), keys.job_stream(job_id), keys.RUNNING_JOBS, keys.LIFECYCLE_STREAM]


def cancel_keys(job_id: str) -> list[str]:
    """KEYS for the cancel script."""
    return [keys.job(job_id), keys.job_stream(job_id), keys.LIFECYCLE_STREAM]


def requeue_keys(job_id: str, queue: str) -> list[str]:
    """KEYS for the requeue script."""
    return [*start_keys(job_id), queue]
