"""Prometheus metrics for the request path, served over HTTP at `/metrics`.

`Metrics` owns its own `CollectorRegistry` (never prometheus_client's global
one), so each service instance, and each test, has its own counters. The
gateway and interceptors call its `observe_*` and `record_*` methods, provider
state is read at scrape time (`watch_providers`), and
`start_metrics_server` serves the registry on its own port.

Series (labels in braces):

    semcache_requests_total{rpc, code, cache, model}   RPCs by outcome
    semcache_request_duration_seconds{rpc, cache}       whole-RPC latency
    semcache_stage_duration_seconds{stage}              lookup, embed, search, verify, route,
                                                        upstream, store
    semcache_time_to_first_token_seconds{cache}         streaming RPCs
    semcache_cache_lookups_total{result}                hit, miss, error (see `record_lookup`)
    semcache_cache_decisions_total{tenant, detail}      answers by cache_detail: exact, ok, or
                                                        why the cache did not serve (a reason)
    semcache_rpcs_in_flight                             calls being served now (both doors)
    semcache_overloaded_total{rpc}                      calls refused: SEMCACHE_MAX_CONCURRENT_RPCS
    semcache_tokens_total{tenant, model, kind}          tokens sent upstream (prompt, completion)
    semcache_saved_tokens_total{tenant, model, kind}    tokens a cache hit did not send
    semcache_cost_usd_total{tenant, model}              upstream spend
    semcache_saved_usd_total{tenant, model}             spend avoided by hits
    semcache_rate_limited_total{tenant, limit}          refusals (limit: requests, tokens)
    semcache_upstream_queue_depth{provider}             calls waiting for a provider slot
    semcache_batch_size{kind}                           items per batch (embed, search, …)
    semcache_embeddings_total{source}                   vectors from the model or the memo
    semcache_circuit_breaker_state{provider}            0 closed, 1 half-open, 2 open
    semcache_cache_stores_skipped_total{reason}         answers not cached: disk_full, store_error
    semcache_store_writable                             1 storing, 0 paused (disk full)
    semcache_verify_*{tenant, namespace, ...}           verified hits (see cache/verify/metrics.py)
    semcache_store_missing_entries                      entries the store lacked when it opened

The hit rate is derived, not stored: a gauge of the lifetime ratio would hide
today's behaviour behind last month's. Over five minutes:

    sum(rate(semcache_cache_lookups_total{result="hit"}[5m]))
      / sum(rate(semcache_cache_lookups_total[5m]))

Per-tenant labels are bounded: the first `max_tenants` tenants this process
counts (`SEMCACHE_METRICS_MAX_TENANTS`, 1,000 by default) are labelled by name,
later ones together as `OTHER_TENANTS`. Found from outside: in open mode the
tenant is the caller's to name (`x-tenant-id`), and each new one added about 26
series, never dropped; at 3,000 tenants a scrape of 6.8 MB held exact hits up to
271 ms.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.cache.verify.counters import VerificationCounters
from service.cache.verify.metrics import VerificationCollector

BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
LOOKUP_RESULTS = frozenset({"hit", "miss", "error"})
# From 0.1 ms: an exact hit takes about 0.15 ms in the service, and with 1 ms as the
# first bucket every hit fell in it, so the live page and the dashboard read any hit as
# 0.5 / 0.95 ms at p50 / p95, interpolated within that bucket (found from outside).
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MAX_TENANTS_LABELLED = 1_000
OTHER_TENANTS = "(other)"  # not a valid tenant name, so never one a caller uses


class TenantLabels:
    """The label of a tenant: its name for the first `limit` tenants seen (0: all), else
    `OTHER_TENANTS`. Read from the metrics server's thread too (a set: safe to share)."""

    def __init__(self, limit: int = MAX_TENANTS_LABELLED) -> None:
        self._limit = limit
        self._named: set[str] = set()

    def apart(self, tenant: str) -> bool:
        """Whether `tenant` is (or would be, when first seen) labelled by its own name."""
        return tenant in self._named or not self._limit or len(self._named) < self._limit

    def __call__(self, tenant: str) -> str:
        if tenant in self._named:
            return tenant
        if self._limit and len(self._named) >= self._limit:
            return OTHER_TENANTS
        self._named.add(tenant)
        return tenant


