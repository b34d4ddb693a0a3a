"""The request path: validate → exact lookup → embed → ANN lookup → upstream → store.

Knows nothing of gRPC: the servicer converts protos to `CompletionRequest`
and back. See DESIGN.md ("The path of one request") for the whole picture.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import structlog

from service.batching.coalesce import Coalescer
from service.cache.semantic import Answer, CacheHit, Lookup, SemanticCache
from service.cache.stats import CacheStats, TenantCounters
from service.cache.store import EntryFilter
from service.domain import (
    CachePolicy,
    CacheStatus,
    Completion,
    CompletionRequest,
    Usage,
)
from service.errors import InvalidRequestError, UpstreamTimeoutError
from service.llm.pricing import ModelPrice
from service.llm.provider import Provider, ProviderAnswer, ProviderCall
from service.validation import Limits, check_name, validate

log = structlog.get_logger(__name__)

# Keep a little of the caller's deadline for our own reply.
_DEADLINE_MARGIN_S = 0.05
_REPLAY_CHUNK = re.compile(r"\S+\s*|\s+")
_STORABLE_FINISH_REASONS = frozenset({"stop"})


@dataclass(frozen=True)
class CachingPolicy:
    """What may be cached, beyond what each request asks for.

    `max_temperature`: requests sampled hotter than this skip the cache (their
    answers are meant to vary); None caches every temperature. Unset
    temperatures are cached. `cache_tool_calls`: store answers that are tool
    calls (off by default: a tool call usually depends on state outside the prompt).
    """

    max_temperature: float | None = 1.0
    cache_tool_calls: bool = False


@dataclass(frozen=True)
class TenantStats:
    tenant: str
    entries: int
    counters: TenantCounters


@dataclass(frozen=True)
class Invalidation:
    """Which of a tenant's entries to delete; see InvalidateCacheRequest."""

    tenant: str
    namespace: str | None = None
    model: str | None = None
    older_than_s: float = 0.0
    everything: bool = False


