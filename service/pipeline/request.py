"""The path of one request: validate → exact lookup → embed → ANN lookup → upstream → store.

Knows nothing of transports: a door (gRPC, HTTP) converts its messages to a
`CompletionRequest` and back. See docs/DESIGN.md ("The path of one request").
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import structlog

from service.batching.coalesce import Coalescer
from service.cache.semantic import Answer, CacheHit, Lookup, SemanticCache
from service.cache.verify.learning import Learning
from service.domain import CachePolicy, CacheStatus, Completion, CompletionRequest
from service.errors import UpstreamError, UpstreamRejectedError, UpstreamTimeoutError
from service.llm.catalogue import Catalogue, estimate_usage
from service.llm.provider import Provider, ProviderAnswer, ProviderCall
from service.pipeline.hooks import LearningHooks
from service.pipeline.ledger import Ledger, UpstreamReceipt
from service.pipeline.quota import Quota
from service.ratelimit import RateLimiter
from service.routing.router import RouteDecision, Router
from service.telemetry import Telemetry
from service.validation import Limits, validate

# Keep a little of the caller's deadline for our own reply.
_DEADLINE_MARGIN_S = 0.05
_REPLAY_CHUNK = re.compile(r"\S+\s*|\s+")
log = structlog.get_logger(__name__)
_STORABLE_FINISH_REASONS = frozenset({"stop"})


@functools.cache
def _warn_simulated_once() -> None:
    log.warning(
        "an answer from semcache's upstream simulator is not cached: the provider did not"
        " answer as the simulator when the service started; restart the service once"
        " the simulator is up to cache its answers"
    )


@dataclass(frozen=True)
class CachingPolicy:
    """What may be cached, beyond what each request asks for.

    `max_temperature`: requests sampled hotter than this skip the cache (their
    answers are meant to vary); None caches every temperature. Unset
    temperatures are cached. `cache_tool_calls`: store answers that are tool
    calls (off by default: a tool call usually depends on state outside the prompt).
    `simulator_upstream`: the providers are semcache's simulator; otherwise an answer
    bearing its mark is not stored (`service.llm.simulator_probe`).
    """

    max_temperature: float | None = 1.0
    cache_tool_calls: bool = False
    simulator_upstream: bool = False

    def too_hot(self, request: CompletionRequest) -> bool:
        """Whether `request` is sampled too hot to be cached at all."""
        temperature = request.sampling.temperature
        limit = self.max_temperature
        return limit is not None and temperature is not None and temperature > limit

    def storable(self, request: CompletionRequest, answer: ProviderAnswer) -> bool:
        """Whether `answer` to `request` may be stored: complete, asked to be kept, and
        from the model the request named, if it named one (another model's answer, a
        fallback's, kept in the named model's scope would be served as that model's)."""
        if request.cache_policy is CachePolicy.NO_STORE:
            return False
        if request.model and answer.fallback_from is not None:
            return False
        if answer.simulated and not self.simulator_upstream:
            _warn_simulated_once()
            return False
        if answer.tool_calls_json:
            return self.cache_tool_calls and answer.finish_reason == "tool_calls"
        return answer.finish_reason in _STORABLE_FINISH_REASONS and bool(answer.content.strip())

    def miss_detail(self, request: CompletionRequest, lookup: Lookup | None) -> str:
        """Why an upstream answer was not a cache hit, as `cache_detail` says it."""
        if lookup is None:
            return "temperature_above_cacheable" if self.too_hot(request) else "bypass"
        if request.cache_policy is CachePolicy.REFRESH:
            return "refresh"
        return lookup.detail


@dataclass(frozen=True)
class Upstream:
    """Where misses go, and how long they may take."""

    provider: Provider
    router: Router
    timeout_s: float

    def call_for(self, request: CompletionRequest, model: str) -> ProviderCall:
        """The upstream call for `request` on `model`, within the caller's deadline.

        Raises:
            UpstreamTimeoutError: the deadline leaves no time for the provider.
        """
        timeout_s = self.timeout_s
        remaining_s = request.remaining_s()
        if remaining_s is not None:
            timeout_s = min(timeout_s, remaining_s - _DEADLINE_MARGIN_S)
            if timeout_s <= 0:
                raise UpstreamTimeoutError("the caller's deadline left no time for the provider")
        return ProviderCall(
            model=model, messages=request.messages, sampling=request.sampling, timeout_s=timeout_s
        )


class RequestPipeline:
    """Answers completion requests from the cache or the provider."""

    def __init__(
        self,
        *,
        cache: SemanticCache,
        upstream: Upstream,
        catalogue: Catalogue,
        ledger: Ledger,
        limits: Limits,
        limiter: RateLimiter,
        telemetry: Telemetry,
        policy: CachingPolicy | None = None,
        learning: Learning | None = None,
    ) -> None:
        self._cache = cache
        self._hooks = LearningHooks(learning)
        self._upstream = upstream
        self._catalogue = catalogue
        self._ledger = ledger
        self._limits = limits
        self._quota = Quota(limiter, telemetry.metrics)
        self._telemetry = telemetry
        self._policy = policy or CachingPolicy()
        self._misses: Coalescer[tuple[ProviderAnswer, float, bool]] = Coalescer()

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer `request` in one piece.

        Identical misses in flight together (scope, question, store policy) share a call.

        Raises:
            InvalidRequestError: the request cannot be served as sent.
            RateLimitedError: the tenant is over its request or token limit.
            UpstreamError: it missed the cache and the provider failed.
        """
        started, lookup = await self._begin(request)
        if lookup is not None and lookup.hit is not None:
            hit = self._ledger.hit(request.tenant, lookup.hit, started)
            return self._hooks.noted(request, hit, lookup)
        self._ledger.looked_up(request.tenant, lookup)
        route = self._route(request, lookup)
        if lookup is None:
            answer = await self._ask(request, route)
            spent = self._ledger.cost_usd(answer)
            return self._receipt(request, lookup, route, answer, started, spent)
        key = f"{lookup.key.point_id}:{request.cache_policy.value}"
        ask = functools.partial(self._ask_and_store, request, lookup, route)
        try:
            (answer, cost_usd, stored), first = await self._misses.run(
                key, ask, request.deadline_at(), retry_on=UpstreamTimeoutError
            )
        except UpstreamError as error:
            if (instead := _served_instead(self._cache, lookup, error)) is None:
                raise
            hit = self._ledger.hit(request.tenant, instead, started, instead=True)
            return self._hooks.noted(request, hit, dataclasses.replace(lookup, hit=instead))
        # The first caller the answer reached paid for it; each caller after it saved it.
        spent, saved = (cost_usd, 0.0) if first else (0.0, cost_usd)
        entry_id = lookup.key.point_id if stored else ""
        completion = self._receipt(
            request, lookup, route, answer, started, spent, saved, entry_id, prepaid=True
        )
        return self._hooks.noted(request, completion, lookup)

    async def complete_many(
        self, requests: Sequence[CompletionRequest], max_concurrency: int
    ) -> list[Completion | Exception]:
        """Answer each request, at most `max_concurrency` at a time, in order.

        A failing item yields its exception in its place; the others carry on.
        """
        return await _each_gated(self.complete, requests, max_concurrency)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        """Answer `request` as text deltas followed by one `Completion`.

        Nothing is cached unless the upstream stream ends whole; then the answer is
        stored before the final `Completion` names it (`entry_id`), as a unary one is.
        A caller gone mid-stream closes the upstream stream and stores nothing.

        Raises:
            InvalidRequestError, RateLimitedError, UpstreamError: as `complete`.
        """
        started, lookup = await self._begin(request)
        if lookup is not None and lookup.hit is not None:
            self._telemetry.metrics.observe_ttft(
                lookup.hit.status.value, time.perf_counter() - started
            )
            for piece in _REPLAY_CHUNK.findall(lookup.hit.entry.content):
                yield piece
            hit = self._ledger.hit(request.tenant, lookup.hit, started)
            yield self._hooks.noted(request, hit, lookup)
            return
        self._ledger.looked_up(request.tenant, lookup)
        route = self._route(request, lookup)
        async with aclosing(self._stream_upstream(request, lookup, route, started)) as events:
            async for event in events:
                yield event

    async def _stream_upstream(
        self,
        request: CompletionRequest,
        lookup: Lookup | None,
        route: RouteDecision,
        started: float,
    ) -> AsyncGenerator[str | Completion, None]:
        await self._quota.check_tokens(request.tenant)
        upstream = _metered_stream(self._upstream, self._quota, self._ledger, request, route.model)
        first = True
        try:
            async for event in upstream:
                if isinstance(event, ProviderAnswer):
                    await self._quota.spend_tokens(request.tenant, event.usage.total_tokens)
                    spent = self._ledger.cost_usd(event)
                    self._hooks.judge_later(lookup, event)
                    # Stored before the final message names it, as a unary answer is.
                    stored = await self._store_if_allowed(request, lookup, event, spent)
                    entry_id = lookup.key.point_id if stored and lookup is not None else ""
                    completion = self._receipt(
                        request, lookup, route, event, started, spent, 0.0, entry_id
                    )
                    yield self._hooks.noted(request, completion, lookup)
                    continue
                if first:
                    status = CacheStatus.BYPASS if lookup is None else CacheStatus.MISS
                    ttft_s = time.perf_counter() - started
                    self._telemetry.metrics.observe_ttft(status.value, ttft_s)
                    first = False
                yield event
        finally:
            await upstream.aclose()

    async def _begin(self, request: CompletionRequest) -> tuple[float, Lookup | None]:
        """Validate, count against the rate limit, look up: the start of every request."""
        started = time.perf_counter()
        validate(request, self._limits)
        if request.model:
            self._catalogue.require_model(request.model)
        await self._quota.admit(request.tenant)
        return started, await self._lookup(request)

    async def _lookup(self, request: CompletionRequest) -> Lookup | None:
        """None when the cache is skipped entirely (bypass, or too hot to cache)."""
        if request.cache_policy is CachePolicy.BYPASS or self._policy.too_hot(request):
            return None
        if request.cache_policy is CachePolicy.REFRESH:
            # Not served from the cache: a miss, in the lookups counter as in the stats.
            self._telemetry.metrics.record_lookup("miss")
            wait = self._upstream.router.uses_vectors and not request.model  # routed as a miss
            return await self._cache.refreshing(request, wait)
        with self._telemetry.stage("lookup"):
            return await self._cache.lookup(request)

    def _route(self, request: CompletionRequest, lookup: Lookup | None) -> RouteDecision:
        """The model for a miss, reusing the lookup's embedding (never a second one)."""
        vector = lookup.vector if lookup is not None else None
        with self._telemetry.stage("route"):
            return self._upstream.router.route_request(request, vector)

    async def _ask(self, request: CompletionRequest, route: RouteDecision) -> ProviderAnswer:
        """One unary upstream call, within the tenant's token budget."""
        await self._quota.check_tokens(request.tenant)
        with self._telemetry.stage("upstream"):
            answer = await self._upstream.provider.complete(
                self._upstream.call_for(request, route.model)
            )
        await self._quota.spend_tokens(request.tenant, answer.usage.total_tokens)
        return answer

    async def _ask_and_store(
        self, request: CompletionRequest, lookup: Lookup, route: RouteDecision
    ) -> tuple[ProviderAnswer, float, bool]:
        answer = await self._ask(request, route)
        self._hooks.judge_later(lookup, answer)
        cost_usd = self._ledger.cost_usd(answer)
        self._ledger.spent(request.tenant, answer, cost_usd)  # once, whoever still waits
        stored = await self._store_if_allowed(request, lookup, answer, cost_usd)
        return answer, cost_usd, stored

    async def _store_if_allowed(
        self, request: CompletionRequest, lookup: Lookup | None, answer: ProviderAnswer, cost: float
    ) -> bool:
        if lookup is None or not self._policy.storable(request, answer):
            return False
        return await self._cache.store_answer(lookup, _cache_answer(answer, cost), request.ttl_s)

    def _receipt(
        self, request: CompletionRequest, lookup: Lookup | None, route: RouteDecision,
        answer: ProviderAnswer, started: float, spent_usd: float, saved_usd: float = 0.0,
        entry_id: str = "", prepaid: bool = False,
    ) -> Completion:  # fmt: skip
        receipt = UpstreamReceipt(
            tenant=request.tenant, answer=answer, lookup=lookup, route=route,
            detail=self._policy.miss_detail(request, lookup), started=started,
            spent_usd=spent_usd, saved_usd=saved_usd, entry_id=entry_id, prepaid=prepaid,
        )  # fmt: skip
        return self._ledger.upstream(receipt)


def _metered_stream(
    upstream: Upstream, quota: Quota, ledger: Ledger, request: CompletionRequest, model: str
) -> AsyncGenerator[str | ProviderAnswer, None]:
    """The provider's stream for `request` on `model`, charged even when cut short."""
    call = upstream.call_for(request, model)
    charge = functools.partial(_charge_cut_stream, quota, ledger, request, call)
    return _charged_when_cut(upstream.provider.stream(call), charge)


async def _charged_when_cut(
    events: AsyncGenerator[str | ProviderAnswer, None],
    charge: Callable[[str], Awaitable[None]],
) -> AsyncGenerator[str | ProviderAnswer, None]:
    """`events`, and when they end without their `ProviderAnswer` (the caller went away,
    the provider broke off) after text came, `charge(text so far)`: the provider bills
    what it generated, and the tenant's token limit must see it (found from outside:
    cancelled streams were a way round the limit, and their spend was counted nowhere)."""
    received: list[str] = []
    answered = False
    try:
        async for event in events:
            answered = isinstance(event, ProviderAnswer)
            if not answered:
                received.append(str(event))
            yield event
    finally:
        await events.aclose()
        if received and not answered:
            await asyncio.shield(charge("".join(received)))


async def _charge_cut_stream(
    quota: Quota, ledger: Ledger, request: CompletionRequest, call: ProviderCall, text: str
) -> None:
    """Count a stream cut short at the usage it had reached, estimated: the prompt's
    tokens and those of the text received (no usage comes without the final event)."""
    usage = estimate_usage(call.messages, text)
    answer = ProviderAnswer(content=text, model=call.model, finish_reason="", usage=usage)
    cost_usd = ledger.cost_usd(answer)
    ledger.spent(request.tenant, answer, cost_usd)
    log.info("stream cut short; estimated usage counted", tokens=usage.total_tokens)
    await quota.spend_tokens(request.tenant, usage.total_tokens)


def _served_instead(cache: SemanticCache, lookup: Lookup, error: UpstreamError) -> CacheHit | None:
    """An audit's candidate, counted as served, when the upstream call meant to judge it
    failed (not when the provider refused the request itself)."""
    instead = lookup.fallback
    if instead is None or isinstance(error, UpstreamRejectedError):
        return None
    cache.decider.note_served_instead(lookup.key, instead.error_probability)
    log.info("an audit's upstream call failed; its candidate is served", error=str(error))
    return instead


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


async def _each_gated(
    answer: Callable[[CompletionRequest], Awaitable[Completion]],
    requests: Sequence[CompletionRequest],
    max_concurrency: int,
) -> list[Completion | Exception]:
    gate = asyncio.Semaphore(max_concurrency)

    async def one(request: CompletionRequest) -> Completion:
        async with gate:
            return await answer(request)

    results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
    return [_item_result(result) for result in results]


def _item_result(result: Completion | BaseException) -> Completion | Exception:
    if isinstance(result, Exception | Completion):
        return result
    raise result  # CancelledError and friends are not an item's failure
