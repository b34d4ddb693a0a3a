"""Why the cache did or did not serve is counted for every answer, whichever door."""

from __future__ import annotations

from service._proto.semcache.v1 import semcache_pb2 as pb
from tests.conftest import Service


async def test_grpc_answers_count_their_cache_detail(service: Service) -> None:
    await service.stub.Complete(pb.CompleteRequest(prompt="What is machine learning?"))
    await service.stub.Complete(pb.CompleteRequest(prompt="What is machine learning?"))
    await service.stub.Complete(
        pb.CompleteRequest(prompt="How do I bake bread?", cache_policy=pb.CACHE_POLICY_BYPASS)
    )
    decisions = service.app.metrics.cache_decisions()
    assert decisions[("default", "no_candidates")] == 1
    assert decisions[("default", "exact")] == 1
    assert decisions[("default", "bypass")] == 1
