"""Celery task messages (protocol 2) in the form kombu's Redis transport keeps in a queue list.

The API and the sweeper enqueue by pushing this message in the same Redis transaction that writes
the job's state, so a job is never queued without its message, nor a message sent for a job that
was not saved. Pure: no redis, no celery import. A test checks it against Celery's own builder.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

RUN_AGENT_TASK = "agentic.run_agent"


def task_message(task: str, args: list[Any], queue: str, *, task_id: str | None = None, origin: str = "api") -> str:
    """The JSON text to LPUSH onto `queue` so that a Celery worker runs `task(*args)`."""
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(tuple(args)),
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message)
