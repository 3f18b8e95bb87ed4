"""Hashed-term sparse vectors: a local embedding that needs no model download. Pure.

Text is split into lower-case words (stop words dropped, a plural `s` stripped); each word hashes to an index
(32-bit BLAKE2b); a document chunk's value per index is BM25's saturated term frequency, a query's is 1. Qdrant
multiplies each matching index by its inverse document frequency (the IDF modifier), so the score is BM25 without
length normalisation, computed by Qdrant over the chunks it indexes.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

MODEL = "sparse-hash-v1"  # names the method in the embedding cache; change it whenever the output changes
K1 = 1.2
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOP_WORDS = frozenset(
    "a an and are as at be but by can did do does for from had has have how i if in into is it its me my no not "  # noqa: SIM905
    "of on or our so than that the their them then there these they this to was we were what when where which who "
    "why will with you your".split()
)


@dataclass(frozen=True)
class SparseVector:
    """Indices and their values, indices ascending and unique."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def to_json(self) -> list[list[float]]:
        """[[index, value], …] for storage."""
        return [[i, v] for i, v in zip(self.indices, self.values, strict=True)]

    @classmethod
    def from_json(cls, pairs: list[list[float]]) -> SparseVector:
        """The vector `to_json` wrote."""
        return cls(tuple(int(p[0]) for p in pairs), tuple(float(p[1]) for p in pairs))


def terms(text: str, keep: frozenset[str] = frozenset()) -> list[str]:
    """The words of `text` that count for search, lower-case and lightly stemmed; stop words in `keep` count too."""
    found = []
    for word in _WORD.findall(text.lower()):
        if (word in STOP_WORDS and word not in keep) or (len(word) < 2 and not word.isdigit()):
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
        found.append(word)
    return found


def term_index(term: str) -> int:
    """A term's index: the same on every machine and in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "big")


def _vector(weights: Counter[int]) -> SparseVector:
    ordered = sorted(weights.items())
    return SparseVector(tuple(i for i, _ in ordered), tuple(round(float(v), 4) for _, v in ordered))


def document_vector(text: str) -> SparseVector:
    """A chunk's vector: BM25-saturated term frequencies."""
    counts = Counter(term_index(t) for t in terms(text))
    return _vector(Counter({i: tf * (K1 + 1) / (tf + K1) for i, tf in counts.items()}))


def query_vector(text: str) -> SparseVector:
    """A query's vector: 1 for each distinct term."""
    return _vector(Counter({term_index(t): 1 for t in set(terms(text))}))
