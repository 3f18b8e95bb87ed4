"""The embedding cache: no chunk or query text is embedded twice by the same model while its entry lives.

Entries live in Redis (shared by every process) under the hash of model and text, each with a TTL; an index
sorted by insertion time bounds their number, the oldest going first, and a counter keeps their bytes. Lookups
and evictions are counted in `cache_operations_total{operation="embedding_lookup"|"embedding_evict"}`, and
`cache_size_bytes{cache="embeddings"}` shows the counter as last read.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Callable, Sequence

from events.store import keyspace
from events.telemetry.metrics import CACHE_OPS, CACHE_SIZE

CACHE_NAME = "embeddings"
TTL_S = 7 * 24 * 3600
MAX_ENTRIES = 200_000
EXPIRY_SLACK_S = 3600  # keys outlive their index entry a little, so the trimmer can still read their size


def count_operation(operation: str, result: str, n: int = 1) -> None:
    """Count `n` cache operations (`embedding_lookup` hit or miss, `embedding_evict` evicted or expired)."""
    if n:
        CACHE_OPS.labels(operation=operation, result=result).inc(n)


def report_size(size: int | bytes | str | None) -> None:
    """Show the cache's bytes (the Redis counter's value) in `cache_size_bytes`."""
    CACHE_SIZE.labels(CACHE_NAME).set(max(int(size or 0), 0))


def entry_digest(model: str, text: str) -> str:
    """The cache key's hash of one (model, text)."""
    return hashlib.sha256(f"{model}\x1f{text}".encode()).hexdigest()


class EmbeddingCache:
    """Embeddings by (model, text); `client` is a sync redis client."""

    def __init__(
        self,
        client: Any,
        *,
        ttl_s: int = TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock

    def embed(self, model: str, texts: Sequence[str], compute: Callable[[list[str]], list[Any]]) -> list[Any]:
        """The embedding of each text: cached ones read, the others made by `compute` (one call for all of them,
        each distinct text once) and stored. Embeddings are anything JSON can hold."""
        digests = [entry_digest(model, t) for t in texts]
        stored = self.client.mget([keyspace.embedding(d) for d in digests]) if digests else []
        found: dict[str, Any] = {d: json.loads(raw) for d, raw in zip(digests, stored, strict=True) if raw is not None}
        missing = {d: t for d, t in zip(digests, texts, strict=True) if d not in found}
        count_operation("embedding_lookup", "hit", len(digests) - len(missing))
        count_operation("embedding_lookup", "miss", len(missing))
        if missing:
            made = compute(list(missing.values()))
            self._store(dict(zip(missing, made, strict=True)))
            found.update(zip(missing, made, strict=True))
        return [found[d] for d in digests]

    def _store(self, entries: dict[str, Any]) -> None:
        now = self.clock()
        pipe = self.client.pipeline(transaction=False)
        encoded = {d: json.dumps(v, separators=(",", ":")) for d, v in entries.items()}
        for digest, raw in encoded.items():
            pipe.set(keyspace.embedding(digest), raw, ex=self.ttl_s + EXPIRY_SLACK_S, nx=True)
        pipe.zadd(keyspace.EMBEDDING_INDEX, {d: now for d in encoded}, nx=True)
        pipe.zcard(keyspace.EMBEDDING_INDEX)
        replies = pipe.execute()
        added = sum(len(raw) for raw, ok in zip(encoded.values(), replies[: len(encoded)], strict=True) if ok)
        report_size(self.client.incrby(keyspace.EMBEDDING_BYTES, added))
        if replies[-1] > self.max_entries:
            self.trim()

    def trim(self) -> int:
        """Evict entries older than the TTL and the oldest beyond the bound; returns how many this call evicted.

        Best effort and safe to run in many processes at once: only the caller whose ZREM removed an entry
        deletes it and counts its bytes.
        """
        now = self.clock()
        old = self.client.zrangebyscore(keyspace.EMBEDDING_INDEX, "-inf", now - self.ttl_s)
        over = self.client.zcard(keyspace.EMBEDDING_INDEX) - len(old) - self.max_entries
        expired = {v.decode() if isinstance(v, bytes) else v for v in old}
        victims = list(old) + (list(self.client.zrange(keyspace.EMBEDDING_INDEX, 0, over - 1)) if over > 0 else [])
        victims = list(dict.fromkeys(v.decode() if isinstance(v, bytes) else v for v in victims))
        if not victims:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for digest in victims:
            pipe.strlen(keyspace.embedding(digest))
            pipe.zrem(keyspace.EMBEDDING_INDEX, digest)
        replies = pipe.execute()
        mine = [(d, replies[2 * i]) for i, d in enumerate(victims) if replies[2 * i + 1]]
        if mine:
            self.client.delete(*(keyspace.embedding(d) for d, _ in mine))
            report_size(self.client.decrby(keyspace.EMBEDDING_BYTES, sum(size for _, size in mine)))
            gone = sum(d in expired for d, _ in mine)
            count_operation("embedding_evict", "expired", gone)
            count_operation("embedding_evict", "evicted", len(mine) - gone)
        return len(mine)