class _RequestMetrics:
    """The series of the request path: RPCs, lookups, decisions, latencies."""

    def __init__(
        self, registry: CollectorRegistry | None = None, max_tenants: int = MAX_TENANTS_LABELLED
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.tenant_label = TenantLabels(max_tenants)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._define_traffic()
        self._define_latency()

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: prometheus_client's lookup takes microseconds
        under its lock, and an exact hit records half a dozen series."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _define_traffic(self) -> None:
        r = self.registry
        self._requests = Counter(
            "semcache_requests",
            "RPCs handled, by status code, cache outcome and model.",
            ("rpc", "code", "cache", "model"),
            registry=r,
        )
        self._lookups = Counter(
            "semcache_cache_lookups",
            "Cache lookups by result: hit, miss, or error (the embedder or store failed and"
            " the lookup was served as a miss).",
            ("result",),
            registry=r,
        )
        self._decisions = Counter(
            "semcache_cache_decisions",
            "Answers by tenant and cache_detail: exact, ok (a hit), or why the cache did not"
            " serve (below_threshold, number_mismatch, no_candidates, bypass, refresh...).",
            ("tenant", "detail"),
            registry=r,
        )
        self._in_flight = Gauge(
            "semcache_rpcs_in_flight",
            "Calls of the cache service being served now (gRPC and HTTP).",
            registry=r,
        )
        self._overloaded = Counter(
            "semcache_overloaded",
            "RPCs refused with RESOURCE_EXHAUSTED because SEMCACHE_MAX_CONCURRENT_RPCS were"
            " in flight.",
            ("rpc",),
            registry=r,
        )

    def _define_latency(self) -> None:
        r = self.registry
        self._request_s = Histogram(
            "semcache_request_duration_seconds",
            "Whole-RPC latency.",
            ("rpc", "cache"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._stage_s = Histogram(
            "semcache_stage_duration_seconds",
            "Latency of one stage of the request path.",
            ("stage",),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._ttft_s = Histogram(
            "semcache_time_to_first_token_seconds",
            "Time to the first streamed token.",
            ("cache",),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    def observe_request(
        self, rpc: str, code: str, cache_status: str, model: str, seconds: float
    ) -> None:
        """One finished RPC: `code` is the gRPC status name ("OK", "UNAVAILABLE", ...),
        `cache_status` how it was served ("exact_hit", "semantic_hit", "miss", "bypass"),
        or "none" for an RPC that served no answer (failed, refused, admin, a batch).
        Lookups are not counted here: see `record_lookup`."""
        self._child(self._requests, rpc, code, cache_status, model).inc()
        self._child(self._request_s, rpc, cache_status).observe(seconds)

    def record_lookup(self, result: str) -> None:
        """One cache lookup, by what the cache did: "hit" (exact or semantic), "miss", or
        "error" (the embedder or store failed; the request went on as a miss).

        Raises:
            ValueError: `result` is none of those.
        """
        if result not in LOOKUP_RESULTS:
            raise ValueError(f"lookup result {result!r} is not one of {sorted(LOOKUP_RESULTS)}")
        self._child(self._lookups, result).inc()

    def record_cache_decision(self, tenant: str, detail: str) -> None:
        """One answer served to `tenant`, by its `cache_detail` ("" counts as "none")."""
        self._child(self._decisions, self.tenant_label(tenant), detail or "none").inc()

    def cache_decisions(self) -> dict[tuple[str, str], float]:
        """Answers so far by (tenant label, cache_detail), for the live page."""
        return {
            (sample.labels["tenant"], sample.labels["detail"]): sample.value
            for family in self._decisions.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    def request_duration_buckets(self) -> dict[tuple[str, str], list[tuple[float, float]]]:
        """Cumulative `semcache_request_duration_seconds` buckets by (rpc, cache):
        (upper bound in seconds, count) pairs, +Inf last. For the live page's percentiles."""
        buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for family in self._request_s.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    series = (sample.labels["rpc"], sample.labels["cache"])
                    upper_s = float(sample.labels["le"])
                    buckets.setdefault(series, []).append((upper_s, sample.value))
        return buckets

    def watch_rpcs_in_flight(self, count: Callable[[], float]) -> None:
        """Read how many RPCs of the cache service are being served from `count` at
        each scrape, instead of setting it twice per RPC (it must only read)."""
        self._in_flight.set_function(count)

    def record_overloaded(self, rpc: str) -> None:
        """One RPC refused because the bound on RPCs in flight was reached."""
        self._overloaded.labels(rpc).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Latency of one stage: "lookup", "embed", "search", "verify", "route", "upstream",
        "store"."""
        self._child(self._stage_s, stage).observe(seconds)

    @contextmanager
    def timed_stage(self, stage: str) -> Iterator[None]:
        """Time the body as `stage` (recorded whether or not it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - started)

    def observe_ttft(self, cache_status: str, seconds: float) -> None:
        """Time from the start of a streaming RPC to its first token."""
        self._ttft_s.labels(cache_status).observe(seconds)


class Metrics(_RequestMetrics):
    """The service's Prometheus series, in a registry of their own."""

    def __init__(
        self, registry: CollectorRegistry | None = None, max_tenants: int = MAX_TENANTS_LABELLED
    ) -> None:
        super().__init__(registry, max_tenants)
        self._hit_series: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}
        self._define_usage()
        self._define_capacity()

    def _define_usage(self) -> None:
        r = self.registry
        self._tokens = Counter(
            "semcache_tokens",
            "Tokens sent to and received from providers.",
            ("tenant", "model", "kind"),
            registry=r,
        )
        self._saved_tokens = Counter(
            "semcache_saved_tokens",
            "Tokens not spent because the cache answered.",
            ("tenant", "model", "kind"),
            registry=r,
        )
        self._cost = Counter(
            "semcache_cost_usd", "Upstream spend in US dollars.", ("tenant", "model"), registry=r
        )
        self._saved = Counter(
            "semcache_saved_usd",
            "Spend avoided by cache hits, in US dollars.",
            ("tenant", "model"),
            registry=r,
        )
        self._rate_limited = Counter(
            "semcache_rate_limited",
            "Requests refused by a rate limit.",
            ("tenant", "limit"),
            registry=r,
        )

    def _define_capacity(self) -> None:
        r = self.registry
        self._batch_size = Histogram(
            "semcache_batch_size",
            "Items per batch.",
            ("kind",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self._embeddings = Counter(
            "semcache_embeddings",
            "Vectors handed out, by source: model (a model run) or memo (a recent text).",
            ("source",),
            registry=r,
        )
        self._stores_skipped = Counter(
            "semcache_cache_stores_skipped",
            "Answers not cached, by reason: disk_full (storing paused) or store_error.",
            ("reason",),
            registry=r,
        )

    def record_usage(
        self,
        tenant: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        *,
        saved: bool,
    ) -> None:
        """Tokens and cost of one answer: spent upstream (a miss), or saved (a hit)."""
        tokens, cost = (self._saved_tokens, self._saved) if saved else (self._tokens, self._cost)
        tenant = self.tenant_label(tenant)
        self._child(tokens, tenant, model, "prompt").inc(max(0, prompt_tokens))
        self._child(tokens, tenant, model, "completion").inc(max(0, completion_tokens))
        self._child(cost, tenant, model).inc(max(0.0, cost_usd))

    def record_served_hit(
        self,
        tenant: str,
        detail: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        saved_usd: float,
    ) -> None:
        """One cache hit served: `record_cache_decision(tenant, detail)` and
        `record_usage(..., saved=True)` in one step, its four series found at once."""
        tenant = self.tenant_label(tenant)
        series = self._hit_series.get((tenant, detail, model))
        if series is None:
            series = self._hit_series[(tenant, detail, model)] = (
                self._child(self._decisions, tenant, detail or "none"),
                self._child(self._saved_tokens, tenant, model, "prompt"),
                self._child(self._saved_tokens, tenant, model, "completion"),
                self._child(self._saved, tenant, model),
            )
        decisions, prompt, completion, saved = series
        decisions.inc()
        prompt.inc(max(0, prompt_tokens))
        completion.inc(max(0, completion_tokens))
        saved.inc(max(0.0, saved_usd))

    def record_rate_limited(self, tenant: str, limit: str) -> None:
        """A request refused by the `limit` ("requests" or "tokens") limit."""
        self._rate_limited.labels(self.tenant_label(tenant), limit).inc()

    def record_embedding(self, source: str) -> None:
        """One vector handed out, from the "model" or the "memo" of recent texts."""
        self._child(self._embeddings, source).inc()

    def record_store_skipped(self, reason: str) -> None:
        """An answer that was not cached: "disk_full" or "store_error"."""
        self._stores_skipped.labels(reason).inc()

    def watch_store(self, writable: Callable[[], bool], missing: Callable[[], int]) -> None:
        """Expose whether the store takes new entries, and how many it lacked when it
        opened, read at every scrape (call once; the callbacks must only read)."""
        self.registry.register(_StoreCollector(writable, missing))

    def observe_batch_size(self, kind: str, size: int) -> None:
        """Items in one batch of `kind` ("embed", "search", "upstream")."""
        self._child(self._batch_size, kind).observe(size)

    def watch_providers(
        self,
        breaker_states: Callable[[], Mapping[str, str]],
        queue_depths: Callable[[], Mapping[str, int]],
    ) -> None:
        """Read each provider's breaker state and queue depth at every scrape (call once).

        The callbacks (e.g. the resilient dispatcher's `breaker_states` and
        `queue_depths`) run on the metrics server's thread: they must only read.
        """
        self.registry.register(_ProviderCollector(breaker_states, queue_depths))

    def watch_hit_rates(self, hit_counts: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        """Expose each tenant's hit ratio from its (hits, lookups), read at every scrape
        (call once; read-only)."""
        self.registry.register(_HitRateCollector(hit_counts, self.tenant_label))

    def watch_verification(
        self, snapshot: Callable[[], Mapping[tuple[str, str], VerificationCounters]]
    ) -> None:
        """Expose verification's counters and error estimates per (tenant, namespace),
        read at every scrape (call once; `snapshot` must only read)."""
        self.registry.register(VerificationCollector(snapshot, self.tenant_label))


class _ProviderCollector(Collector):
    def __init__(
        self,
        breaker_states: Callable[[], Mapping[str, str]],
        queue_depths: Callable[[], Mapping[str, int]],
    ) -> None:
        self._breaker_states = breaker_states
        self._queue_depths = queue_depths

    def describe(self) -> Iterable[Metric]:
        # Names only: the registry must not call the callbacks when registering.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        depth, breaker = self._families()
        for provider, waiting in self._queue_depths().items():
            depth.add_metric([provider], waiting)
        for provider, state in self._breaker_states().items():
            if state in BREAKER_STATE_VALUES:
                breaker.add_metric([provider], BREAKER_STATE_VALUES[state])
        return depth, breaker

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "semcache_upstream_queue_depth",
            "Upstream calls waiting for a provider slot.",
            labels=("provider",),
        )
        breaker = GaugeMetricFamily(
            "semcache_circuit_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=("provider",),
        )
        return depth, breaker


class _StoreCollector(Collector):
    def __init__(self, writable: Callable[[], bool], missing: Callable[[], int]) -> None:
        self._writable = writable
        self._missing = missing

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        writable, missing = self._families()
        writable.add_metric([], 1.0 if self._writable() else 0.0)
        missing.add_metric([], self._missing())
        return writable, missing

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        writable = GaugeMetricFamily(
            "semcache_store_writable",
            "1 while new answers are stored, 0 while storing is paused (disk full).",
        )
        missing = GaugeMetricFamily(
            "semcache_store_missing_entries",
            "Entries the store held before and lacked when this process opened it.",
        )
        return writable, missing


class _HitRateCollector(Collector):
    def __init__(
        self, hit_counts: Callable[[], Mapping[str, tuple[int, int]]], label: TenantLabels
    ) -> None:
        self._hit_counts = hit_counts
        self._label = label

    def describe(self) -> Iterable[Metric]:
        return (self._family(),)

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        labelled: dict[str, tuple[int, int]] = {}
        for tenant, (hits, lookups) in self._hit_counts().items():
            label = self._label(tenant)
            total_hits, total_lookups = labelled.get(label, (0, 0))
            labelled[label] = (total_hits + hits, total_lookups + lookups)
        for label, (hits, lookups) in labelled.items():
            family.add_metric([label], hits / lookups if lookups else 0.0)
        return (family,)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "semcache_cache_hit_ratio",
            "Hits over lookups per tenant on this replica since it started (sum"
            " semcache_cache_lookups_total across replicas for a fleet-wide rate).",
            labels=("tenant",),
        )


@dataclass
class MetricsServer:
    """A running `/metrics` endpoint (prometheus_client's HTTP server, in its own thread)."""

    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and free the port (blocks for up to half a second)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    async def aclose(self) -> None:
        """`close`, off the event loop."""
        await asyncio.to_thread(self.close)


def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serve `metrics` at http://host:port/metrics (port 0 picks a free one).

    Raises:
        OSError: the port could not be bound.
    """
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server.server_port, server, thread)
