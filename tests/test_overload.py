"""Overload is explicit: past SEMCACHE_MAX_CONCURRENT_RPCS a call is refused with
RESOURCE_EXHAUSTED and a retry hint, logged and counted; a burst that queues in
gRPC waits to be served or refused instead of being dropped as a bare CANCELLED."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache_client._rpc_status import retry_after_s
from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.app import App, build_app
from service.embedding.base import Embedder
from service.metrics import Metrics
from service.transport.grpc.server import start_server
from tests.conftest import Service, make_settings

BOUND = 2
# Far longer than the test: held calls end only when the test cancels them.
HELD_TTFT_MS = 120_000
BURST_CALLS = 1_500  # past gRPC's default 1,000 waiting calls, where it starts dropping


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded by iterations, not by a clock) until `condition()` holds."""
    for _ in range(2_000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest_asyncio.fixture
async def slow_upstream() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(SimulatorConfig(ttft_ms=HELD_TTFT_MS)) as sim:
        yield sim


@pytest_asyncio.fixture
async def bounded(
    embedder: Embedder, slow_upstream: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[tuple[App, grpc.aio.Channel]]:
    """A service that serves at most BOUND RPCs at once, in front of a stalled upstream."""
    settings = make_settings("edge", tmp_path / "data", slow_upstream.base_url)
    app = await build_app(settings, embedder, {})
    server = await start_server(app, "127.0.0.1", 0, max_concurrent_rpcs=BOUND)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield app, channel
    finally:
        await channel.close()
        await server.stop(0)
        await app.aclose()


async def test_calls_past_the_bound_get_resource_exhausted_with_retry_info(
    bounded: tuple[App, grpc.aio.Channel], slow_upstream: UpstreamSimulator
) -> None:
    app, channel = bounded
    stub = pb_grpc.SemanticCacheServiceStub(channel)
    metrics = app.metrics
    bypass = pb.CACHE_POLICY_BYPASS
    held = [
        asyncio.ensure_future(
            stub.Complete(pb.CompleteRequest(prompt=f"q {i}", cache_policy=bypass))
        )
        for i in range(BOUND)
    ]
    try:
        await until(lambda: slow_upstream.request_count() == BOUND, "both calls upstream")
        assert sample(metrics, "semcache_rpcs_in_flight") == BOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Complete(pb.CompleteRequest(prompt="one too many"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "SEMCACHE_MAX_CONCURRENT_RPCS" in (caught.value.details() or "")
        delay_s = retry_after_s(caught.value.trailing_metadata())
        assert delay_s is not None and 0 < delay_s <= 2
        assert sample(metrics, "semcache_overloaded_total", rpc="Complete") == 1
        refused = {"rpc": "Complete", "code": "RESOURCE_EXHAUSTED", "cache": "none", "model": ""}
        assert sample(metrics, "semcache_requests_total", **refused) == 1
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING, "probes never refused"
    finally:
        for call in held:
            call.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    await until(lambda: sample(metrics, "semcache_rpcs_in_flight") == 0, "slots given back")
    stats = await stub.GetCacheStats(pb.GetCacheStatsRequest())
    assert stats.tenant == "default", "admitted again once calls finished"


async def test_a_burst_that_waits_for_the_event_loop_is_not_dropped(service: Service) -> None:
    """gRPC queues the calls the event loop has not picked up; by default it drops
    some past 1,000 as CANCELLED with no message. Block the loop while a burst
    arrives: every call must still be answered."""
    health = health_pb2_grpc.HealthStub(service.channel)
    await health.Check(health_pb2.HealthCheckRequest())  # connected before the burst
    waiting = [
        asyncio.ensure_future(health.Check(health_pb2.HealthCheckRequest()))
        for _ in range(BURST_CALLS)
    ]
    await asyncio.sleep(0)  # let every call start
    await asyncio.sleep(0)
    time.sleep(2.0)  # noqa: ASYNC251 - blocks the server's loop while gRPC queues the burst
    results = await asyncio.gather(*waiting, return_exceptions=True)
    codes = [
        r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results
    ]
    dropped = codes.count(grpc.StatusCode.CANCELLED)
    assert dropped == 0, f"{dropped} of {BURST_CALLS} calls dropped as CANCELLED"
    assert codes.count(grpc.StatusCode.OK) == BURST_CALLS
