"""The provider's embedding model, as the document library and the `rag` agent use it (events/documents/dense.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from events.documents.dense import Embedded
from workers.llm.provider import Provider


@dataclass
class ProviderEmbedder:
    """`model` at the OpenAI-compatible service `provider` talks to."""

    model: str
    provider: Provider
    wait: Callable[[float], None] | None = None  # how a retry waits (a job's: a cancel ends the wait)

    def embed(self, texts: Sequence[str]) -> Embedded:
        """One vector per text; raises LLMError when the service cannot answer."""
        return self.provider.embed(self.model, texts, self.wait)  # type: ignore[attr-defined]