class Gateway:
    """Answers completion requests from the cache or the provider, and keeps score."""

    def __init__(
        self,
        *,
        cache: SemanticCache,
        provider: Provider,
        prices: Mapping[str, ModelPrice],
        default_model: str,
        upstream_timeout_s: float,
        limits: Limits,
        policy: CachingPolicy | None = None,
        stats: CacheStats | None = None,
    ) -> None:
        self.cache = cache
        self.provider = provider
        self.stats = stats or CacheStats()
        self._misses: Coalescer[tuple[ProviderAnswer, float]] = Coalescer()
        self._prices = prices
        self._default_model = default_model
        self._upstream_timeout_s = upstream_timeout_s
        self._limits = limits
        self._policy = policy or CachingPolicy()

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer `request` in one piece.

        Identical misses in flight at the same time (same scope, same normalised
        question, same store policy) share one upstream call.

        Raises:
            InvalidRequestError: the request cannot be served as sent.
            UpstreamError: it missed the cache and the provider failed.
        """
        started = time.perf_counter()
        validate(request, self._limits)
        lookup = await self._lookup(request)
        if lookup is None:
            answer = await self.provider.complete(self._call(request))
            return self._answered(request, None, answer, self._cost_usd(answer), started)
        if lookup.hit is not None:
            return self._serve_hit(request, lookup.hit, started)
        key = f"{lookup.key.point_id}:{request.cache_policy.value}"
        (answer, cost_usd), leader = await self._misses.run(
            key, lambda: self._fetch_and_store(request, lookup)
        )
        if leader:
            return self._answered(request, lookup, answer, cost_usd, started)
        return self._answered(request, lookup, answer, 0.0, started, saved_usd=cost_usd)

    async def complete_many(
        self, requests: Sequence[CompletionRequest], max_concurrency: int
    ) -> list[Completion | Exception]:
        """Answer each request, at most `max_concurrency` at a time, in order.

        A failing item yields its exception in its place; the others carry on.
        """
        gate = asyncio.Semaphore(max_concurrency)

        async def one(request: CompletionRequest) -> Completion:
            async with gate:
                return await self.complete(request)

        results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        return [_item_result(result) for result in results]

    async def _fetch_and_store(
        self, request: CompletionRequest, lookup: Lookup
    ) -> tuple[ProviderAnswer, float]:
        answer = await self.provider.complete(self._call(request))
        cost_usd = self._cost_usd(answer)
        await self._store_if_allowed(request, lookup, answer, cost_usd)
        return answer, cost_usd

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Completion]:
        """Answer `request` as text deltas followed by one `Completion`.

        Nothing is cached unless the upstream stream ends normally; a caller that
        goes away mid-stream closes the upstream stream and stores nothing.

        Raises:
            InvalidRequestError: the request cannot be served as sent.
            UpstreamError: it missed the cache and the provider failed.
        """
        started = time.perf_counter()
        validate(request, self._limits)
        lookup = await self._lookup(request)
        if lookup is not None and lookup.hit is not None:
            for piece in _REPLAY_CHUNK.findall(lookup.hit.entry.content):
                yield piece
            yield self._serve_hit(request, lookup.hit, started)
            return
        upstream = self.provider.stream(self._call(request))
        try:
            async for event in upstream:
                if isinstance(event, ProviderAnswer):
                    cost_usd = self._cost_usd(event)
                    await self._store_if_allowed(request, lookup, event, cost_usd)
                    yield self._answered(request, lookup, event, cost_usd, started)
                else:
                    yield event
        finally:
            await upstream.aclose()

    async def _lookup(self, request: CompletionRequest) -> Lookup | None:
        """None when the cache is skipped entirely (bypass, or too hot to cache)."""
        if request.cache_policy is CachePolicy.BYPASS or self._too_hot(request):
            return None
        if request.cache_policy is CachePolicy.REFRESH:
            return Lookup(self.cache.key_for(request))
        return await self.cache.lookup(request)

    def _too_hot(self, request: CompletionRequest) -> bool:
        limit = self._policy.max_temperature
        temperature = request.sampling.temperature
        return limit is not None and temperature is not None and temperature > limit

    def _serve_hit(self, request: CompletionRequest, hit: CacheHit, started: float) -> Completion:
        entry = hit.entry
        self.stats.record(request.tenant, hit.status, 0.0, entry.cost_usd)
        return Completion(
            content=entry.content,
            model=entry.model,
            cache_status=hit.status,
            finish_reason=entry.finish_reason,
            usage=Usage(entry.prompt_tokens, entry.completion_tokens),
            similarity=hit.similarity,
            cost_saved_usd=entry.cost_usd,
            latency_ms=_elapsed_ms(started),
            cache_detail="exact" if hit.status is CacheStatus.EXACT_HIT else "ok",
            tool_calls_json=entry.tool_calls_json,
        )

    async def _store_if_allowed(
        self,
        request: CompletionRequest,
        lookup: Lookup | None,
        answer: ProviderAnswer,
        cost_usd: float,
    ) -> None:
        if lookup is not None and self._storable(request, answer):
            await self.cache.store_answer(lookup, _cache_answer(answer, cost_usd), request.ttl_s)

    def _answered(
        self,
        request: CompletionRequest,
        lookup: Lookup | None,
        answer: ProviderAnswer,
        cost_usd: float,
        started: float,
        saved_usd: float = 0.0,
    ) -> Completion:
        """The completion for an upstream answer; `saved_usd` > 0 when it was shared."""
        status = CacheStatus.BYPASS if lookup is None else CacheStatus.MISS
        self.stats.record(request.tenant, status, cost_usd, saved_usd)
        return Completion(
            content=answer.content,
            model=answer.model,
            cache_status=status,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            similarity=lookup.best_similarity if lookup else 0.0,
            cost_usd=cost_usd,
            cost_saved_usd=saved_usd,
            latency_ms=_elapsed_ms(started),
            cache_detail=self._miss_detail(request, lookup),
            tool_calls_json=answer.tool_calls_json,
        )

    def _miss_detail(self, request: CompletionRequest, lookup: Lookup | None) -> str:
        if lookup is None:
            return "temperature_above_cacheable" if self._too_hot(request) else "bypass"
        if request.cache_policy is CachePolicy.REFRESH:
            return "refresh"
        return lookup.detail

    def _storable(self, request: CompletionRequest, answer: ProviderAnswer) -> bool:
        if request.cache_policy is CachePolicy.NO_STORE:
            return False
        if answer.tool_calls_json:
            return self._policy.cache_tool_calls and answer.finish_reason == "tool_calls"
        return answer.finish_reason in _STORABLE_FINISH_REASONS and bool(answer.content.strip())

    def _call(self, request: CompletionRequest) -> ProviderCall:
        timeout_s = self._upstream_timeout_s
        if request.deadline_s is not None:
            timeout_s = min(timeout_s, request.deadline_s - _DEADLINE_MARGIN_S)
            if timeout_s <= 0:
                raise UpstreamTimeoutError("the caller's deadline left no time for the provider")
        return ProviderCall(
            model=request.model or self._default_model,
            messages=request.messages,
            sampling=request.sampling,
            timeout_s=timeout_s,
        )

    def _cost_usd(self, answer: ProviderAnswer) -> float:
        price = self._prices.get(answer.model)
        if price is None:
            return 0.0
        return price.cost_usd(answer.usage.prompt_tokens, answer.usage.completion_tokens)

    async def tenant_stats(self, tenant: str, namespace: str | None) -> TenantStats:
        """Counters and the live entry count for `tenant` (optionally one namespace)."""
        check_name("tenant", tenant)
        if namespace is not None:
            check_name("namespace", namespace)
        entries = await self.cache.live_entries(tenant, namespace)
        return TenantStats(tenant, entries, self.stats.for_tenant(tenant))

    async def invalidate(self, what: Invalidation) -> int:
        """Delete the tenant's entries that `what` selects; returns how many.

        Raises:
            InvalidRequestError: no filter was set and `everything` was not asked for,
                or a filter is malformed.
        """
        check_name("tenant", what.tenant)
        if what.namespace is not None:
            check_name("namespace", what.namespace)
        if what.older_than_s < 0:
            raise InvalidRequestError("older_than_s must be 0 (any age) or a positive number")
        has_filter = bool(what.namespace or what.model or what.older_than_s)
        if not has_filter and not what.everything:
            raise InvalidRequestError(
                "set namespace, model or older_than_s, or set all=true to delete every entry"
            )
        created_before = time.time() - what.older_than_s if what.older_than_s else None
        selector = EntryFilter(
            tenant=what.tenant,
            namespace=what.namespace,
            model=what.model,
            created_before=created_before,
        )
        return await self.cache.invalidate(selector)

    async def purge_forever(self, interval_s: float) -> None:
        """Delete expired entries every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                purged = await self.cache.purge_expired()
            except Exception as error:
                log.warning("ttl purge failed", error=repr(error))
                continue
            if purged:
                log.info("purged expired cache entries", entries=purged)


def _cache_answer(answer: ProviderAnswer, cost_usd: float) -> Answer:
    return Answer(
        content=answer.content,
        model=answer.model,
        finish_reason=answer.finish_reason,
        prompt_tokens=answer.usage.prompt_tokens,
        completion_tokens=answer.usage.completion_tokens,
        cost_usd=cost_usd,
        tool_calls_json=answer.tool_calls_json,
    )


def _item_result(result: Completion | BaseException) -> Completion | Exception:
    if isinstance(result, Exception | Completion):
        return result
    raise result  # CancelledError and friends are not an item's failure


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
