"""The model provider and the embedding model that the settings name, made once per worker process."""

from __future__ import annotations

import functools

from settings import Settings
from workers.llm.embeddings import ProviderEmbedder
from workers.llm.provider import Provider


def make_provider(settings: Settings) -> Provider:
    """The OpenAI-compatible provider when a key or base URL is set, else the offline one."""
    if settings.provider_mode == "openai":
        from workers.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(
            api_key=settings.openai_api_key or "not-needed",
            base_url=settings.openai_base_url,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )
    from workers.llm.offline import OfflineProvider

    return OfflineProvider(delay_ms=settings.offline_token_delay_ms)


def make_embedder(settings: Settings, provider: Provider) -> ProviderEmbedder | None:
    """The configured embedding model, or None (offline, or EMBEDDING_MODEL empty): sparse vectors only."""
    if not settings.embedding_model or not hasattr(provider, "embed"):
        return None
    return ProviderEmbedder(settings.embedding_model, provider)


@functools.cache
def process_provider() -> Provider:
    """This process's provider (made after the fork; workers/tasks.py clears it in each new pool process)."""
    return make_provider(Settings.from_env())
