"""The one place a vector store backend is chosen.

qdrant-client is imported only when a Qdrant server is configured, so the
embedded default does not pay for it at start-up.
"""

from __future__ import annotations

import structlog

from service.cache.edge_store import EdgeVectorStore
from service.cache.store import VectorStore
from service.config import Settings
from service.urls import shown_url

log = structlog.get_logger(__name__)


async def build_store(
    settings: Settings, dim: int, embedding_model: str | None = None
) -> VectorStore:
    """Qdrant server (or `:memory:`) when `qdrant_url` is set, else embedded Qdrant Edge.

    `embedding_model` (the embedder's `model_id`) is recorded beside an embedded
    store: opening one last opened with another model logs a warning.

    Raises:
        StartupError: the embedded store cannot be opened, or is damaged and
            `on_store_damage` is "refuse"; `StoreSchemaError` when an existing
            store or collection differs from what this version creates.
    """
    log.info("cache store", store=store_description(settings))
    if settings.qdrant_url:
        from service.cache.qdrant_store import QdrantVectorStore

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return await QdrantVectorStore.open(
            settings.qdrant_url,
            settings.qdrant_collection,
            dim,
            api_key=api_key,
            prefer_grpc=settings.qdrant_prefer_grpc,
            hnsw_ef=settings.hnsw_ef,
            storage=settings.vector_storage,
        )
    return EdgeVectorStore(
        settings.data_dir / settings.qdrant_collection,
        dim,
        settings.hnsw_ef,
        settings.vector_storage,
        min_free_bytes=settings.min_free_disk_mb * 1024 * 1024,
        on_damage=settings.on_store_damage,
        embedding_model=embedding_model,
        search_threads=settings.store_search_threads,
        index_after_points=settings.index_after_points,
        memo_entries=settings.store_memo_entries,
    )


def store_description(settings: Settings) -> str:
    """Which store the settings open, for the start-up log: a blank or mistyped
    SEMCACHE_QDRANT_URL falls back to the embedded store, and `:memory:` keeps
    nothing past the process, neither of which anything else would show."""
    if settings.qdrant_url == ":memory:":
        return "qdrant-client in process memory (emptied at every restart; for tests)"
    if settings.qdrant_url:
        where = shown_url(settings.qdrant_url)
        return f"Qdrant server at {where}, collection {settings.qdrant_collection}"
    return f"embedded Qdrant Edge in {settings.data_dir / settings.qdrant_collection}"
