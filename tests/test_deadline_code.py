"""An RPC that outlives its caller's deadline is counted as DEADLINE_EXCEEDED, not
CANCELLED: gRPC cancels the handler either way, and the dashboard's deadline panel
must see it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.app import build_app
from service.embedding.base import Embedder
from service.metrics import Metrics
from service.transport.grpc.server import start_server
from tests.conftest import make_settings

# Tokens come slowly enough that a stream runs past its deadline while each read is quick.
MS_PER_TOKEN = 150.0


@pytest_asyncio.fixture
async def trickling() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=MS_PER_TOKEN)) as sim:
        yield sim


def requests_counted(metrics: Metrics, code: str) -> float:
    labels = {"rpc": "StreamComplete", "code": code, "cache": "none", "model": ""}
    return metrics.registry.get_sample_value("semcache_requests_total", labels) or 0.0


async def test_a_stream_past_its_deadline_is_counted_as_deadline_exceeded(
    embedder: Embedder, trickling: UpstreamSimulator, tmp_path: Path
) -> None:
    settings = make_settings("edge", tmp_path / "data", trickling.base_url)
    app = await build_app(settings, embedder, {})
    server = await start_server(app, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        request = pb.CompleteRequest(prompt="Tell me a long story about a lighthouse keeper.")
        call = stub.StreamComplete(request, timeout=1.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        metrics = app.telemetry.metrics
        for _ in range(500):  # the handler settles once gRPC has cancelled it
            if requests_counted(metrics, "DEADLINE_EXCEEDED") or requests_counted(
                metrics, "CANCELLED"
            ):
                break
            await asyncio.sleep(0.01)
        assert requests_counted(metrics, "DEADLINE_EXCEEDED") == 1
        assert requests_counted(metrics, "CANCELLED") == 0
    finally:
        await channel.close()
        await server.stop(0)
        await app.aclose()
