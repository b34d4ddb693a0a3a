"""Builds the service's parts from the Settings, and closes them again."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from service.cache.factory import build_store
from service.cache.guard import NearMissGuard
from service.cache.scope import upstream_identity
from service.cache.semantic import SemanticCache, ThresholdVerifier, Verifier
from service.cache.stats import CacheStats
from service.cache.store import VectorStore
from service.cache.verify.judges import AnswerJudge, build_judge
from service.cache.verify.learning import Learning
from service.cache.verify.prior import load_prior
from service.cache.verify.verifier import BudgetSettings, HitDecider, VerifyState
from service.config import SecuritySettings, Settings, UpstreamSettings, VerifySettings
from service.embedding.base import Embedder
from service.embedding.batcher import EmbeddingBatcher
from service.embedding.factory import build_embedder
from service.errors import UnknownModelError
from service.llm.catalogue import Catalogue, load_catalogue
from service.llm.provider import ProviderAnswer
from service.llm.resilience import (
    ResilienceOptions,
    ResilientProvider,
    RetryPolicy,
    build_resilient_provider,
)
from service.llm.simulator_probe import simulator_behind
from service.metrics import Metrics
from service.pipeline.admin import CacheAdmin
from service.pipeline.ledger import Ledger
from service.pipeline.maintenance import Maintenance
from service.pipeline.request import CachingPolicy, RequestPipeline, Upstream
from service.pipeline.seed import Seeder
from service.ratelimit import InMemoryRateLimiter, RateLimiter, RedisRateLimiter
from service.routing.router import Router, build_router
from service.telemetry import Telemetry
from service.tracing import build_tracing
from service.validation import Limits

Closer = Callable[[], Awaitable[None]]


@dataclass
class App:
    """The running parts of one service instance, built by `build_app`.

    The doors (gRPC, HTTP) call `pipeline` and `admin`, and list the models of
    `catalogue`; the server starts `maintenance` and serves `metrics`; `cache`
    and `telemetry` are here for the operator's tools and tests, not for the doors.
    """

    pipeline: RequestPipeline
    admin: CacheAdmin
    maintenance: Maintenance
    cache: SemanticCache
    telemetry: Telemetry
    catalogue: Catalogue
    closers: list[Closer] = field(default_factory=list)

    @property
    def metrics(self) -> Metrics:
        """The Prometheus metrics every part of this instance records into."""
        return self.telemetry.metrics

    async def aclose(self) -> None:
        """Stop the upkeep loop, then close every part, last built first."""
        await self.maintenance.aclose()
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


async def build_app(
    settings: Settings,
    embedder: Embedder | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    simulated: bool = False,
) -> App:
    """Wire store, embedder, providers, router, verification and pipeline.

    `embedder` may be passed in pre-loaded; `environ` supplies the catalogue's
    `${VAR}` substitutions and provider API keys (the CLI passes `os.environ`).
    `simulated`: the upstream is the built-in simulator (a scope of its own).

    Raises:
        ValueError: no upstream base URL is configured, or the catalogue is invalid.
        StartupError: the store cannot be opened, or is damaged and
            SEMCACHE_ON_STORE_DAMAGE=refuse.
    """
    metrics = Metrics(max_tenants=settings.metrics_max_tenants)
    catalogue = load_settings_catalogue(settings, environ)
    batcher, store, router, behind = await _build_lookups(
        settings, embedder, catalogue, metrics, simulated
    )
    provider = build_provider(settings, catalogue, metrics)
    telemetry = Telemetry(metrics, build_tracing(settings.otlp_endpoint))
    upstream_id = settings_upstream_identity(settings, catalogue, simulated, behind)
    decider, learning = build_verification(settings, store, batcher, provider, catalogue)
    cache = build_cache(settings, store, batcher, telemetry, upstream_id, decider)
    watch(metrics, store, learning)
    closers: list[Closer] = [telemetry.tracing.aclose, batcher.close, store.close]
    closers += [cache.close, provider.close, learning.aclose]
    upstream = Upstream(provider, router, settings.upstream_timeout_s)
    return assemble_app(
        settings, cache, upstream, catalogue, telemetry, closers, learning, simulated or behind
    )


async def _build_lookups(
    settings: Settings,
    embedder: Embedder | None,
    catalogue: Catalogue,
    metrics: Metrics,
    simulated: bool,
) -> tuple[EmbeddingBatcher, VectorStore, Router, bool]:
    """The embedder's batcher, the store, the router, and whether the providers are
    semcache's simulator: asked meanwhile, its round trips overlapping the rest."""
    probe = asyncio.ensure_future(probe_for_simulator(catalogue, simulated))
    try:
        batcher = build_batcher(settings, embedder or load_embedder(settings), metrics)
        store = await build_store(settings, batcher.dim, batcher.model_id)
        model = batcher.embedder
        router = await asyncio.to_thread(build_settings_router, settings, catalogue, model)
        return batcher, store, router, await probe
    finally:
        probe.cancel()


