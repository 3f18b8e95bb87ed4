"""The workers' side of documents: ingest an upload (extract, chunk, embed, index) and search a user's documents.

Sync Redis. Ingestion is idempotent (a redelivered task finds the document ready and does nothing) and a document
deleted while it was being ingested stays deleted.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import redis

from events.docs import sparse
from events.docs.cache import EmbeddingCache
from events.docs.chunking import chunk_text
from events.docs.extract import ExtractError, extract_text
from events.docs.index import Chunk, Hit, LocalIndex, ServerIndex
from events.envelope import text, text_map
from events.store import keyspace

log = logging.getLogger("events.docs")
MAX_CHUNKS = 5000  # per document: about 4 MB of text


class DocumentLibrary:
    """Ingests and searches documents; `client` is a sync redis client, `index` a LocalIndex or a ServerIndex."""

    def __init__(
        self,
        client: Any,
        index: LocalIndex | ServerIndex,
        cache: EmbeddingCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.index = index
        self.cache = cache
        self.clock = clock

    # ---- ingestion ------------------------------------------------------------------------------------------------

    def ingest(self, user: str, doc_id: str) -> str:
        """Make an uploaded document searchable; returns its status afterwards ('deleted' if it is gone)."""
        record = text_map(self.client.hgetall(keyspace.doc(user, doc_id)))
        if not record:
            self.client.delete(keyspace.doc_upload(user, doc_id))
            return "deleted"
        if record.get("status") != "processing":
            return record.get("status", "")
        data = self.client.get(keyspace.doc_upload(user, doc_id))
        if data is None:
            return self._fail(user, doc_id, "The upload expired before a worker could read it; upload it again.")
        try:
            chunks = chunk_text(extract_text(data, record.get("content_type", "")))
        except ExtractError as ex:
            return self._fail(user, doc_id, str(ex))
        if not chunks:
            return self._fail(user, doc_id, "The file has no text to search (a scanned PDF needs OCR first).")
        if len(chunks) > MAX_CHUNKS:
            return self._fail(
                user, doc_id, f"The text makes {len(chunks)} chunks, more than {MAX_CHUNKS}; split the file."
            )
        vectors = self.cache.embed(
            sparse.MODEL, chunks, lambda texts: [sparse.document_vector(t).to_json() for t in texts]
        )
        name = record.get("name", doc_id)
        if isinstance(self.index, ServerIndex):
            found = [
                Chunk(doc_id, name, i, c, sparse.SparseVector.from_json(v))
                for i, (c, v) in enumerate(zip(chunks, vectors, strict=True))
            ]
            self.index.write(user, found)
        stored = {
            str(i): json.dumps({"text": c, "terms": v}) for i, (c, v) in enumerate(zip(chunks, vectors, strict=True))
        }
        if not self._mark_ready(user, doc_id, stored):
            self.client.delete(keyspace.doc_chunks(user, doc_id), keyspace.doc_upload(user, doc_id))
            if isinstance(self.index, ServerIndex):
                self.index.drop(user, doc_id)
            return "deleted"
        log.info("document %s of %s ready: %d chunks", doc_id, user, len(chunks), extra={"user_id": user})
        return "ready"

    def _mark_ready(self, user: str, doc_id: str, stored: dict[str, str]) -> bool:
        """Write the chunks and flip the status, unless the document was deleted meanwhile (WATCH)."""
        doc_key = keyspace.doc(user, doc_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(doc_key)
                    if pipe.hget(doc_key, "status") is None:
                        return False
                    pipe.multi()
                    pipe.delete(keyspace.doc_chunks(user, doc_id))
                    pipe.hset(keyspace.doc_chunks(user, doc_id), mapping=stored)
                    pipe.hset(doc_key, mapping={"status": "ready", "chunks": len(stored), "ready_at": self.clock()})
                    pipe.incr(keyspace.docs_version(user))
                    pipe.delete(keyspace.doc_upload(user, doc_id))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _fail(self, user: str, doc_id: str, why: str) -> str:
        log.warning("document %s of %s failed: %s", doc_id, user, why, extra={"user_id": user})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keyspace.doc(user, doc_id), mapping={"status": "failed", "error": why})
        pipe.delete(keyspace.doc_upload(user, doc_id))
        pipe.execute()
        if (
            not self.client.exists(keyspace.user_docs(user))
            or self.client.zscore(keyspace.user_docs(user), doc_id) is None
        ):
            self.client.delete(keyspace.doc(user, doc_id))  # deleted meanwhile: leave no failed stub behind
        return "failed"

    def drop_vectors(self, user: str, doc_id: str) -> None:
        """Remove a deleted document's points from a Qdrant server (searches skip them already)."""
        if isinstance(self.index, ServerIndex):
            self.index.drop(user, doc_id)

    # ---- search ---------------------------------------------------------------------------------------------------

    def search(self, user: str, query: str, limit: int = 5) -> list[Hit]:
        """The `limit` chunks of `user`'s ready documents that best match `query`, best first."""
        (vector,) = self.cache.embed(
            sparse.MODEL, [query], lambda texts: [sparse.query_vector(t).to_json() for t in texts]
        )
        wanted = sparse.SparseVector.from_json(vector)
        if isinstance(self.index, ServerIndex):
            return self.index.search(user, [d for d, _ in self._ready(user)], wanted, limit)
        version = text(self.client.get(keyspace.docs_version(user)) or "0")
        return self.index.search(user, version, lambda: self._chunks(user), wanted, limit)

    def _ready(self, user: str) -> list[tuple[str, str]]:
        """(id, name) of each of `user`'s ready documents."""
        ids = [text(i) for i in self.client.zrange(keyspace.user_docs(user), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for doc_id in ids:
            pipe.hmget(keyspace.doc(user, doc_id), "status", "name")
        found = []
        for doc_id, (status, name) in zip(ids, pipe.execute(), strict=True):
            if status is not None and text(status) == "ready":
                found.append((doc_id, text(name or doc_id)))
        return found

    def _chunks(self, user: str) -> list[Chunk]:
        """Every chunk of `user`'s ready documents, from Redis."""
        ready = self._ready(user)
        pipe = self.client.pipeline(transaction=False)
        for doc_id, _ in ready:
            pipe.hgetall(keyspace.doc_chunks(user, doc_id))
        chunks = []
        for (doc_id, name), stored in zip(ready, pipe.execute(), strict=True):
            for index, raw in text_map(stored).items():
                entry = json.loads(raw)
                chunks.append(
                    Chunk(doc_id, name, int(index), entry["text"], sparse.SparseVector.from_json(entry["terms"]))
                )
        return chunks
