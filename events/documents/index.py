"""Where chunk vectors are searched: Qdrant in memory in this process (default), or a Qdrant server.

In memory (no QDRANT_URL): one collection per user, built from Redis on that user's first search and rebuilt when
their documents version moves; at most `max_users` collections, the least recently searched dropped first. Any
number of processes can do this at once, which Qdrant's on-disk local mode does not allow.

On a server (QDRANT_URL): one collection for everyone, written at ingestion and searched with a filter on the
owner and on the ids of the owner's ready documents (read from Redis at each search, so a deleted document is gone
at once even before its points are removed).

Dense vectors (when an embedding model is configured) live in a collection of their own beside the sparse one (on
a server, one per embedding model: changing the model never mixes vectors of two models). A search with a dense
query runs both searches and fuses them by reciprocal rank (`dense.fuse`); chunks embedded before the model was
configured are still found by the sparse search.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from events.documents.dense import fuse
from events.documents.sparse import SparseVector

SPARSE = "terms"
DENSE = "dense"
CANDIDATES = 4  # each search of a hybrid one returns this many times `limit` before fusion
COLLECTION = "documents"
MAX_USERS = 64
_POINT_NAMESPACE = uuid.UUID("6f1c1a52-3f7e-4d7c-9a55-0d0c5b2f6a10")


@dataclass(frozen=True)
class Chunk:
    """One indexed chunk of a document."""

    doc_id: str
    name: str
    index: int
    text: str
    vector: SparseVector
    dense: list[float] | None = None  # unit length, of the configured embedding model


@dataclass(frozen=True)
class DenseQuery:
    """The query's dense vector and the model that made it."""

    model: str
    vector: list[float]


@dataclass(frozen=True)
class Hit:
    """A chunk found by a search, with its score."""

    doc_id: str
    name: str
    chunk: int
    score: float
    text: str


def point_id(doc_id: str, index: int) -> str:
    """A chunk's Qdrant point id: stable, so writing a chunk twice replaces it."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{doc_id}:{index}"))


def _models() -> Any:
    from qdrant_client import models  # imported on first use: it takes a second or two

    return models


def _sparse(vector: SparseVector) -> Any:
    return _models().SparseVector(indices=list(vector.indices), values=list(vector.values))


def _points(user: str, chunks: Sequence[Chunk], *, dense: bool = False) -> list[Any]:
    """Qdrant points of `chunks`: their sparse vectors, or (`dense`) the dense ones of those that have one."""
    models = _models()
    return [
        models.PointStruct(
            id=point_id(c.doc_id, c.index),
            vector={DENSE: list(c.dense)} if dense and c.dense is not None else {SPARSE: _sparse(c.vector)},
            payload={"user_id": user, "doc_id": c.doc_id, "name": c.name, "chunk": c.index, "text": c.text},
        )
        for c in chunks
        if not dense or c.dense is not None
    ]


def hybrid(sparse_hits: list[Hit], dense_hits: list[Hit] | None, limit: int) -> list[Hit]:
    """The sparse hits alone (their BM25 scores) without a dense search; else both fused, scored by rank."""
    if dense_hits is None:
        return sparse_hits[:limit]
    fused = fuse([sparse_hits, dense_hits], key=lambda h: (h.doc_id, h.chunk), limit=limit)
    return [Hit(h.doc_id, h.name, h.chunk, score, h.text) for h, score in fused]


def _hits(points: Any) -> list[Hit]:
    return [
        Hit(p.payload["doc_id"], p.payload["name"], int(p.payload["chunk"]), float(p.score), p.payload["text"])
        for p in points
    ]


def _create(client: Any, name: str, *, idf: bool = True) -> None:
    models = _models()
    modifier = models.Modifier.IDF if idf else None
    client.create_collection(
        name, vectors_config={}, sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=modifier)}
    )


def _create_dense(client: Any, name: str, size: int) -> None:
    models = _models()
    client.create_collection(name, vectors_config={DENSE: models.VectorParams(size=size, distance=models.Distance.DOT)})


def dense_collection(base: str, model: str) -> str:
    """The name of the dense collection for `model` beside the collection `base`."""
    return f"{base}_dense_{uuid.uuid5(_POINT_NAMESPACE, model).hex[:16]}"


class LocalIndex:
    """Per-user collections in an in-memory Qdrant of this process.

    With `idf=False` a sparse score is the plain dot product of the stored values (no IDF weight), for vectors
    that are weighted already: the response cache's semantic matching keys its collections by partition instead
    of user (events/semantic_cache.py).
    """

    def __init__(self, max_users: int = MAX_USERS, client: Any = None, *, idf: bool = True) -> None:
        self.max_users = max_users
        self.idf = idf
        self._client = client
        self._versions: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The in-memory Qdrant, made on first use."""
        if self._client is None:
            from qdrant_client import QdrantClient

            self._client = QdrantClient(location=":memory:")
        return self._client

    def search(
        self,
        user: str,
        version: str,
        load: Callable[[], list[Chunk]],
        query: SparseVector,
        limit: int,
        dense: DenseQuery | None = None,
    ) -> list[Hit]:
        """The best `limit` chunks of `user`'s documents for `query` (and `dense`, when given); `load` gives every
        chunk of the user's ready documents, called when this process has none for `version` (which names the
        embedding model too: chunks carry only dense vectors of the model the query uses)."""
        name = f"user_{uuid.uuid5(_POINT_NAMESPACE, user).hex}"
        wanted = limit * CANDIDATES if dense else limit
        with self._lock:
            if self._versions.get(user) != version:
                self._rebuild(user, name, load())
                self._versions[user] = version
            self._versions.move_to_end(user)
            while len(self._versions) > self.max_users:
                gone, _ = self._versions.popitem(last=False)
                for collection in self._collections(f"user_{uuid.uuid5(_POINT_NAMESPACE, gone).hex}"):
                    self.client.delete_collection(collection)
            sparse_hits = self._query(name, _sparse(query), SPARSE, wanted) if query.indices else []
            dense_hits = None
            if dense is not None:
                dense_hits = self._query(f"{name}_{DENSE}", dense.vector, DENSE, wanted)
        return hybrid(sparse_hits, dense_hits, limit)

    def _query(self, name: str, query: Any, using: str, limit: int) -> list[Hit]:
        if not self.client.collection_exists(name):
            return []
        try:
            found = self.client.query_points(name, query=query, using=using, limit=limit, with_payload=True)
        except ValueError:  # a dense query of another size than the collection's: no dense results
            return []
        return _hits(found.points)

    def _collections(self, name: str) -> list[str]:
        return [name, f"{name}_{DENSE}"]

    def _rebuild(self, user: str, name: str, chunks: list[Chunk]) -> None:
        for collection in self._collections(name):
            if self.client.collection_exists(collection):
                self.client.delete_collection(collection)
        _create(self.client, name, idf=self.idf)
        if chunks:
            self.client.upsert(name, points=_points(user, chunks))
        embedded = [c for c in chunks if c.dense is not None]
        if embedded:
            _create_dense(self.client, f"{name}_{DENSE}", len(embedded[0].dense or ()))
            self.client.upsert(f"{name}_{DENSE}", points=_points(user, embedded, dense=True))

    def cached_users(self) -> list[str]:
        """The users whose collections this process holds, least recently searched first."""
        return list(self._versions)


