"""The Celery task message the API writes straight to the broker (events/store/taskmsg.py): the same headers,
body and properties Celery itself builds, and what kombu's Redis transport needs. Pure: no Redis."""

from __future__ import annotations

import base64
import json

import celery

from events.store.taskmsg import RUN_AGENT_TASK, message_ids, redelivered, task_message

SAME_HEADERS = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "kwargsrepr",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
]


def test_task_message_matches_what_celery_itself_builds() -> None:
    args = ["job-1", 2]
    ours = json.loads(task_message(RUN_AGENT_TASK, args, "agents", task_id="tid-1", origin="sweeper"))
    theirs = celery.Celery(set_as_current=False).amqp.as_task_v2("tid-1", RUN_AGENT_TASK, args=args)
    # origin, ignore_result and argsrepr are informational (and intentionally differ); every other header matches.
    assert set(ours["headers"]) == set(theirs.headers)
    assert {k: ours["headers"][k] for k in SAME_HEADERS} == {k: theirs.headers[k] for k in SAME_HEADERS}
    assert ours["headers"]["origin"] == "sweeper"
    body = json.loads(base64.b64decode(ours["body"]))
    assert body == json.loads(json.dumps(theirs.body))
    assert body[0] == args
    for name, value in theirs.properties.items():
        assert ours["properties"][name] == value


def test_task_message_carries_what_the_redis_transport_needs() -> None:
    message = json.loads(task_message(RUN_AGENT_TASK, ["j", 1], "q-test"))
    props = message["properties"]
    assert props["delivery_info"]["routing_key"] == "q-test"
    assert props["body_encoding"] == "base64"
    assert props["priority"] == 0
    assert props["delivery_tag"]
    assert (message["content-type"], message["content-encoding"]) == ("application/json", "utf-8")
    other = json.loads(task_message(RUN_AGENT_TASK, ["j", 1], "q-test"))
    assert other["headers"]["id"] != message["headers"]["id"]
    assert other["properties"]["delivery_tag"] != props["delivery_tag"]


def test_the_same_ids_make_the_same_text_and_a_message_knows_its_ids() -> None:
    message = task_message(RUN_AGENT_TASK, ["j", 2], "q-test", origin="sweeper")
    ids = message.ids
    assert task_message(RUN_AGENT_TASK, ["j", 2], "q-test", **vars(ids)) == message
    assert message_ids(str(message)) == message_ids(message) == ids  # read from the text, or known
    parsed = json.loads(message)
    assert (ids.task_id, ids.origin) == (parsed["headers"]["id"], "sweeper")
    assert ids.delivery_tag == parsed["properties"]["delivery_tag"]
    again = json.loads(redelivered(message))
    assert again["headers"]["redelivered"] is again["properties"]["delivery_info"]["redelivered"] is True
    assert {**again, "headers": parsed["headers"], "properties": parsed["properties"]} == parsed
