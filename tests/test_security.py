"""API keys, roles, rate limits and metrics through the gRPC API."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest

from semcache_client._rpc_status import retry_after_s
from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.auth import add_key, load_keys
from service.embedding.base import Embedder
from service.metrics import start_metrics_server
from service.transport.grpc.server import Security
from tests.conftest import Service, make_settings, start_service

QUESTION = "What is machine learning?"


def bearer(key: str, tenant_claim: str | None = None) -> tuple[tuple[str, str], ...]:
    claim = (("x-tenant-id", tenant_claim),) if tenant_claim else ()
    return (("authorization", f"Bearer {key}"), *claim)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    issued = {
        "acme": add_key(path, "acme", "client", "acme-app"),
        "globex": add_key(path, "globex", "client", "globex-app"),
        "admin": add_key(path, "ops", "admin", "ops"),
    }
    assert all(key not in path.read_text() for key in issued.values()), "stored hashed"
    return path, issued


async def secured(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    tmp_path: Path,
    keys_file: Path,
    **extra: object,
) -> Service:
    settings = make_settings("edge", tmp_path / "data", simulator.base_url, **extra)
    return await start_service(embedder, simulator, settings, Security(load_keys(keys_file)))


async def test_keys_decide_the_tenant_and_missing_keys_are_refused(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    tmp_path: Path,
    keys: tuple[Path, dict[str, str]],
) -> None:
    path, issued = keys
    service = await secured(embedder, simulator, tmp_path, path)
    try:
        for metadata, reason in (((), "missing API key"), (bearer("sk-sc-nope"), "unknown")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason in (caught.value.details() or "")
        await service.stub.Complete(
            pb.CompleteRequest(prompt=QUESTION), metadata=bearer(issued["acme"])
        )
        spoof = await service.stub.Complete(
            pb.CompleteRequest(prompt=QUESTION), metadata=bearer(issued["globex"], "acme")
        )
        assert spoof.cache_status == pb.CACHE_STATUS_MISS, "claiming acme in x-tenant-id is ignored"
        stats = await service.stub.GetCacheStats(
            pb.GetCacheStatsRequest(), metadata=(("x-api-key", issued["acme"]),)
        )
        assert (stats.tenant, stats.entries) == ("acme", 1)
    finally:
        await service.close()


async def test_admin_rpcs_need_the_admin_role(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    tmp_path: Path,
    keys: tuple[Path, dict[str, str]],
) -> None:
    path, issued = keys
    service = await secured(embedder, simulator, tmp_path, path)
    try:
        for tenant in ("acme", "globex"):
            await service.stub.Complete(
                pb.CompleteRequest(prompt=QUESTION), metadata=bearer(issued[tenant])
            )
        for request in (
            pb.InvalidateCacheRequest(all_tenants=True),
            pb.InvalidateCacheRequest(tenant="globex", all=True),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await service.stub.InvalidateCache(request, metadata=bearer(issued["acme"]))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.GetCacheStats(
                pb.GetCacheStatsRequest(all_tenants=True), metadata=bearer(issued["acme"])
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        every = await service.stub.GetCacheStats(
            pb.GetCacheStatsRequest(all_tenants=True), metadata=bearer(issued["admin"])
        )
        assert {t.tenant: t.entries for t in every.tenants} == {"acme": 1, "globex": 1}
        cleared = await service.stub.InvalidateCache(
            pb.InvalidateCacheRequest(tenant="globex", all=True), metadata=bearer(issued["admin"])
        )
        assert cleared.deleted_entries == 1
        own = await service.stub.InvalidateCache(
            pb.InvalidateCacheRequest(all=True), metadata=bearer(issued["acme"])
        )
        assert own.deleted_entries == 1
    finally:
        await service.close()


async def test_rate_limit_is_resource_exhausted_with_retry_info(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    settings = make_settings(
        "edge", tmp_path / "data", simulator.base_url, rate_limit_requests_per_minute=2
    )
    service = await start_service(embedder, simulator, settings)
    try:
        await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
        await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))  # a hit still counts
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay_s = retry_after_s(caught.value.trailing_metadata())
        assert delay_s is not None and 0 < delay_s <= 60
        other = await service.stub.Complete(
            pb.CompleteRequest(prompt=QUESTION), metadata=(("x-tenant-id", "other"),)
        )
        assert other.content, "limits are per tenant"
    finally:
        await service.close()


async def test_metrics_endpoint_counts_requests_by_outcome(service: Service) -> None:
    await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    with pytest.raises(grpc.aio.AioRpcError):
        await service.stub.Complete(pb.CompleteRequest(prompt=""))
    server = start_metrics_server(service.app.metrics, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: ASYNC210
            text = response.read().decode()
    finally:
        await server.aclose()
    assert 'semcache_requests_total{cache="miss",code="OK"' in text
    assert 'cache="exact_hit",code="OK"' in text
    assert 'code="INVALID_ARGUMENT"' in text
    assert "semcache_stage_duration_seconds_bucket" in text
    assert 'semcache_saved_usd_total{model="gpt-4o-mini",tenant="default"}' in text
    assert 'semcache_batch_size_count{kind="embed"}' in text
    assert 'semcache_cache_hit_ratio{tenant="default"} 0.5' in text
    assert 'semcache_circuit_breaker_state{provider="openai"} 0.0' in text
    assert 'semcache_upstream_queue_depth{provider="openai"}' in text


async def test_tracing_records_a_span_per_stage(service: Service) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.tracing import tracing_with_exporter

    exporter = InMemorySpanExporter()
    service.app.telemetry.tracing = tracing_with_exporter(exporter, batch=False)
    await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    names = {span.name for span in exporter.get_finished_spans()}
    assert {"lookup", "embed", "search", "verify", "route", "upstream", "store"} <= names
