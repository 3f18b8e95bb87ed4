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
from events.money import micros_to_usd

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
MAX_ATTEMPTS = 3

_LUA = Path(__file__).with_name("lua")


def lua(name: str, prelude: str = "_emit") -> str:
    """The source of one script, with a shared helper file (`_emit` or `_budget`) in front."""
    return (_LUA / f"{prelude}.lua").read_text() + (_LUA / f"{name}.lua").read_text()


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


def _json(value: str | None, default: Any) -> Any:
    if not value:
        return default
    try:
        return json.loads(value)
    except ValueError:
        return default


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def view(job: Mapping[str, str]) -> dict[str, Any]:
    """The job as the API shows it."""
    usage = _json(job.get("usage"), None)
    return {
        "id": job["id"],
        "status": job["status"],
        "agent_type": job.get("agent", ""),
        "model": job.get("model", ""),
        "query": job.get("query", ""),
        "session_id": job.get("session_id") or None,
        "metadata": _json(job.get("metadata"), {}),
        "result": job.get("result") or None,
        "error": _json(job.get("error"), None),
        "usage": usage,
        "cost_usd": micros_to_usd(int(job.get("cost_micros") or 0)),
        "hold_usd": micros_to_usd(int(job["hold_micros"])) if job.get("hold_micros") else None,
        "attempts": int(job.get("attempt") or 1),
        "provider": job.get("provider") or None,
        "cancel_requested": job.get("cancel") == "1",
        "created_at": _float(job.get("created_at")),
        "started_at": _float(job.get("started_at")),
        "finished_at": _float(job.get("finished_at")),
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
