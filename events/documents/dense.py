"""Dense embeddings from the provider, and the fusion of dense and sparse results. Pure.

A dense vector is kept as base64 of little-endian float32 (a 1,536-dimension vector is 8 KB this way, about 30 KB
as JSON numbers), in the embedding cache and beside each chunk in Redis. `Embedder` is what the workers give the
document library (workers/llm/embeddings.py calls the provider's `/embeddings`); the library never calls it
without a budget hold that covers the worst case (events/documents/billing.py, workers/spending.py).
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Callable, Hashable, Protocol, Sequence, TypeVar

RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009; Qdrant and Elasticsearch use it too)


@dataclass(frozen=True)
class Embedded:
    """Vectors for some texts, in their order, and the input tokens the provider billed for them."""

    vectors: list[list[float]]
    input_tokens: int


class Embedder(Protocol):
    """A provider's embedding model."""

    model: str

    def embed(self, texts: Sequence[str]) -> Embedded:
        """One vector per text; raises when the provider cannot answer."""
        ...


def pack(vector: Sequence[float]) -> str:
    """A vector as base64 float32, after scaling it to unit length (so a dot product is the cosine)."""
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *(v / norm for v in vector))).decode()


def unpack(packed: str) -> list[float]:
    """The vector `pack` stored."""
    raw = base64.b64decode(packed)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def token_bound(texts: Sequence[str]) -> int:
    """The most input tokens `texts` can be billed as: a token is at least one byte of UTF-8."""
    return sum(len(t.encode()) for t in texts)


T = TypeVar("T")


def fuse(
    rankings: Sequence[Sequence[T]], key: Callable[[T], Hashable], limit: int, k: int = RRF_K
) -> list[tuple[T, float]]:
    """Reciprocal rank fusion: each item scores the sum of 1 / (k + rank) over the rankings it appears in (rank 1
    first), so an item both searches rank high beats one only a single search found. Returns (item, score), best
    first; an item found by several rankings is the one the first of them returned."""
    scores: dict[Hashable, float] = {}
    first: dict[Hashable, T] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            ident = key(item)
            scores[ident] = scores.get(ident, 0.0) + 1.0 / (k + rank)
            first.setdefault(ident, item)
    best = sorted(scores, key=lambda ident: -scores[ident])[:limit]
    return [(first[ident], scores[ident]) for ident in best]
