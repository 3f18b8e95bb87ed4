"""Celery task messages (protocol 2) in the form kombu's Redis transport keeps in a queue list.

The API and the sweeper enqueue by pushing this message in the same Redis transaction that writes
the job's state, so a job is never queued without its message, nor a message sent for a job that
was not saved. Pure: no redis, no celery import. A test checks it against Celery's own builder.

A message is made from its task, arguments and queue plus three ids (task id, origin, delivery tag), and the
same inputs always make the same text: a job records its message's ids, so the sweeper can make the exact
text again and look for it in the queue list (`LPOS`), or for its delivery tag in kombu's `unacked` hash.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

RUN_AGENT_TASK = "agentic.run_agent"


@dataclass(frozen=True)
class MessageIds:
    """What tells one message of a task apart from another with the same arguments."""

    task_id: str
    origin: str
    delivery_tag: str  # kombu's key for the message in its `unacked` hash while a worker holds it


class TaskMessage(str):
    """A message's JSON text (what is pushed onto the queue), which also knows the ids it was made with."""

    ids: MessageIds

    def __new__(cls, text: str, ids: MessageIds) -> TaskMessage:
        """The text `text`, made with `ids`."""
        made = super().__new__(cls, text)
        made.ids = ids
        return made


def message_ids(message: str) -> MessageIds:
    """The ids of a message made by `task_message` (read from the text if it is a plain string)."""
    if isinstance(message, TaskMessage):
        return message.ids
    parsed = json.loads(message)
    return MessageIds(parsed["headers"]["id"], parsed["headers"]["origin"], parsed["properties"]["delivery_tag"])


def redelivered(message: str) -> str:
    """The text kombu's Redis transport puts back on the queue when it restores `message` from `unacked` (a
    worker's warm shutdown, or a visibility timeout): both `redelivered` flags set, dumped by the same json."""
    parsed = json.loads(message)
    parsed["headers"]["redelivered"] = True
    parsed["properties"]["delivery_info"]["redelivered"] = True
    return json.dumps(parsed)


def task_message(
    task: str,
    args: list[Any],
    queue: str,
    *,
    task_id: str | None = None,
    origin: str = "api",
    delivery_tag: str | None = None,
) -> TaskMessage:
    """The JSON text to LPUSH onto `queue` so that a Celery worker runs `task(*args)`; ids left out are new."""
    task_id = task_id or str(uuid.uuid4())
    delivery_tag = delivery_tag or str(uuid.uuid4())
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
            "delivery_tag": delivery_tag,
        },
    }
    return TaskMessage(json.dumps(message), MessageIds(task_id, origin, delivery_tag))
