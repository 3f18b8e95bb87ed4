"""The `rag` agent: answers from the job owner's own documents, citing document, chunk and score.

Its one tool, `search_documents`, searches only the owner's ready documents (events/documents). With a model, the model
reads the passages and answers with citations; offline, the answer is the best passages with their citations.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping

from events.catalog import AGENT_TYPES
from events.documents.billing import DocumentBill
from events.documents.cache import EmbeddingCache
from events.documents.index import Hit, LocalIndex, ServerIndex
from events.documents.library import DocumentLibrary
from events.money.prices import PriceBook
from events.store.clients import sync_client
from settings import Settings
from workers.agents.agent import AgentContext, Tool, tool_loop
from workers.llm.configured import make_embedder, process_provider
from workers.llm.provider import LLMError

SYSTEM = (
    "You answer from the user's own documents. Call search_documents with the words that matter, then answer "
    "only from the passages it returns, citing each fact as [document name, chunk N]. If the passages do not "
    "answer the question, say so."
)
RESULTS = 4
PASSAGE_CHARS = 600


@functools.cache
def default_library() -> DocumentLibrary:
    """This process's document library (made after the fork; tasks.py clears it in each new pool process)."""
    settings = Settings.from_env()
    client = sync_client(settings.redis, socket_timeout=30, connect_timeout=5)
    index: LocalIndex | ServerIndex = (
        ServerIndex.connect(settings.qdrant_url, settings.qdrant_api_key) if settings.qdrant_url else LocalIndex()
    )
    embedder = make_embedder(settings, process_provider())
    bill = DocumentBill(
        client, PriceBook(Path(settings.prices_file)), provider=settings.provider_mode, hold_ttl_s=settings.hold_ttl_s
    )
    return DocumentLibrary(client, index, EmbeddingCache(client), embedder=embedder, bill=bill)


def citation(hit: Hit) -> dict[str, Any]:
    """A hit as the `citations` metadata event lists it."""
    return {"document_id": hit.doc_id, "document": hit.name, "chunk": hit.chunk, "score": round(hit.score, 4)}


def format_hits(hits: list[Hit]) -> str:
    """The passages as the model (and the offline answer) reads them, each with its citation."""
    if not hits:
        return "No passage of your documents matches; upload documents with POST /api/v1/documents."
    lines = []
    for n, hit in enumerate(hits, 1):
        passage = " ".join(hit.text.split())
        if len(passage) > PASSAGE_CHARS:
            passage = passage[:PASSAGE_CHARS].rsplit(" ", 1)[0] + " …"
        lines.append(f'[{n}] "{hit.name}" ({hit.doc_id}), chunk {hit.chunk}, score {hit.score:.3f}: {passage}')
    return "\n".join(lines)


class RagAgent:
    """Questions about your documents: search, then an answer with citations."""

    spec = AGENT_TYPES["rag"]
    name = spec.name

    def __init__(self, library: Callable[[], DocumentLibrary] = default_library) -> None:
        self.library = library

    def search_tool(self, ctx: AgentContext) -> Tool:
        """`search_documents`, bound to the job's owner: no other user's document can ever be found."""
        owner = ctx.job.get("owner", "")

        def search(args: Mapping[str, Any]) -> str:
            query = str(args.get("query", "")).strip()
            if not query:
                raise ValueError("Give the words to search for as 'query'.")
            hits = self._search(ctx, owner, query) if owner else []
            ctx.events.emit("metadata", {"event": "citations", "citations": [citation(h) for h in hits]})
            return format_hits(hits)

        return Tool(
            name="search_documents",
            description="Search the user's uploaded documents; returns the best passages with their citations.",
            parameters={
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to look for."}},
                "required": ["query"],
            },
            run=search,
        )

    def _search(self, ctx: AgentContext, owner: str, query: str) -> list[Hit]:
        """Hybrid when the job can embed its query; by words alone when the provider cannot answer now."""
        library = self.library()
        try:
            return library.search(owner, query, RESULTS, ctx.embed)
        except LLMError as ex:
            ctx.events.emit("metadata", {"event": "dense_search_unavailable", "reason": str(ex)[:300]})
            return library.search(owner, query, RESULTS)

    def run(self, ctx: AgentContext) -> str:
        """Answer `ctx.query` from the owner's documents."""
        return tool_loop(ctx, SYSTEM, [self.search_tool(ctx)], self.spec)
