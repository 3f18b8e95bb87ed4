"""A document whose ingest message is lost on its way to a worker is sent again by the events process's sweeper
and becomes ready, and a document already ready is never sent again.

One stack (redis-server, the events process with a 1 s bound on queued work, the API) serves the module; each
test starts the worker it needs, so a message stays in the queue list until then.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import redis

from events.documents.records import INGEST_TASK
from events.process.sweeper import Sweeper
from events.store import keyspace
from events.store.taskmsg import task_message
from tests.conftest import create_user
from tests.stack import RedisServer, Stack, wait_for

pytestmark = pytest.mark.slow
BOUND_S = 1.0  # QUEUED_RECHECK_S of this module's events process
TEA = "Green tea is brewed with water at about 80 degrees Celsius for two minutes.\n\n"


@pytest.fixture(scope="module")
def stack(logdir: Path) -> Iterator[tuple[Stack, RedisServer, redis.Redis]]:
    server = RedisServer(logdir).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    stack = Stack(server.url, logdir, QUEUED_RECHECK_S=str(BOUND_S))
    stack.events()
    stack.api()
    yield stack, server, client
    stack.stop()
    client.close()
    server.stop()


@pytest.fixture
def api(stack: tuple[Stack, RedisServer, redis.Redis]) -> Iterator[httpx.Client]:
    running, server, _ = stack
    _, key = create_user(server.url)
    with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client


def upload(api: httpx.Client) -> dict[str, Any]:
    resp = api.post("/api/v1/documents", files={"file": ("tea.txt", TEA * 20, "text/plain")})
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def message_of(r: redis.Redis, owner: str, doc_id: str) -> str:
    """The exact text of the document's current ingest message, made again from the ids its record keeps."""
    task_id, origin, tag = (str(f) for f in r.hmget(keyspace.doc(owner, doc_id), "msg_id", "msg_origin", "msg_tag"))
    return task_message(INGEST_TASK, [owner, doc_id], "agents", task_id=task_id, origin=origin, delivery_tag=tag)


def status(api: httpx.Client, doc_id: str) -> str:
    return str(api.get(f"/api/v1/documents/{doc_id}").json()["status"])


def test_a_document_whose_ingest_message_was_lost_is_sent_again_and_becomes_ready(stack, api: httpx.Client) -> None:
    running, _, r = stack
    doc_id = upload(api)["id"]
    owner = r.hget(keyspace.DOC_OWNERS, doc_id)
    member = keyspace.queued_doc(owner, doc_id)
    assert r.zscore(keyspace.QUEUED_DOCS, member) is not None
    assert r.lrem("agents", 0, message_of(r, owner, doc_id)) == 1  # lost before any worker took it

    wait_for(
        lambda: r.hget(keyspace.doc(owner, doc_id), "msg_origin") == "sweeper",
        timeout=30,
        what="the sweeper to send the ingest message again",
    )
    assert r.lrange("agents", 0, -1) == [message_of(r, owner, doc_id)]  # one new message, nothing else
    assert status(api, doc_id) == "processing"

    worker = running.worker(concurrency=1)
    try:
        wait_for(lambda: status(api, doc_id) == "ready", timeout=60, what="the document to be ingested")
        assert r.zscore(keyspace.QUEUED_DOCS, member) is None
    finally:
        worker.stop()
    assert r.llen("agents") == 0


def test_a_document_already_ready_is_not_sent_again(stack, api: httpx.Client) -> None:
    running, _, r = stack
    worker = running.worker(concurrency=1)
    try:
        doc_id = upload(api)["id"]
        wait_for(lambda: status(api, doc_id) == "ready", timeout=60, what="the document to be ingested")
    finally:
        worker.stop()
    owner = r.hget(keyspace.DOC_OWNERS, doc_id)
    member = keyspace.queued_doc(owner, doc_id)
    sent = r.hmget(keyspace.doc(owner, doc_id), "msg_id", "msg_tag")
    # A stale entry, as if its ingest ended without leaving the index: the sweeper drops it, sending nothing.
    r.zadd(keyspace.QUEUED_DOCS, {member: time.time() - 60})
    wait_for(lambda: r.zscore(keyspace.QUEUED_DOCS, member) is None, timeout=30, what="the sweeper to drop it")
    assert r.llen("agents") == 0 and r.hlen(keyspace.KOMBU_UNACKED) == 0
    assert r.hmget(keyspace.doc(owner, doc_id), "msg_id", "msg_tag") == sent
    assert status(api, doc_id) == "ready"


def test_a_message_still_waiting_in_the_queue_is_left_alone(stack) -> None:
    _, server, _ = stack
    url = server.url.rsplit("/", 1)[0] + "/12"  # a database of its own: its queue and index are this test's
    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushdb()
    now = time.time()
    message = task_message(INGEST_TASK, ["u", "doc_1"], "agents")
    ids = message.ids
    r.hset(keyspace.doc("u", "doc_1"), mapping={"status": "processing", "msg_id": ids.task_id})
    r.hset(keyspace.doc("u", "doc_1"), mapping={"msg_origin": ids.origin, "msg_tag": ids.delivery_tag})
    r.zadd(keyspace.QUEUED_DOCS, {keyspace.queued_doc("u", "doc_1"): now - 60})
    r.lpush("agents", message)
    clock = [now]
    sweeper = Sweeper(
        r, "agents", grace_s=1, job_ttl_s=60, stream_ttl_s=60, queued_recheck_s=30, clock=lambda: clock[0]
    )
    assert sweeper.recheck_queued() == {"document_waiting": 1}
    r.delete("agents")  # now lost: found missing on one look, sent again only on a second look a while later
    assert sweeper.recheck_queued() == {"document_missing": 1}
    assert sweeper.recheck_queued() == {"document_missing": 1} and r.llen("agents") == 0
    clock[0] += 2
    assert sweeper.recheck_queued() == {"document_reenqueued": 1}
    assert r.lrange("agents", 0, -1) == [message_of(r, "u", "doc_1")]
    assert sweeper.recheck_queued() == {}  # looked at again only after another bound
    r.flushdb()
    r.close()
