"""Semantic matching for the response cache: a request answered from the entry of a similar earlier one.

Similar means the same words, whatever their order, case, punctuation or repetition of the whole question: each
query becomes a hashed-term vector (events/documents/sparse.py) of term frequencies scaled to length 1, so the dot
product of two is their cosine. It is word overlap, not meaning. Provider embeddings are not used: one would be a
paid model call before the budget admits the job. Question words and negations (`why`, `not`) count, although
document search drops them as stop words, because they change the answer.

A worker that stores an entry registers its request's vector in the request's partition (`CacheRequest.partition`,
`keyspace.cache_semantic`). The API searches a partition in an in-memory Qdrant of its own process (a `LocalIndex`
keyed by partition, without IDF), rebuilt from Redis whenever the partition's version moves. docs/cache.md,
"Semantic matching", says when it applies and what it costs.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from events.documents.index import Chunk, LocalIndex
from events.documents.sparse import SparseVector, term_index, terms
from events.envelope import text
from events.store import keyspace
from events.telemetry.metrics import CACHE_OPS

KEPT_WORDS = frozenset({"how", "no", "not", "what", "when", "where", "which", "who", "why"})  # stop words that count
MAX_ENTRIES = 1_000  # stored requests per partition; past it new ones are not registered
MAX_PARTITIONS = 64  # partitions one API process holds (about 3 MB each when full); least recently searched go
LOAD_TIMEOUT_S = 10.0
_TOLERANCE = 1e-6  # Qdrant scores in float32: the same words may score 0.9999999


def unit_vector(query: str) -> SparseVector:
    """The query's words as term frequencies scaled to length 1; empty when it has no word to match on."""
    counts = Counter(term_index(t) for t in terms(query, keep=KEPT_WORDS))
    norm = math.sqrt(sum(n * n for n in counts.values()))
    ordered = sorted(counts.items())
    return SparseVector(tuple(i for i, _ in ordered), tuple(n / norm for _, n in ordered))


def similarity(a: SparseVector, b: SparseVector) -> float:
    """The cosine of two unit vectors, which is their dot product: what Qdrant scores a match with."""
    theirs = dict(zip(b.indices, b.values, strict=True))
    return sum(value * theirs.get(index, 0.0) for index, value in zip(a.indices, a.values, strict=True))


@dataclass(frozen=True)
class Match:
    """A stored request similar enough to answer this one: its cache digest, and the cosine of the two queries."""

    digest: str
    score: float


def register(
    client: Any, *, partition: str, digest: str, query: str, ttl_s: int, max_entries: int = MAX_ENTRIES
) -> str:
    """Add the request of a stored cache entry to its partition (`client` is a blocking client: the worker's).

    Returns 'stored'; 'full' when the partition holds `max_entries` requests even after those whose entries are
    gone were dropped; 'empty' for a query without a word to match on. The partition and its version live as long
    as the cache's entries, from the newest store.
    """
    vector = unit_vector(query)
    if not vector.indices:
        return "empty"
    entries, version = keyspace.cache_semantic(partition), keyspace.cache_semantic_version(partition)
    if client.hlen(entries) >= max_entries:
        _drop_stale(client, partition)

    def write(pipe: Any) -> str:
        if not pipe.hexists(entries, digest) and pipe.hlen(entries) >= max_entries:
            return "full"
        pipe.multi()
        pipe.hset(entries, digest, json.dumps(vector.to_json()))
        pipe.expire(entries, ttl_s)
        # A new token, not a counter: a counter starts again at 1 once it expires, and a process holding an old
        # version 1 would not see that the partition changed.
        pipe.set(version, uuid.uuid4().hex, ex=ttl_s)
        return "stored"

    result: str = client.transaction(write, entries, value_from_callable=True)
    return result


def _drop_stale(client: Any, partition: str) -> None:
    """Remove a partition's requests whose response entries are gone (evicted or expired and swept)."""
    digests = [text(d) for d in client.hkeys(keyspace.cache_semantic(partition))]
    pipe = client.pipeline(transaction=False)
    for digest in digests:
        pipe.hexists(keyspace.CACHE_ENTRIES, digest)
    gone = [d for d, there in zip(digests, pipe.execute(), strict=True) if not there]
    if gone:
        pipe = client.pipeline(transaction=True)
        pipe.hdel(keyspace.cache_semantic(partition), *gone)
        pipe.set(keyspace.cache_semantic_version(partition), uuid.uuid4().hex, xx=True, keepttl=True)
        pipe.execute()


class SemanticIndex:
    """Finds the stored request of a partition whose query is most like a new one (`client` is asyncio's).

    Each API process holds its own copy of at most `max_partitions` partitions, built from Redis; Qdrant's local
    mode is synchronous, so its calls run in a thread, one at a time.
    """

    def __init__(
        self,
        client: Any,
        threshold: float,
        *,
        max_partitions: int = MAX_PARTITIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.threshold = threshold
        self.clock = clock
        self.index = LocalIndex(max_users=max_partitions, idf=False)
        self._lock = asyncio.Lock()

    async def find(self, partition: str, query: str) -> Match | None:
        """The most similar stored request of `partition` if it scores at least the threshold and its cache entry
        is fresh; a stale one is dropped from the partition. Counted as a `semantic_lookup` hit or miss."""
        match = await self._find(partition, unit_vector(query))
        CACHE_OPS.labels("semantic_lookup", "hit" if match else "miss").inc()
        return match

    async def _find(self, partition: str, vector: SparseVector) -> Match | None:
        if not vector.indices:
            return None
        version = await self.client.get(keyspace.cache_semantic_version(partition))
        if version is None:  # nothing stored in this partition (or it expired)
            return None
        loop = asyncio.get_running_loop()

        def load() -> list[Chunk]:  # called in the search's thread, only when this process's copy is out of date
            return asyncio.run_coroutine_threadsafe(self._load(partition), loop).result(LOAD_TIMEOUT_S)

        async with self._lock:
            hits = await asyncio.to_thread(self.index.search, partition, text(version), load, vector, 1)
        if not hits or hits[0].score < self.threshold - _TOLERANCE:
            return None
        best = hits[0]
        if await self._fresh(best.doc_id):
            return Match(best.doc_id, min(best.score, 1.0))
        await self._forget(partition, best.doc_id)
        return None

    async def _load(self, partition: str) -> list[Chunk]:
        raw = await self.client.hgetall(keyspace.cache_semantic(partition))
        return [Chunk(text(d), "", 0, "", SparseVector.from_json(json.loads(v))) for d, v in raw.items()]

    async def _fresh(self, digest: str) -> bool:
        """Whether the response cache still serves `digest`'s entry (the test submit.lua makes of a hit)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hexists(keyspace.CACHE_ENTRIES, digest)
        pipe.zscore(keyspace.CACHE_EXPIRY, digest)
        entry, expires = await pipe.execute()
        return bool(entry) and expires is not None and float(expires) > self.clock()

    async def _forget(self, partition: str, digest: str) -> None:
        """Drop a request whose entry is gone, and move the version so every process rebuilds without it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(keyspace.cache_semantic(partition), digest)
        pipe.set(keyspace.cache_semantic_version(partition), uuid.uuid4().hex, xx=True, keepttl=True)
        await pipe.execute()