async def probe_for_simulator(catalogue: Catalogue, simulated: bool) -> bool:
    """Whether a provider of `catalogue` answers as `semcache simulate-upstream` (never
    asked with `simulated`: the built-in simulator has its own identity already)."""
    if simulated:
        return False
    endpoints = [
        (spec.base_url, spec.api_key) for spec in catalogue.providers.values() if spec.base_url
    ]
    return await simulator_behind(endpoints)


def build_verification(
    settings: Settings,
    store: VectorStore,
    batcher: EmbeddingBatcher,
    provider: ResilientProvider,
    catalogue: Catalogue,
) -> tuple[HitDecider, Learning]:
    """The hit decision and what learns after it, sharing one live prior.

    Raises:
        ValueError: SEMCACHE_JUDGE_MODEL names no model of the catalogue, or the prior
            file (SEMCACHE_PRIOR_PATH) cannot be read.
    """
    state = VerifyState(load_prior(settings.prior_path))
    judge = build_settings_judge(settings, batcher, provider, catalogue)
    decider = HitDecider(state, budget_settings(settings.verify, settings.near_miss_guard))
    return decider, Learning(state, store, judge)


def watch(metrics: Metrics, store: VectorStore, learning: Learning) -> None:
    """Let `metrics` read the store's health and verification's counters at each scrape."""
    metrics.watch_store(lambda: store.health().writable, lambda: store.health().missing_entries)
    metrics.watch_verification(learning.snapshot)


def build_provider(settings: Settings, catalogue: Catalogue, metrics: Metrics) -> ResilientProvider:
    """The resilient dispatcher over the catalogue's providers, watched by `metrics`."""
    provider = build_resilient_provider(
        catalogue,
        resilience_options(settings.upstream),
        on_group=lambda size: metrics.observe_batch_size("upstream", size),
    )
    metrics.watch_providers(provider.breaker_states, provider.queue_depths)
    return provider


def build_batcher(settings: Settings, embedder: Embedder, metrics: Metrics) -> EmbeddingBatcher:
    """The embedding batcher over `embedder`, recording into `metrics`."""
    return EmbeddingBatcher(
        embedder,
        settings.embedding_max_batch,
        on_batch=lambda size: metrics.observe_batch_size("embed", size),
        memo_size=settings.embedding_memo_size,
        on_embed=metrics.record_embedding,
        workers=settings.embedding_workers,
    )


def build_cache(
    settings: Settings,
    store: VectorStore,
    batcher: EmbeddingBatcher,
    telemetry: Telemetry,
    upstream_id: str,
    decider: HitDecider | None = None,
) -> SemanticCache:
    """The semantic cache over `store`, embedding through `batcher`."""
    return SemanticCache(
        store,
        batcher,
        build_verifier(settings),
        search_limit=settings.search_limit,
        ttl_s=settings.ttl_s,
        max_entries_per_tenant=settings.max_entries_per_tenant,
        telemetry=telemetry,
        upstream_id=upstream_id,
        decider=decider,
    )


def budget_settings(verify: VerifySettings, near_miss_guard: bool) -> BudgetSettings | None:
    """The error budget the settings ask for; None when the guard's accept decides.

    The budget needs the near-miss guard: its calibrated score is what the prior maps.
    """
    if not (verify.error_budget and near_miss_guard):
        return None
    return BudgetSettings(
        verify.max_error_rate,
        dict(verify.max_error_rate_by_namespace),
        verify.exploration_share,
        verify.audit_share,
    )


def build_settings_judge(
    settings: Settings, batcher: EmbeddingBatcher, provider: ResilientProvider, catalogue: Catalogue
) -> AnswerJudge:
    """The answer judge that explorations are compared with (SEMCACHE_JUDGE).

    Raises:
        ValueError: SEMCACHE_JUDGE_MODEL names no model of the catalogue.
    """
    try:
        return build_judge(settings, batcher, provider, catalogue)
    except UnknownModelError as error:
        raise ValueError(f"SEMCACHE_JUDGE_MODEL: {error}") from None


async def charge_judge_call(
    ledger: Ledger, limiter: RateLimiter, tenant: str, answer: ProviderAnswer
) -> None:
    """An `llm` judge's call, as the judged tenant's spend and tokens."""
    ledger.spent(tenant, answer, ledger.cost_usd(answer))
    await limiter.spend_tokens(tenant, answer.usage.total_tokens)


def _ledger(
    catalogue: Catalogue,
    stats: CacheStats,
    telemetry: Telemetry,
    limiter: RateLimiter,
    learning: Learning | None,
) -> Ledger:
    """The books of spend and savings; an `llm` judge's calls are booked there too."""
    ledger = Ledger(catalogue, stats, telemetry.metrics)
    if learning is not None:
        learning.charge_judge_calls(functools.partial(charge_judge_call, ledger, limiter))
    return ledger


