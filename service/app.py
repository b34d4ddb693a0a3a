"""Builds the service's parts from the Settings, and closes them again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.cache.factory import build_store
from service.cache.guard import NearMissGuard
from service.cache.semantic import SemanticCache, ThresholdVerifier, Verifier
from service.config import Settings
from service.embedding.base import Embedder
from service.embedding.batcher import EmbeddingBatcher
from service.embedding.factory import build_embedder
from service.gateway import CachingPolicy, Gateway
from service.llm.openai_provider import OpenAIProvider
from service.llm.pricing import DEFAULT_PRICES
from service.validation import Limits

Closer = Callable[[], Awaitable[None]]


@dataclass
class App:
    """The running parts of one service instance."""

    gateway: Gateway
    closers: list[Closer] = field(default_factory=list)

    async def aclose(self) -> None:
        """Close every part, last built first."""
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


def load_embedder(settings: Settings) -> Embedder:
    """The embedding model the settings ask for (blocking: loads model files)."""
    return build_embedder(
        settings.embedding_backend,
        settings.embedding_model_path,
        settings.embedding_cache_dir,
        settings.embedding_threads,
    )


async def build_app(settings: Settings, embedder: Embedder | None = None) -> App:
    """Wire store, embedder, provider and gateway; `embedder` may be passed in pre-loaded.

    Raises:
        ValueError: no upstream base URL is configured.
    """
    if not settings.upstream_base_url:
        raise ValueError("no upstream configured: set SEMCACHE_UPSTREAM_BASE_URL")
    batcher = EmbeddingBatcher(embedder or load_embedder(settings), settings.embedding_max_batch)
    store = await build_store(settings, batcher.dim)
    api_key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    provider = OpenAIProvider(settings.upstream_base_url, api_key, settings.upstream_timeout_s)
    cache = SemanticCache(
        store,
        batcher,
        build_verifier(settings),
        search_limit=settings.search_limit,
        ttl_s=settings.ttl_s,
        max_entries_per_tenant=settings.max_entries_per_tenant,
    )
    gateway = Gateway(
        cache=cache,
        provider=provider,
        prices=DEFAULT_PRICES,
        default_model=settings.default_model,
        upstream_timeout_s=settings.upstream_timeout_s,
        limits=Limits(
            settings.max_prompt_bytes,
            settings.max_messages,
            settings.max_tokens_limit,
            settings.max_ttl_s,
        ),
        policy=CachingPolicy(settings.max_cacheable_temperature, settings.cache_tool_calls),
    )
    return App(gateway, [batcher.close, store.close, cache.close, provider.close])


def build_verifier(settings: Settings) -> Verifier:
    """The near-miss guard, or a plain threshold, as the settings say."""
    floor = settings.effective_similarity_min
    if settings.near_miss_guard:
        return NearMissGuard(floor, settings.guard_accept_min, settings.context_similarity_min)
    return ThresholdVerifier(floor, settings.context_similarity_min)
