"""The metrics a real server records, read from its registry: lookups are counted
by what the cache did, not by how the RPC ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.auth import add_key, load_keys
from service.embedding.base import Embedder
from service.transport.grpc.server import Security
from tests.conftest import Service, make_settings, start_service

QUESTION = "What is machine learning?"
UNRELATED = "How do I bake sourdough bread?"
RESULTS = ("hit", "miss", "error")


def lookups(service: Service) -> dict[str, float]:
    registry = service.app.metrics.registry
    counts = {
        r: registry.get_sample_value("semcache_cache_lookups_total", {"result": r}) for r in RESULTS
    }
    return {result: count or 0.0 for result, count in counts.items()}


@pytest_asyncio.fixture
async def edge(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[Service]:
    settings = make_settings("edge", tmp_path / "data", simulator.base_url)
    service = await start_service(embedder, simulator, settings)
    yield service
    await service.close()


async def test_refused_rpcs_perform_no_lookup(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    key = add_key(keys_file, "acme", "client", "acme-app")
    settings = make_settings(
        "edge", tmp_path / "data", simulator.base_url, rate_limit_requests_per_minute=1
    )
    service = await start_service(embedder, simulator, settings, Security(load_keys(keys_file)))
    authorised = (("authorization", f"Bearer {key}"),)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await service.stub.Complete(pb.CompleteRequest(prompt=""), metadata=authorised)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert lookups(service) == {"hit": 0, "miss": 0, "error": 0}
        await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION), metadata=authorised)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await service.stub.Complete(pb.CompleteRequest(prompt=QUESTION), metadata=authorised)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert lookups(service) == {"hit": 0, "miss": 1, "error": 0}
    finally:
        await service.close()


async def test_a_failing_store_is_a_lookup_error_served_as_a_miss(edge: Service) -> None:
    async def broken_get(point_id: str) -> None:
        raise ConnectionError("store is down")

    edge.app.cache.store.get = broken_get  # type: ignore[method-assign]
    response = await edge.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    assert response.cache_status == pb.CACHE_STATUS_MISS and response.content
    assert lookups(edge) == {"hit": 0, "miss": 0, "error": 1}


async def test_each_batch_item_counts_its_own_lookup(edge: Service) -> None:
    await edge.stub.Complete(pb.CompleteRequest(prompt=QUESTION))
    assert lookups(edge) == {"hit": 0, "miss": 1, "error": 0}
    batch = pb.BatchCompleteRequest(
        requests=[pb.CompleteRequest(prompt=QUESTION), pb.CompleteRequest(prompt=UNRELATED)]
    )
    response = await edge.stub.BatchComplete(batch)
    statuses = [item.response.cache_status for item in response.results]
    assert statuses == [pb.CACHE_STATUS_EXACT_HIT, pb.CACHE_STATUS_MISS]
    assert lookups(edge) == {"hit": 1, "miss": 2, "error": 0}
    registry = edge.app.metrics.registry
    labels = {"rpc": "BatchComplete", "code": "OK", "cache": "none", "model": ""}
    assert registry.get_sample_value("semcache_requests_total", labels) == 1
