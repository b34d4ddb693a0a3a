"""The cache's lookup and store steps: exact id, then scoped ANN, then the threshold.

The cache fails open: if the embedder or the store fails, a lookup is a miss
and a store is skipped, each with a warning; the request still gets answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from service.cache.scope import CacheKey, cache_key
from service.cache.store import CacheEntry, EntryFilter, ScoredEntry, Vector, VectorStore
from service.domain import CacheStatus, CompletionRequest
from service.embedding.batcher import EmbeddingBatcher

log = structlog.get_logger(__name__)

FOREVER_S = 100 * 365 * 24 * 3600  # what "no TTL" means for an entry's expiry


@dataclass(frozen=True)
class CacheHit:
    status: CacheStatus
    similarity: float
    entry: CacheEntry


@dataclass(frozen=True)
class Lookup:
    """What a lookup found, and what the store step can reuse (never embed twice)."""

    key: CacheKey
    hit: CacheHit | None = None
    vector: Vector | None = None


@dataclass(frozen=True)
class Answer:
    """What the provider returned, as the cache stores it."""

    content: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class SemanticCache:
    """Scoped semantic cache over a `VectorStore`, embedding through an `EmbeddingBatcher`."""

    def __init__(
        self,
        store: VectorStore,
        embedder: EmbeddingBatcher,
        *,
        similarity_min: float,
        search_limit: int = 3,
        ttl_s: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.similarity_min = similarity_min
        self._search_limit = search_limit
        self._ttl_s = ttl_s
        self._clock = clock

    def key_for(self, request: CompletionRequest) -> CacheKey:
        return cache_key(request, self.embedder.model_id)

    async def lookup(self, request: CompletionRequest) -> Lookup:
        """Exact match by id first; else the nearest live entry in scope above the threshold."""
        key = self.key_for(request)
        try:
            exact = await self._exact(key)
            if exact is not None:
                return Lookup(key, hit=exact)
            vector = await self.embedder.embed(key.text)
            found = await self.store.search(
                vector, key.tenant, key.scope, self._clock(), self._search_limit
            )
        except Exception as error:
            log.warning("cache lookup failed; treating as a miss", error=repr(error))
            return Lookup(key)
        return Lookup(key, hit=self._best(found), vector=vector)

    async def _exact(self, key: CacheKey) -> CacheHit | None:
        entry = await self.store.get(key.point_id)
        if entry is None or entry.expires_at <= self._clock():
            return None
        if entry.tenant != key.tenant or entry.scope != key.scope:
            return None  # cannot happen with uuid5 ids; checked because failing closed is cheap
        return CacheHit(CacheStatus.EXACT_HIT, 1.0, entry)

    def _best(self, found: Sequence[ScoredEntry]) -> CacheHit | None:
        for candidate in found:
            if candidate.similarity >= self.similarity_min:
                return CacheHit(CacheStatus.SEMANTIC_HIT, candidate.similarity, candidate.entry)
        return None

    async def store_answer(self, lookup: Lookup, answer: Answer) -> None:
        """Cache `answer` under `lookup.key`, reusing the lookup's vector when it has one."""
        key = lookup.key
        try:
            vector = (
                lookup.vector if lookup.vector is not None else await self.embedder.embed(key.text)
            )
            now = self._clock()
            entry = CacheEntry(
                tenant=key.tenant,
                namespace=key.namespace,
                scope=key.scope,
                model=answer.model,
                question=key.text,
                content=answer.content,
                finish_reason=answer.finish_reason,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                cost_usd=answer.cost_usd,
                created_at=now,
                expires_at=now + (self._ttl_s or FOREVER_S),
            )
            await self.store.upsert(key.point_id, vector, entry)
        except Exception as error:
            log.warning("cache store failed; answer not cached", error=repr(error))

    async def purge_expired(self) -> int:
        """Delete every entry whose TTL has run out; returns how many."""
        return await self.store.delete(EntryFilter(expired_at=self._clock()))

    async def invalidate(self, selector: EntryFilter) -> int:
        return await self.store.delete(selector)

    async def live_entries(self, tenant: str, namespace: str | None) -> int:
        return await self.store.count(
            EntryFilter(tenant=tenant, namespace=namespace, live_at=self._clock())
        )
