"""Observability: the /metrics endpoint as a scraper sees it, and optional tracing spans."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.cache.verify.counters import OTHER_NAMESPACES, VerificationCounters
from service.metrics import OTHER_TENANTS, Metrics, MetricsServer, start_metrics_server
from service.telemetry import Telemetry
from service.tracing import Tracing, build_tracing, tracing_with_exporter


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def served(metrics: Metrics) -> Iterator[MetricsServer]:
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    yield server
    server.close()


def scrape(server: MetricsServer) -> dict[str, list[Sample]]:
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert matching, f"no {name} sample with {labels}"
    return sum(matching)


def test_requests_are_counted_by_rpc_code_cache_and_model(
    metrics: Metrics, served: MetricsServer
) -> None:
    metrics.observe_request("Complete", "OK", "semantic_hit", "gpt-4o-mini", 0.004)
    metrics.observe_request("Complete", "OK", "miss", "gpt-4o", 0.8)
    metrics.observe_request("StreamComplete", "UNAVAILABLE", "miss", "gpt-4o", 0.1)
    samples = scrape(served)
    assert value(samples, "semcache_requests_total", rpc="Complete", cache="semantic_hit") == 1
    assert value(samples, "semcache_requests_total", code="UNAVAILABLE", model="gpt-4o") == 1
    assert value(samples, "semcache_request_duration_seconds_count", rpc="Complete") == 2
    assert value(samples, "semcache_request_duration_seconds_sum", cache="miss") == pytest.approx(
        0.9
    )


def test_lookups_are_counted_by_result_and_rpcs_are_not_lookups(
    metrics: Metrics, served: MetricsServer
) -> None:
    for result in ("hit", "hit", "miss", "error"):
        metrics.record_lookup(result)
    for cache_status in ("exact_hit", "miss", "bypass", "none"):
        metrics.observe_request("Complete", "OK", cache_status, "m", 0.01)
    samples = scrape(served)
    assert value(samples, "semcache_cache_lookups_total", result="hit") == 2
    assert value(samples, "semcache_cache_lookups_total", result="miss") == 1
    assert value(samples, "semcache_cache_lookups_total", result="error") == 1
    assert value(samples, "semcache_cache_lookups_total") == 4
    with pytest.raises(ValueError, match="bypass"):
        metrics.record_lookup("bypass")


def test_stage_and_first_token_latencies_are_histograms(
    metrics: Metrics, served: MetricsServer
) -> None:
    metrics.observe_stage("embed", 0.003)
    with metrics.timed_stage("upstream"):
        pass
    with pytest.raises(RuntimeError), metrics.timed_stage("lookup"):
        raise RuntimeError("the store failed")
    metrics.observe_ttft("miss", 0.2)
    samples = scrape(served)
    for stage in ("embed", "upstream", "lookup"):
        assert value(samples, "semcache_stage_duration_seconds_count", stage=stage) == 1
    assert value(samples, "semcache_stage_duration_seconds_bucket", stage="embed", le="0.005") == 1
    assert value(samples, "semcache_time_to_first_token_seconds_count", cache="miss") == 1


def test_tokens_and_cost_spent_and_saved_per_tenant(
    metrics: Metrics, served: MetricsServer
) -> None:
    metrics.record_usage("acme", "gpt-4o", 100, 50, 0.0125, saved=False)
    metrics.record_usage("acme", "gpt-4o", 100, 50, 0.0125, saved=True)
    metrics.record_usage("globex", "gpt-4o", 10, 5, 0.001, saved=True)
    metrics.record_rate_limited("acme", "tokens")
    samples = scrape(served)
    assert value(samples, "semcache_tokens_total", tenant="acme", kind="prompt") == 100
    assert value(samples, "semcache_tokens_total", tenant="acme", kind="completion") == 50
    assert value(samples, "semcache_saved_tokens_total", kind="completion") == 55
    assert value(samples, "semcache_cost_usd_total", tenant="acme") == pytest.approx(0.0125)
    assert value(samples, "semcache_saved_usd_total", tenant="globex") == pytest.approx(0.001)
    assert value(samples, "semcache_rate_limited_total", tenant="acme", limit="tokens") == 1


def test_batch_sizes_are_a_histogram(metrics: Metrics, served: MetricsServer) -> None:
    for size in (1, 16, 64):
        metrics.observe_batch_size("embed", size)
    samples = scrape(served)
    assert value(samples, "semcache_batch_size_count", kind="embed") == 3
    assert value(samples, "semcache_batch_size_bucket", kind="embed", le="16.0") == 2


def test_queue_depths_and_breaker_states_are_read_at_each_scrape(
    metrics: Metrics, served: MetricsServer
) -> None:
    states = {"openai": "closed", "vllm": "half_open"}
    depths = {"openai": 7, "vllm": 0}
    metrics.watch_providers(lambda: states, lambda: depths)
    samples = scrape(served)
    assert value(samples, "semcache_upstream_queue_depth", provider="openai") == 7
    assert value(samples, "semcache_circuit_breaker_state", provider="openai") == 0
    assert value(samples, "semcache_circuit_breaker_state", provider="vllm") == 1
    states["openai"], depths["openai"] = "open", 3
    samples = scrape(served)
    assert value(samples, "semcache_upstream_queue_depth", provider="openai") == 3
    assert value(samples, "semcache_circuit_breaker_state", provider="openai") == 2


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.record_rate_limited("acme", "requests")
    labels = {"tenant": "acme", "limit": "requests"}
    assert first.registry.get_sample_value("semcache_rate_limited_total", labels) == 1
    assert second.registry.get_sample_value("semcache_rate_limited_total", labels) is None


async def test_closing_the_server_frees_its_port(metrics: Metrics) -> None:
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    await server.aclose()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port), timeout=2),
    ):
        pass


# --- tracing ---------------------------------------------------------------------------


def test_tracing_without_its_extra_is_a_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found from outside: without the `tracing` extra, an OTLP endpoint made `semcache
    serve` print a traceback rather than what to install."""
    import sys

    from service.errors import StartupError

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(StartupError, match=r"pip install '\.\[tracing\]'"):
        build_tracing("http://127.0.0.1:4317")


