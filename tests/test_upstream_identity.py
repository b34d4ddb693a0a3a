"""Cached answers never cross from one upstream to another, the simulator included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.app import build_app
from service.config import Settings
from service.embedding.base import Embedder
from service.transport.grpc.server import start_server
from tests.conftest import make_settings, start_service

QUESTION = "What is the capital of Australia?"


@pytest_asyncio.fixture
async def other_simulator() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=0)) as sim:
        yield sim


async def _status(
    embedder: Embedder, simulator: UpstreamSimulator, settings: Settings
) -> pb.CacheStatus.ValueType:
    service = await start_service(embedder, simulator, settings)
    try:
        answer = await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
        return answer.cache_status
    finally:
        await service.close()


async def test_answers_from_one_upstream_miss_on_another(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    other_simulator: UpstreamSimulator,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    on_a = make_settings("edge", data, simulator.base_url)
    on_b = make_settings("edge", data, other_simulator.base_url)
    assert await _status(embedder, simulator, on_a) == pb.CACHE_STATUS_MISS
    assert await _status(embedder, other_simulator, on_b) == pb.CACHE_STATUS_MISS
    assert other_simulator.request_count() == 1
    assert await _status(embedder, simulator, on_a) == pb.CACHE_STATUS_EXACT_HIT


async def test_a_named_upstream_keeps_its_cache_behind_a_new_url(
    embedder: Embedder,
    simulator: UpstreamSimulator,
    other_simulator: UpstreamSimulator,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    old_url = make_settings("edge", data, simulator.base_url, upstream_id="prod-llm")
    new_url = make_settings("edge", data, other_simulator.base_url, upstream_id="prod-llm")
    assert await _status(embedder, simulator, old_url) == pb.CACHE_STATUS_MISS
    assert await _status(embedder, other_simulator, new_url) == pb.CACHE_STATUS_EXACT_HIT
    assert other_simulator.request_count() == 0
    renamed = make_settings("edge", data, simulator.base_url, upstream_id="staging-llm")
    assert await _status(embedder, simulator, renamed) == pb.CACHE_STATUS_MISS


async def _ask_through_app(settings: Settings, embedder: Embedder, simulated: bool) -> int:
    app = await build_app(settings, embedder, {}, simulated=simulated)
    server = await start_server(app, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.SemanticCacheServiceStub(channel)
            answer = await stub.Complete(pb.CompleteRequest(prompt=QUESTION))
            return answer.cache_status
    finally:
        await server.stop(0)
        await app.aclose()


async def test_simulated_answers_are_never_served_as_real_ones(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    """`semcache serve` without an upstream answers from the built-in simulator;
    a real provider later configured on the same directory (even at the very
    same address) must not be served those answers."""
    from service.cache.scope import SIMULATOR_UPSTREAM_ID

    settings = make_settings("edge", tmp_path / "data", simulator.base_url)
    assert await _ask_through_app(settings, embedder, simulated=True) == pb.CACHE_STATUS_MISS
    assert await _ask_through_app(settings, embedder, simulated=True) == pb.CACHE_STATUS_EXACT_HIT
    assert await _ask_through_app(settings, embedder, simulated=False) == pb.CACHE_STATUS_MISS
    named = settings.model_copy(update={"upstream_id": SIMULATOR_UPSTREAM_ID})
    assert await _ask_through_app(named, embedder, simulated=False) == pb.CACHE_STATUS_MISS


def test_upstream_identity_forms_cannot_collide() -> None:
    from service.cache.scope import SIMULATOR_UPSTREAM_ID, upstream_identity

    providers = [("openai", "https://api.example.com/v1"), ("local", "http://127.0.0.1:8000/v1")]
    derived = upstream_identity(providers)
    assert derived == upstream_identity(list(reversed(providers)))
    assert derived == upstream_identity([(n, u + "/") for n, u in providers])
    assert derived != upstream_identity(providers[:1])
    assert upstream_identity(providers, simulated=True) == SIMULATOR_UPSTREAM_ID
    assert upstream_identity(providers, named="prod", simulated=True) == SIMULATOR_UPSTREAM_ID
    named = upstream_identity(providers, named=SIMULATOR_UPSTREAM_ID)
    assert named != SIMULATOR_UPSTREAM_ID
    assert len({derived, named, SIMULATOR_UPSTREAM_ID}) == 3