def settings_limits(settings: Settings) -> Limits:
    """The request size limits the settings set."""
    return Limits(
        settings.max_prompt_bytes,
        settings.max_messages,
        settings.max_tokens_limit,
        settings.max_ttl_s,
        settings.max_tools_json_bytes,
    )


def assemble_app(
    settings: Settings,
    cache: SemanticCache,
    upstream: Upstream,
    catalogue: Catalogue,
    telemetry: Telemetry,
    closers: list[Closer],
    learning: Learning | None = None,
    simulator_upstream: bool = False,
) -> App:
    """The request pipeline, administration and upkeep over the built parts;
    `closers` (closed last built first) gain the rate limiter's. `simulator_upstream`:
    the providers are semcache's simulator, whose answers may then be cached."""
    stats, limits = CacheStats(), settings_limits(settings)
    limiter = build_limiter(settings.security)
    telemetry.metrics.watch_hit_rates(stats.hit_counts)
    ledger = _ledger(catalogue, stats, telemetry, limiter, learning)
    pipeline = RequestPipeline(
        cache=cache,
        upstream=upstream,
        catalogue=catalogue,
        ledger=ledger,
        limits=limits,
        limiter=limiter,
        telemetry=telemetry,
        policy=CachingPolicy(
            settings.max_cacheable_temperature, settings.cache_tool_calls, simulator_upstream
        ),
        learning=learning,
    )
    return App(
        pipeline=pipeline,
        admin=CacheAdmin(cache, stats, _seeder(cache, catalogue, limits, settings), learning),
        maintenance=Maintenance(cache, settings.purge_interval_s, settings.index_after_points),
        cache=cache,
        telemetry=telemetry,
        catalogue=catalogue,
        closers=[*closers, limiter.aclose],
    )


def load_settings_catalogue(settings: Settings, environ: Mapping[str, str] | None) -> Catalogue:
    """The catalogue file, with providers that name no URL sent to the default upstream.

    Raises:
        ValueError: the file is invalid, or no default upstream is configured.
    """
    if not settings.upstream_base_url:
        raise ValueError("no upstream configured: set SEMCACHE_UPSTREAM_BASE_URL")
    api_key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    catalogue = load_catalogue(settings.catalogue_path, environ or {})
    return catalogue.with_default_base_url(settings.upstream_base_url, api_key)


def settings_upstream_identity(
    settings: Settings, catalogue: Catalogue, simulated: bool, simulator_behind: bool = False
) -> str:
    """The upstream identity every cache scope carries: SEMCACHE_UPSTREAM_ID when set,
    else derived from the catalogue's providers; the simulator's own, or one marked as
    a simulator's (`simulator_behind`), otherwise."""
    providers = [(name, spec.base_url or "") for name, spec in catalogue.providers.items()]
    return upstream_identity(providers, settings.upstream_id, simulated, simulator_behind)


def resilience_options(settings: UpstreamSettings) -> ResilienceOptions:
    retry = RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        base_delay_s=settings.retry_base_delay_s,
        max_delay_s=settings.retry_max_delay_s,
    )
    return ResilienceOptions(
        retry=retry,
        breaker_failures=settings.breaker_failures,
        breaker_cooldown_s=settings.breaker_cooldown_s,
    )


def build_settings_router(settings: Settings, catalogue: Catalogue, embedder: Embedder) -> Router:
    """The router the settings ask for (blocking: embeds the labelled examples once)."""
    uses_examples = settings.routing_strategy != "rules"
    return build_router(
        catalogue,
        settings.routing_strategy,
        settings.routing_examples_path if uses_examples else None,
        embedder.embed if uses_examples else None,
        confidence_min=settings.routing_confidence_min,
        k=settings.routing_k,
    )


def build_limiter(settings: SecuritySettings) -> RateLimiter:
    """Per-tenant limits in Redis when a URL is set (shared by replicas), else in memory."""
    rpm, tpm = settings.rate_limit_requests_per_minute, settings.rate_limit_tokens_per_minute
    if settings.rate_limit_redis_url:
        return RedisRateLimiter(settings.rate_limit_redis_url, rpm, tpm)
    return InMemoryRateLimiter(rpm, tpm)


def build_verifier(settings: Settings) -> Verifier:
    """The near-miss guard, or a plain threshold, as the settings say."""
    floor = settings.effective_similarity_min
    if settings.near_miss_guard:
        return NearMissGuard(floor, settings.guard_accept_min, settings.context_similarity_min)
    return ThresholdVerifier(floor, settings.context_similarity_min)


def _seeder(
    cache: SemanticCache, catalogue: Catalogue, limits: Limits, settings: Settings
) -> Seeder:
    return Seeder(cache, catalogue, limits, settings.max_cacheable_temperature)