class ServerIndex:
    """One collection on a Qdrant server, filtered by owner and by the owner's ready documents."""

    def __init__(self, client: Any, collection: str = COLLECTION) -> None:
        self.client = client
        self.collection = collection
        self._ready = False
        self._dense_ready: set[str] = set()

    @classmethod
    def connect(cls, url: str, api_key: str = "", timeout_s: float = 10.0) -> ServerIndex:
        """An index on the Qdrant server at `url`."""
        from qdrant_client import QdrantClient

        return cls(QdrantClient(url=url, api_key=api_key or None, timeout=int(timeout_s)))

    def ensure(self) -> None:
        """Create the collection and its payload indexes if they are missing."""
        if self._ready:
            return
        if not self.client.collection_exists(self.collection):
            _create(self.client, self.collection)
            for field in ("user_id", "doc_id"):
                self.client.create_payload_index(
                    self.collection, field, field_schema=_models().PayloadSchemaType.KEYWORD
                )
        self._ready = True

    def ensure_dense(self, model: str, size: int) -> str:
        """The dense collection of `model`, created (with its payload indexes) if it is missing."""
        name = dense_collection(self.collection, model)
        if name not in self._dense_ready:
            if not self.client.collection_exists(name):
                _create_dense(self.client, name, size)
                for field in ("user_id", "doc_id"):
                    self.client.create_payload_index(name, field, field_schema=_models().PayloadSchemaType.KEYWORD)
            self._dense_ready.add(name)
        return name

    def write(self, user: str, chunks: Sequence[Chunk], dense_model: str = "") -> None:
        """Add (or replace) chunks of one of `user`'s documents; their dense vectors too, if they have some."""
        self.ensure()
        if chunks:
            self.client.upsert(self.collection, points=_points(user, chunks))
        embedded = [c for c in chunks if c.dense is not None]
        if embedded and dense_model:
            name = self.ensure_dense(dense_model, len(embedded[0].dense or ()))
            self.client.upsert(name, points=_points(user, embedded, dense=True))

    def drop(self, user: str, doc_id: str) -> None:
        """Remove every point of one document, from every collection."""
        self.ensure()
        models = _models()
        selector = models.FilterSelector(filter=self._filter(user, [doc_id]))
        prefix = f"{self.collection}_dense_"
        dense = [c.name for c in self.client.get_collections().collections if c.name.startswith(prefix)]
        for name in [self.collection, *dense]:
            self.client.delete(name, points_selector=selector)

    def search(
        self, user: str, ready: Sequence[str], query: SparseVector, limit: int, dense: DenseQuery | None = None
    ) -> list[Hit]:
        """The best `limit` chunks of `user`'s documents among `ready` for `query` (and `dense`, when given)."""
        if not ready:
            return []
        self.ensure()
        wanted = limit * CANDIDATES if dense else limit
        where = self._filter(user, ready)
        sparse_hits = self._query(self.collection, _sparse(query), SPARSE, where, wanted) if query.indices else []
        dense_hits = None
        if dense is not None:
            name = dense_collection(self.collection, dense.model)
            exists = name in self._dense_ready or self.client.collection_exists(name)
            dense_hits = self._query(name, dense.vector, DENSE, where, wanted) if exists else []
        return hybrid(sparse_hits, dense_hits, limit)

    def _query(self, name: str, query: Any, using: str, where: Any, limit: int) -> list[Hit]:
        found = self.client.query_points(
            name, query=query, using=using, query_filter=where, limit=limit, with_payload=True
        )
        return _hits(found.points)

    @staticmethod
    def _filter(user: str, doc_ids: Sequence[str]) -> Any:
        models = _models()
        return models.Filter(
            must=[
                models.FieldCondition(key="user_id", match=models.MatchValue(value=user)),
                models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids))),
            ]
        )
