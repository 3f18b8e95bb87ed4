"""Where chunk vectors are searched: Qdrant in memory in this process (default), or a Qdrant server.

In memory (no QDRANT_URL): one collection per user, built from Redis on that user's first search and rebuilt when
their documents version moves; at most `max_users` collections, the least recently searched dropped first. Any
number of processes can do this at once, which Qdrant's on-disk local mode does not allow.

On a server (QDRANT_URL): one collection for everyone, written at ingestion and searched with a filter on the
owner and on the ids of the owner's ready documents (read from Redis at each search, so a deleted document is gone
at once even before its points are removed).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from events.docs.sparse import SparseVector

SPARSE = "terms"
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


def _points(user: str, chunks: Sequence[Chunk]) -> list[Any]:
    models = _models()
    return [
        models.PointStruct(
            id=point_id(c.doc_id, c.index),
            vector={SPARSE: _sparse(c.vector)},
            payload={"user_id": user, "doc_id": c.doc_id, "name": c.name, "chunk": c.index, "text": c.text},
        )
        for c in chunks
    ]


def _hits(points: Any) -> list[Hit]:
    return [
        Hit(p.payload["doc_id"], p.payload["name"], int(p.payload["chunk"]), float(p.score), p.payload["text"])
        for p in points
    ]


def _create(client: Any, name: str) -> None:
    models = _models()
    client.create_collection(
        name, vectors_config={}, sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)}
    )


class LocalIndex:
    """Per-user collections in an in-memory Qdrant of this process."""

    def __init__(self, max_users: int = MAX_USERS, client: Any = None) -> None:
        self.max_users = max_users
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
        self, user: str, version: str, load: Callable[[], list[Chunk]], query: SparseVector, limit: int
    ) -> list[Hit]:
        """The best `limit` chunks of `user`'s documents for `query`; `load` gives every chunk of the user's ready
        documents, called when this process has none for `version`."""
        if not query.indices:
            return []
        name = f"user_{uuid.uuid5(_POINT_NAMESPACE, user).hex}"
        with self._lock:
            if self._versions.get(user) != version:
                self._rebuild(user, name, load())
                self._versions[user] = version
            self._versions.move_to_end(user)
            while len(self._versions) > self.max_users:
                gone, _ = self._versions.popitem(last=False)
                self.client.delete_collection(f"user_{uuid.uuid5(_POINT_NAMESPACE, gone).hex}")
            found = self.client.query_points(name, query=_sparse(query), using=SPARSE, limit=limit, with_payload=True)
        return _hits(found.points)

    def _rebuild(self, user: str, name: str, chunks: list[Chunk]) -> None:
        if self.client.collection_exists(name):
            self.client.delete_collection(name)
        _create(self.client, name)
        if chunks:
            self.client.upsert(name, points=_points(user, chunks))

    def cached_users(self) -> list[str]:
        """The users whose collections this process holds, least recently searched first."""
        return list(self._versions)


class ServerIndex:
    """One collection on a Qdrant server, filtered by owner and by the owner's ready documents."""

    def __init__(self, client: Any, collection: str = COLLECTION) -> None:
        self.client = client
        self.collection = collection
        self._ready = False

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

    def write(self, user: str, chunks: Sequence[Chunk]) -> None:
        """Add (or replace) chunks of one of `user`'s documents."""
        self.ensure()
        if chunks:
            self.client.upsert(self.collection, points=_points(user, chunks))

    def drop(self, user: str, doc_id: str) -> None:
        """Remove every point of one document."""
        self.ensure()
        models = _models()
        self.client.delete(
            self.collection,
            points_selector=models.FilterSelector(filter=self._filter(user, [doc_id])),
        )

    def search(self, user: str, ready: Sequence[str], query: SparseVector, limit: int) -> list[Hit]:
        """The best `limit` chunks of `user`'s documents among `ready` for `query`."""
        if not ready or not query.indices:
            return []
        self.ensure()
        found = self.client.query_points(
            self.collection,
            query=_sparse(query),
            using=SPARSE,
            query_filter=self._filter(user, ready),
            limit=limit,
            with_payload=True,
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