def test_tracing_is_a_no_op_by_default() -> None:
    for tracing in (Tracing(), build_tracing(None)):
        assert not tracing.enabled
        with tracing.span("embed", texts=3):
            pass
        tracing.close()


def test_spans_nest_and_carry_attributes_and_errors() -> None:
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = in_memory.InMemorySpanExporter()
    tracing = tracing_with_exporter(exporter, batch=False)
    with tracing.span("complete", tenant="acme"):
        with tracing.span("embed", texts=1):
            pass
        with pytest.raises(TimeoutError), tracing.span("upstream", model="gpt-4o"):
            raise TimeoutError("the provider did not answer")
    tracing.close()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"complete", "embed", "upstream"}
    root = spans["complete"]
    assert spans["embed"].parent is not None
    assert spans["embed"].parent.span_id == root.context.span_id
    assert spans["upstream"].attributes == {"model": "gpt-4o"}
    assert spans["upstream"].status.status_code.name == "ERROR"
    assert root.resource.attributes["service.name"] == "semcache"


def _stage_count(metrics: Metrics, stage: str) -> float:
    value = metrics.registry.get_sample_value(
        "semcache_stage_duration_seconds_count", {"stage": stage}
    )
    return value or 0.0


def test_a_stage_is_timed_and_traced_even_when_it_raises() -> None:
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = in_memory.InMemorySpanExporter()
    metrics = Metrics()
    telemetry = Telemetry(metrics, tracing_with_exporter(exporter, batch=False))
    with telemetry.tracing.span("complete"):
        with telemetry.stage("lookup"):
            pass
        with pytest.raises(TimeoutError), telemetry.stage("upstream"):
            raise TimeoutError("the provider did not answer")
    telemetry.tracing.close()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"complete", "lookup", "upstream"}
    assert spans["lookup"].parent is not None
    assert spans["lookup"].parent.span_id == spans["complete"].context.span_id
    assert spans["upstream"].status.status_code.name == "ERROR"
    assert _stage_count(metrics, "lookup") == 1
    assert _stage_count(metrics, "upstream") == 1


