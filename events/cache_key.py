"""What makes two job requests the same request, for the response cache and in-flight sharing. Pure.

Two requests are the same when the same user asks the same agent and model the same (normalised) query, with the
same documents version, `max_tokens` and attachments, through the same provider. Metadata is left out: it labels
a job and never reaches an agent. A job in a session is never cached or shared (its earlier turns are context
that the key does not see); nor is one submitted with `cache: false`. docs/cache.md says why.

Semantic matching (off unless CACHE_SEMANTIC_THRESHOLD is set) compares queries only within a request's
partition: the same digest made without the query.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
KEY_VERSION = 1  # bump when what goes into the digest changes, so old entries are never read
SEMANTIC_AGENTS = frozenset({"query", "rag"})  # agents whose similar requests may share an answer


def normalise_query(query: str) -> str:
    """The query as the cache compares it: NFC, LF line ends, no trailing blanks on a line, no blank ends.

    Case and inner spacing are kept: both change answers of the code and math agents (`X` is not `x` to sympy,
    indentation is syntax to Python).
    """
    text = unicodedata.normalize("NFC", query).replace("\r\n", "\n").replace("\r", "\n")
    return _TRAILING_SPACE.sub("", text).strip()


@dataclass(frozen=True)
class CacheRequest:
    """Everything about a request that can change its answer."""

    user: str
    agent: str
    model: str
    query: str
    max_tokens: int
    docs_version: str
    provider: str
    attachments: Sequence[Any] = ()

    def digest(self) -> str:
        """The request's cache digest (hex); equal requests, and only they, share it."""
        return _sha256({**self._context(), "query": normalise_query(self.query)})

    def partition(self) -> str:
        """A digest (hex) of everything in `digest` but the query: a semantic match stays within it, so it never
        crosses users, agents, models, documents versions, `max_tokens`, providers or attachments."""
        return _sha256(self._context())

    def _context(self) -> dict[str, Any]:
        return {
            "v": KEY_VERSION,
            "user": self.user,
            "agent": self.agent,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "docs": self.docs_version,
            "provider": self.provider,
            "attachments": list(self.attachments),
        }


def _sha256(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cacheable(*, enabled: bool, ttl_s: int, session_id: str) -> bool:
    """Whether a request may be answered from the cache or share a run: asked for, cache on, no session."""
    return enabled and ttl_s > 0 and not session_id


def semantic(agent: str, threshold: float) -> bool:
    """Whether a cacheable request may also be answered from a similar one's entry: the threshold is on and the
    agent's answers do not hinge on exact characters (not `math`: `x` is not `X`; not `code`: indentation)."""
    return threshold > 0 and agent in SEMANTIC_AGENTS
