"""The request path: validate → exact lookup → embed → ANN lookup → upstream → store.

Knows nothing of gRPC: the servicer converts protos to `CompletionRequest`
and back. See DESIGN.md ("The path of one request") for the whole picture.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Sequence
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
from service.errors import InvalidRequestError, RateLimitedError, UpstreamTimeoutError
from service.llm.catalogue import Catalogue
from service.llm.provider import Provider, ProviderAnswer, ProviderCall
from service.llm.resilience import ResilientAnswer
from service.ratelimit import InMemoryRateLimiter, RateLimiter
from service.routing.router import RouteDecision, Router
from service.telemetry import Telemetry
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

    tenant: str | None  # None: every tenant (an admin's call)
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
        catalogue: Catalogue,
        router: Router,
        upstream_timeout_s: float,
        limits: Limits,
        policy: CachingPolicy | None = None,
        stats: CacheStats | None = None,
        limiter: RateLimiter | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.cache = cache
        self.provider = provider
        self.stats = stats or CacheStats()
        self._misses: Coalescer[tuple[ProviderAnswer, float]] = Coalescer()
        self.catalogue = catalogue
        self.router = router
        self._upstream_timeout_s = upstream_timeout_s
        self._limits = limits
        self._policy = policy or CachingPolicy()
        self.limiter: RateLimiter = limiter or InMemoryRateLimiter(0, 0)
        self.telemetry = telemetry or Telemetry()
        self.metrics = self.telemetry.metrics
        self.metrics.watch_hit_rates(self.stats.hit_rates)

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer `request` in one piece.

        Identical misses in flight at the same time (same scope, same normalised
        question, same store policy) share one upstream call.

        Raises:
            InvalidRequestError: the request cannot be served as sent.
            UpstreamError: it missed the cache and the provider failed.
        """
        started, lookup = await self._begin(request)
        if lookup is not None and lookup.hit is not None:
            return self._serve_hit(request, lookup.hit, started)
        route = self._route(request, lookup)
        if lookup is None:
            answer = await self._upstream(request, route)
            return self._answered(request, None, route, answer, self._cost_usd(answer), started)
        key = f"{lookup.key.point_id}:{request.cache_policy.value}"
        (answer, cost_usd), leader = await self._misses.run(
            key, lambda: self._fetch_and_store(request, lookup, route)
        )
        saved_usd = 0.0 if leader else cost_usd
        spent_usd = cost_usd if leader else 0.0
        return self._answered(request, lookup, route, answer, spent_usd, started, saved_usd)

    async def _begin(self, request: CompletionRequest) -> tuple[float, Lookup | None]:
        """Validate, count against the rate limit, look up: the start of every request."""
        started = time.perf_counter()
        self._validate(request)
        await self._admit(request.tenant)
        return started, await self._lookup(request)

    def _validate(self, request: CompletionRequest) -> None:
        validate(request, self._limits)
        if request.model:
            self.catalogue.require_model(request.model)

    def _route(self, request: CompletionRequest, lookup: Lookup | None) -> RouteDecision:
        """The model for a miss, reusing the lookup's embedding (never a second one)."""
        vector = lookup.vector if lookup is not None else None
        with self.telemetry.stage("route"):
            return self.router.route(request.question, vector, request.model)

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

    async def _admit(self, tenant: str) -> None:
        """Count the request against the tenant's request limit (hits included)."""
        try:
            await self.limiter.acquire_request(tenant)
        except RateLimitedError as error:
            self.metrics.record_rate_limited(tenant, error.limit)
            raise

    async def _check_tokens(self, tenant: str) -> None:
        try:
            await self.limiter.check_tokens(tenant)
        except RateLimitedError as error:
            self.metrics.record_rate_limited(tenant, error.limit)
            raise

    async def _upstream(self, request: CompletionRequest, route: RouteDecision) -> ProviderAnswer:
        """One unary upstream call, within the tenant's token budget."""
        await self._check_tokens(request.tenant)
        with self.telemetry.stage("upstream"):
            answer = await self.provider.complete(self._call(request, route.model))
        await self.limiter.spend_tokens(request.tenant, answer.usage.total_tokens)
        return answer

    async def _fetch_and_store(
        self, request: CompletionRequest, lookup: Lookup, route: RouteDecision
    ) -> tuple[ProviderAnswer, float]:
        answer = await self._upstream(request, route)
        cost_usd = self._cost_usd(answer)
        await self._store_if_allowed(request, lookup, answer, cost_usd)
        return answer, cost_usd

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        """Answer `request` as text deltas followed by one `Completion`.

        Nothing is cached unless the upstream stream ends normally and the caller
        takes the final `Completion` and asks for more (as `async for` does once it
        has sent that message on): the answer is stored then, not before. A caller
        that goes away mid-stream, or before its final message was sent, closes the
        upstream stream and stores nothing.

        Raises:
            InvalidRequestError: the request cannot be served as sent.
            UpstreamError: it missed the cache and the provider failed.
        """
        started, lookup = await self._begin(request)
        if lookup is not None and lookup.hit is not None:
            self.metrics.observe_ttft(lookup.hit.status.value, time.perf_counter() - started)
            for piece in _REPLAY_CHUNK.findall(lookup.hit.entry.content):
                yield piece
            yield self._serve_hit(request, lookup.hit, started)
            return
        route = self._route(request, lookup)
        await self._check_tokens(request.tenant)
        upstream = self.provider.stream(self._call(request, route.model))
        first = True
        try:
            async for event in upstream:
                if isinstance(event, ProviderAnswer):
                    await self.limiter.spend_tokens(request.tenant, event.usage.total_tokens)
                    cost_usd = self._cost_usd(event)
                    yield self._answered(request, lookup, route, event, cost_usd, started)
                    # Resumed only once the caller has sent the final message on.
                    await self._store_if_allowed(request, lookup, event, cost_usd)
                    continue
                if first:
                    status = CacheStatus.BYPASS if lookup is None else CacheStatus.MISS
                    self.metrics.observe_ttft(status.value, time.perf_counter() - started)
                    first = False
                yield event
        finally:
            await upstream.aclose()

    async def _lookup(self, request: CompletionRequest) -> Lookup | None:
        """None when the cache is skipped entirely (bypass, or too hot to cache)."""
        if request.cache_policy is CachePolicy.BYPASS or self._too_hot(request):
            return None
        if request.cache_policy is CachePolicy.REFRESH:
            return Lookup(self.cache.key_for(request))
        with self.telemetry.stage("lookup"):
            return await self.cache.lookup(request)

    def _too_hot(self, request: CompletionRequest) -> bool:
        limit = self._policy.max_temperature
        temperature = request.sampling.temperature
        return limit is not None and temperature is not None and temperature > limit

    def _serve_hit(self, request: CompletionRequest, hit: CacheHit, started: float) -> Completion:
        entry = hit.entry
        self.stats.record(request.tenant, hit.status, 0.0, entry.cost_usd)
        self.metrics.record_usage(
            request.tenant,
            entry.model,
            entry.prompt_tokens,
            entry.completion_tokens,
            entry.cost_usd,
            saved=True,
        )
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
            tier=self._tier_of(entry.model),
            route_reason="cache",
        )

    def _tier_of(self, model: str) -> str:
        spec = self.catalogue.models.get(model)
        return spec.tier if spec is not None else ""

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
        route: RouteDecision,
        answer: ProviderAnswer,
        cost_usd: float,
        started: float,
        saved_usd: float = 0.0,
    ) -> Completion:
        """The completion for an upstream answer; `saved_usd` > 0 when it was shared."""
        status = CacheStatus.BYPASS if lookup is None else CacheStatus.MISS
        self.stats.record(request.tenant, status, cost_usd, saved_usd)
        usage = answer.usage
        self.metrics.record_usage(
            request.tenant,
            answer.model,
            usage.prompt_tokens,
            usage.completion_tokens,
            saved_usd or cost_usd,
            saved=saved_usd > 0,
        )
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
            tier=self._tier_of(answer.model) or route.tier,
            route_reason=_route_reason(route, answer),
            route_score=route.score,
            upstream_attempts=answer.attempts if isinstance(answer, ResilientAnswer) else 1,
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

    def _call(self, request: CompletionRequest, model: str) -> ProviderCall:
        timeout_s = self._upstream_timeout_s
        if request.deadline_s is not None:
            timeout_s = min(timeout_s, request.deadline_s - _DEADLINE_MARGIN_S)
            if timeout_s <= 0:
                raise UpstreamTimeoutError("the caller's deadline left no time for the provider")
        return ProviderCall(
            model=model,
            messages=request.messages,
            sampling=request.sampling,
            timeout_s=timeout_s,
        )

    def _cost_usd(self, answer: ProviderAnswer) -> float:
        spec = self.catalogue.models.get(answer.model)
        if spec is None:
            log.warning("no price for model; cost counted as 0", model=answer.model)
            return 0.0
        return spec.price.cost_usd(answer.usage.prompt_tokens, answer.usage.completion_tokens)

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
        if what.tenant is not None:
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

    async def maintain_forever(self, interval_s: float, index_after_points: int) -> None:
        """Every `interval_s` until cancelled: delete expired entries, and let the store
        rebuild its index once `index_after_points` new points lack one."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                purged = await self.cache.purge_expired()
                indexing = await self.cache.maintain(index_after_points)
            except Exception as error:
                log.warning("cache upkeep failed", error=repr(error))
                continue
            if purged:
                log.info("purged expired cache entries", entries=purged)
            if indexing:
                log.info("rebuilding the vector index in the background")


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


def _route_reason(route: RouteDecision, answer: ProviderAnswer) -> str:
    if isinstance(answer, ResilientAnswer) and answer.fallback_from:
        return f"fallback:{answer.fallback_from}"
    return route.reason


def _item_result(result: Completion | BaseException) -> Completion | Exception:
    if isinstance(result, Exception | Completion):
        return result
    raise result  # CancelledError and friends are not an item's failure


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