def test_a_stage_without_tracing_is_timed_and_lets_errors_through() -> None:
    metrics = Metrics()
    telemetry = Telemetry(metrics)
    with telemetry.stage("lookup"):
        pass
    with pytest.raises(TimeoutError), telemetry.stage("lookup"):
        raise TimeoutError("slow")
    assert _stage_count(metrics, "lookup") == 2


def _values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_served_hit_counts_as_its_decision_and_its_saved_usage() -> None:
    """`record_served_hit` is `record_cache_decision` and `record_usage(saved=True)`."""
    together, apart = Metrics(), Metrics()
    hits = [
        ("acme", "exact", "m1", 3, 5, 0.25),
        ("acme", "ok", "m1", 2, 0, 0.0),
        ("beta", "", "m2", -1, 4, -0.5),
        ("acme", "exact", "m1", 3, 5, 0.125),
    ]
    for tenant, detail, model, prompt, completion, usd in hits:
        together.record_served_hit(tenant, detail, model, prompt, completion, usd)
        apart.record_cache_decision(tenant, detail)
        apart.record_usage(tenant, model, prompt, completion, usd, saved=True)
    assert _values(together) == _values(apart)
    assert (
        _values(together)[("semcache_saved_usd_total", (("model", "m1"), ("tenant", "acme")))]
        == 0.375
    )


def _tenants_labelled(metrics: Metrics) -> dict[str, set[str]]:
    """Each family's tenant label values, as a scrape gives them."""
    labelled: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if "tenant" in sample.labels:
                labelled.setdefault(family.name, set()).add(sample.labels["tenant"])
    return labelled


def test_tenants_past_the_bound_share_one_label_in_every_series() -> None:
    """Found from outside: in open mode each tenant a caller named added about 26 series,
    never dropped; at 3,000 tenants a 6.8 MB scrape held exact hits up to 271 ms."""
    metrics = Metrics(max_tenants=2)
    book: dict[tuple[str, str], VerificationCounters] = {}
    counts: dict[str, tuple[int, int]] = {}
    for n in range(6):
        tenant = f"t{n}"
        metrics.record_cache_decision(tenant, "no_candidates")
        metrics.record_usage(tenant, "m", 1, 1, 0.5, saved=False)
        metrics.record_served_hit(tenant, "exact", "m", 1, 1, 0.25)
        metrics.record_rate_limited(tenant, "requests")
        book[(tenant, "ns")] = VerificationCounters(requests=10, semantic_served=n)
        counts[tenant] = (n, 10)
    metrics.watch_verification(lambda: book)
    metrics.watch_hit_rates(lambda: counts)
    labelled = _tenants_labelled(metrics)
    assert labelled and all(seen == {"t0", "t1", OTHER_TENANTS} for seen in labelled.values())
    values = _values(metrics)
    others = (("model", "m"), ("tenant", OTHER_TENANTS))
    assert values[("semcache_cost_usd_total", others)] == 2.0  # four tenants' 0.5 each
    served = (("namespace", OTHER_NAMESPACES), ("tenant", OTHER_TENANTS))
    assert values[("semcache_verify_semantic_served_total", served)] == 2 + 3 + 4 + 5
    ratio = values[("semcache_cache_hit_ratio", (("tenant", OTHER_TENANTS),))]
    assert ratio == pytest.approx((2 + 3 + 4 + 5) / 40)
    unbounded = Metrics(max_tenants=0)
    for n in range(6):
        unbounded.record_cache_decision(f"t{n}", "exact")
    assert _tenants_labelled(unbounded)["semcache_cache_decisions"] == {f"t{n}" for n in range(6)}
