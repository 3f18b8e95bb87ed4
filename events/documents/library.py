"""The workers' side of documents: ingest an upload (extract, chunk, embed, index) and search a user's documents.

Sync Redis. Ingestion is idempotent (a redelivered task finds the document ready and does nothing) and a document
deleted while it was being ingested stays deleted. Every chunk gets a local sparse vector; with an embedding model
configured it also gets the provider's dense vector (paid under a hold: events/documents/billing.py), and searches are
hybrid. When dense embedding cannot be done (a budget without room, the provider down) the document is still made
searchable with its sparse vectors, and its record says why it has no dense ones.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, Callable

import redis

from events.documents import sparse
from events.documents.billing import DocumentBill
from events.documents.cache import EmbeddingCache
from events.documents.chunking import chunk_text
from events.documents.dense import Embedder, unpack
from events.documents.extract import ExtractError, extract_text
from events.documents.index import Chunk, DenseQuery, Hit, LocalIndex, ServerIndex
from events.envelope import text, text_map
from events.store import keyspace

log = logging.getLogger("events.documents")
MAX_CHUNKS = 5000  # per document: about 4 MB of text
EMBED_BATCH = 64  # chunks per /embeddings call (about 64 KB of text; OpenAI takes up to 2,048 inputs)
PayQuery = Callable[[list[str]], list[str]]  # embeds query texts, paid by the job that asks: packed vectors


class DocumentLibrary:
    """Ingests and searches documents; `client` is a sync redis client, `index` a LocalIndex or a ServerIndex."""

    def __init__(
        self,
        client: Any,
        index: LocalIndex | ServerIndex,
        cache: EmbeddingCache,
        clock: Callable[[], float] = time.time,
        *,
        embedder: Embedder | None = None,
        bill: DocumentBill | None = None,
    ) -> None:
        self.client = client
        self.index = index
        self.cache = cache
        self.clock = clock
        self.embedder = embedder if bill is not None else None  # dense vectors are never made unpaid
        self.bill = bill

    @property
    def dense_model(self) -> str:
        """The embedding model dense vectors come from; '' when there are none."""
        return self.embedder.model if self.embedder is not None else ""

    # ---- ingestion ------------------------------------------------------------------------------------------------

    def ingest(self, user: str, doc_id: str) -> str:
        """Make an uploaded document searchable; returns its status afterwards ('deleted' if it is gone)."""
        # Its message reached a worker: the sweeper no longer looks for it (a worker dying now leaves the message
        # in kombu's `unacked`, which hands it back).
        self.client.zrem(keyspace.QUEUED_DOCS, keyspace.queued_doc(user, doc_id))
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
        dense, facts = self._dense(user, doc_id, chunks)
        name = record.get("name", doc_id)
        if isinstance(self.index, ServerIndex):
            found = [
                Chunk(doc_id, name, i, c, sparse.SparseVector.from_json(v), unpack(d) if d else None)
                for i, (c, v, d) in enumerate(zip(chunks, vectors, dense, strict=True))
            ]
            self.index.write(user, found, facts["embedding_model"])
        stored = {
            str(i): json.dumps({"text": c, "terms": v, **({"dense": d} if d else {})})
            for i, (c, v, d) in enumerate(zip(chunks, vectors, dense, strict=True))
        }
        if not self._mark_ready(user, doc_id, stored, facts):
            self.client.delete(keyspace.doc_chunks(user, doc_id), keyspace.doc_upload(user, doc_id))
            if isinstance(self.index, ServerIndex):
                self.index.drop(user, doc_id)
            return "deleted"
        log.info("document %s of %s ready: %d chunks", doc_id, user, len(chunks), extra={"user_id": user})
        return "ready"

    def _dense(self, user: str, doc_id: str, chunks: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Each chunk's packed dense vector ('' for none) and what the record says of them: the model, what they
        cost, and why there are none if embedding failed. A batch embedded once is cached, so a redelivered task
        pays only for the rest."""
        if self.embedder is None or self.bill is None:
            return [""] * len(chunks), {"embedding_model": ""}
        embedder, bill = self.embedder, self.bill
        dense: list[str] = []
        try:
            for start in range(0, len(chunks), EMBED_BATCH):
                batch = chunks[start : start + EMBED_BATCH]
                dense += self.cache.embed(
                    embedder.model, batch, lambda texts: bill.embed(user, doc_id, embedder, texts)
                )
        except Exception as ex:  # a budget, the provider, an unpriced model: searchable with sparse vectors still
            why = f"No dense vectors ({embedder.model}): {ex}. It is searched by its words only."
            log.warning("document %s of %s: %s", doc_id, user, why, extra={"user_id": user})
            facts = {"embedding_model": "", "embedding_error": why[:500]}
            return [""] * len(chunks), {**facts, "embedding_cost_micros": bill.spent_micros(user, doc_id)}
        return dense, {"embedding_model": embedder.model, "embedding_cost_micros": bill.spent_micros(user, doc_id)}

    def _mark_ready(self, user: str, doc_id: str, stored: dict[str, str], facts: dict[str, Any]) -> bool:
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
                    ready = {"status": "ready", "chunks": len(stored), "ready_at": self.clock(), **facts}
                    pipe.hset(doc_key, mapping=ready)
                    pipe.incr(keyspace.docs_version(user))
                    pipe.delete(keyspace.doc_upload(user, doc_id), keyspace.doc_charges(user, doc_id))
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

    def search(self, user: str, query: str, limit: int = 5, pay_query: PayQuery | None = None) -> list[Hit]:
        """The `limit` chunks of `user`'s ready documents that best match `query`, best first. With `pay_query`
        (the asking job's paid embedding of its query) and an embedding model, the search is hybrid."""
        (vector,) = self.cache.embed(
            sparse.MODEL, [query], lambda texts: [sparse.query_vector(t).to_json() for t in texts]
        )
        wanted = sparse.SparseVector.from_json(vector)
        dense = None
        if pay_query is not None and self.dense_model:
            (packed,) = self.cache.embed(self.dense_model, [query], pay_query)
            dense = DenseQuery(self.dense_model, unpack(packed))
        if isinstance(self.index, ServerIndex):
            return self.index.search(user, [d for d, _, _ in self._ready(user)], wanted, limit, dense)
        version = text(self.client.get(keyspace.docs_version(user)) or "0")
        load = functools.partial(self._chunks, user)
        return self.index.search(user, f"{version}:{self.dense_model}", load, wanted, limit, dense)

    def _ready(self, user: str) -> list[tuple[str, str, str]]:
        """(id, name, embedding model) of each of `user`'s ready documents."""
        ids = [text(i) for i in self.client.zrange(keyspace.user_docs(user), 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for doc_id in ids:
            pipe.hmget(keyspace.doc(user, doc_id), "status", "name", "embedding_model")
        found = []
        for doc_id, (status, name, model) in zip(ids, pipe.execute(), strict=True):
            if status is not None and text(status) == "ready":
                found.append((doc_id, text(name or doc_id), text(model or "")))
        return found

    def _chunks(self, user: str) -> list[Chunk]:
        """Every chunk of `user`'s ready documents, from Redis; dense vectors only of the model in use."""
        ready = self._ready(user)
        pipe = self.client.pipeline(transaction=False)
        for doc_id, _, _ in ready:
            pipe.hgetall(keyspace.doc_chunks(user, doc_id))
        chunks = []
        for (doc_id, name, model), stored in zip(ready, pipe.execute(), strict=True):
            same_model = bool(model) and model == self.dense_model
            for index, raw in text_map(stored).items():
                entry = json.loads(raw)
                dense = unpack(entry["dense"]) if same_model and entry.get("dense") else None
                terms = sparse.SparseVector.from_json(entry["terms"])
                chunks.append(Chunk(doc_id, name, int(index), entry["text"], terms, dense))
        return chunks
