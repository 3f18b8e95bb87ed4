"""The API's side of documents: save an upload and queue its ingestion, list, get and delete. Async Redis."""

from __future__ import annotations

from typing import Any

from events.documents.records import DROP_VECTORS_TASK, INGEST_TASK, UPLOAD_TTL_S
from events.envelope import text, text_map
from events.store import keyspace
from events.store.taskmsg import message_ids, task_message


class DocumentStore:
    """Documents of every user; `client` is a redis.asyncio client, `queue` the Celery queue of the workers."""

    def __init__(self, client: Any, queue: str, *, vectors_on_server: bool = False) -> None:
        self.client = client
        self.queue = queue
        self.vectors_on_server = vectors_on_server

    async def create(self, record: dict[str, str], data: bytes) -> None:
        """Save the record (status processing) and the bytes, and queue the ingestion, in one transaction. The
        record keeps the message's ids and the document waits in QUEUED_DOCS, so that the sweeper can find a message
        lost on its way to a worker and send a new one."""
        user, doc_id = record["owner"], record["id"]
        message = task_message(INGEST_TASK, [user, doc_id], self.queue)
        ids = message_ids(message)
        sent = {"msg_id": ids.task_id, "msg_origin": ids.origin, "msg_tag": ids.delivery_tag}
        pipe = self.client.pipeline(transaction=True)
        pipe.set(keyspace.doc_upload(user, doc_id), data, ex=UPLOAD_TTL_S)
        pipe.hset(keyspace.doc(user, doc_id), mapping={**record, **sent})
        pipe.zadd(keyspace.user_docs(user), {doc_id: float(record["created_at"])})
        pipe.hset(keyspace.DOC_OWNERS, doc_id, user)
        pipe.zadd(keyspace.QUEUED_DOCS, {keyspace.queued_doc(user, doc_id): float(record["created_at"])})
        pipe.lpush(self.queue, message)
        await pipe.execute()

    async def owner(self, doc_id: str) -> str | None:
        """Whose document `doc_id` is, if it exists."""
        found = await self.client.hget(keyspace.DOC_OWNERS, doc_id)
        return text(found) if found is not None else None

    async def get(self, user: str, doc_id: str) -> dict[str, str] | None:
        """One of `user`'s documents."""
        record = await self.client.hgetall(keyspace.doc(user, doc_id))
        return text_map(record) if record else None

    async def list(self, user: str | None, limit: int) -> list[dict[str, str]]:
        """`user`'s documents, newest first; every user's when `user` is None (admins)."""
        if user is None:
            owners = text_map(await self.client.hgetall(keyspace.DOC_OWNERS))
            found = [r for r in [await self.get(u, d) for d, u in owners.items()] if r]
            return sorted(found, key=lambda r: -float(r.get("created_at") or 0))[:limit]
        ids = [text(i) for i in await self.client.zrevrange(keyspace.user_docs(user), 0, limit - 1)]
        pipe = self.client.pipeline(transaction=False)
        for doc_id in ids:
            pipe.hgetall(keyspace.doc(user, doc_id))
        return [text_map(r) for r in await pipe.execute() if r]

    async def delete(self, user: str, doc_id: str) -> bool:
        """Delete a document, its chunks and bytes; bump the user's documents version so every searcher drops it
        at once. False when it did not exist."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(keyspace.doc(user, doc_id))
        pipe.delete(keyspace.doc_chunks(user, doc_id), keyspace.doc_upload(user, doc_id))
        pipe.zrem(keyspace.user_docs(user), doc_id)
        pipe.hdel(keyspace.DOC_OWNERS, doc_id)
        pipe.zrem(keyspace.QUEUED_DOCS, keyspace.queued_doc(user, doc_id))
        pipe.incr(keyspace.docs_version(user))
        if self.vectors_on_server:
            pipe.lpush(self.queue, task_message(DROP_VECTORS_TASK, [user, doc_id], self.queue))
        existed = (await pipe.execute())[0]
        return bool(existed)
