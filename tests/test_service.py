"""The service end to end over gRPC, on both vector store backends."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.embedding.base import Embedder
from tests.conftest import Service, make_settings, start_service

QUESTION = "What is machine learning?"
# An everyday form of QUESTION: served at once ("same_form") by the default error-budget
# decision, yet found by the vector search, so a semantic hit.
PARAPHRASE = "Can you explain machine learning?"
UNRELATED = "How do I bake sourdough bread?"


def ask(text: str, **fields: object) -> pb.CompleteRequest:
    return pb.CompleteRequest(prompt=text, **fields)  # type: ignore[arg-type]


def tenant(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", name),)


async def test_miss_then_exact_then_paraphrase_then_unrelated(service: Service) -> None:
    miss = await service.stub.Complete(ask(QUESTION))
    assert miss.cache_status == pb.CACHE_STATUS_MISS
    assert QUESTION in miss.content
    assert miss.cost_usd > 0 and miss.usage.total_tokens > 0
    assert miss.request_id

    exact = await service.stub.Complete(ask("  what is machine   learning "))
    assert exact.cache_status == pb.CACHE_STATUS_EXACT_HIT
    assert exact.content == miss.content
    assert exact.similarity == 1.0
    assert exact.cost_saved_usd == pytest.approx(miss.cost_usd)
    assert exact.cost_usd == 0

    paraphrase = await service.stub.Complete(ask(PARAPHRASE))
    assert paraphrase.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
    assert paraphrase.cache_detail == "same_form"
    assert paraphrase.content == miss.content
    assert service.settings.effective_similarity_min <= paraphrase.similarity < 1.0

    unrelated = await service.stub.Complete(ask(UNRELATED))
    assert unrelated.cache_status == pb.CACHE_STATUS_MISS
    assert UNRELATED in unrelated.content
    assert service.simulator.request_count() == 2


async def test_stats_count_hits_misses_and_savings(service: Service) -> None:
    miss = await service.stub.Complete(ask(QUESTION))
    await service.stub.Complete(ask(QUESTION))
    await service.stub.Complete(ask(PARAPHRASE))
    stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
    assert (stats.entries, stats.misses, stats.exact_hits, stats.semantic_hits) == (1, 1, 1, 1)
    assert stats.hit_rate == pytest.approx(2 / 3)
    assert stats.cost_saved_usd == pytest.approx(2 * miss.cost_usd)
    assert stats.cost_spent_usd == pytest.approx(miss.cost_usd)
    assert stats.tenant == "default"


async def collect(stream: grpc.aio.UnaryStreamCall) -> tuple[str, pb.CompleteResponse]:
    deltas: list[str] = []
    final = None
    async for event in stream:
        if event.HasField("final"):
            final = event.final
        else:
            deltas.append(event.delta)
    assert final is not None, "every successful stream ends with a final message"
    return "".join(deltas), final


async def test_streaming_miss_then_streamed_hit(service: Service) -> None:
    text, final = await collect(service.stub.StreamComplete(ask(QUESTION)))
    assert final.cache_status == pb.CACHE_STATUS_MISS
    assert text == final.content and QUESTION in text
    assert final.finish_reason == "stop" and final.usage.completion_tokens > 0

    replay, hit = await collect(service.stub.StreamComplete(ask(PARAPHRASE)))
    assert hit.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
    assert replay == text == hit.content

    unary = await service.stub.Complete(ask(QUESTION))
    assert unary.cache_status == pb.CACHE_STATUS_EXACT_HIT and unary.content == text


async def test_tenants_never_see_each_others_entries(service: Service) -> None:
    acme_answer = await service.stub.Complete(ask(QUESTION), metadata=tenant("acme"))
    globex = await service.stub.Complete(ask(PARAPHRASE), metadata=tenant("globex"))
    assert globex.cache_status == pb.CACHE_STATUS_MISS, "acme's entry must not serve globex"
    own = await service.stub.Complete(ask(QUESTION), metadata=tenant("globex"))
    assert own.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
    assert own.content == globex.content != acme_answer.content

    acme = await service.stub.GetCacheStats(pb.GetCacheStatsRequest(), metadata=tenant("acme"))
    assert (acme.entries, acme.misses, acme.semantic_hits) == (1, 1, 0)
    cleared = await service.stub.InvalidateCache(
        pb.InvalidateCacheRequest(all=True), metadata=tenant("globex")
    )
    assert cleared.deleted_entries == 1
    again = await service.stub.Complete(ask(QUESTION), metadata=tenant("acme"))
    assert again.cache_status == pb.CACHE_STATUS_EXACT_HIT
    assert again.content == acme_answer.content


async def test_namespaces_and_sampling_parameters_scope_the_cache(service: Service) -> None:
    await service.stub.Complete(ask(QUESTION, namespace="support"))
    for variant in (
        ask(QUESTION, namespace="sales"),
        ask(QUESTION, namespace="support", temperature=0.0),
        ask(QUESTION, namespace="support", max_tokens=500),
        ask(QUESTION, namespace="support", model="gpt-4o"),
    ):
        response = await service.stub.Complete(variant)
        assert response.cache_status == pb.CACHE_STATUS_MISS, variant
    hit = await service.stub.Complete(ask(PARAPHRASE, namespace="support"))
    assert hit.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT


async def test_conversation_context_is_part_of_the_scope(service: Service) -> None:
    def chat(topic: str) -> pb.CompleteRequest:
        return pb.CompleteRequest(
            messages=[
                pb.Message(role="system", content="You are a support agent."),
                pb.Message(role="user", content=f"I have a {topic} subscription."),
                pb.Message(role="assistant", content="How can I help?"),
                pb.Message(role="user", content="Cancel it."),
            ]
        )

    first = await service.stub.Complete(chat("streaming"))
    other = await service.stub.Complete(chat("gym"))
    same = await service.stub.Complete(chat("streaming"))
    assert first.cache_status == other.cache_status == pb.CACHE_STATUS_MISS
    assert same.cache_status == pb.CACHE_STATUS_EXACT_HIT


async def test_cache_policies(service: Service) -> None:
    bypass = await service.stub.Complete(ask(QUESTION, cache_policy=pb.CACHE_POLICY_BYPASS))
    assert bypass.cache_status == pb.CACHE_STATUS_BYPASS
    no_store = await service.stub.Complete(ask(QUESTION, cache_policy=pb.CACHE_POLICY_NO_STORE))
    assert no_store.cache_status == pb.CACHE_STATUS_MISS
    stored = await service.stub.Complete(ask(QUESTION))
    assert stored.cache_status == pb.CACHE_STATUS_MISS, "bypass and no-store stored nothing"
    refresh = await service.stub.Complete(ask(QUESTION, cache_policy=pb.CACHE_POLICY_REFRESH))
    assert refresh.cache_status == pb.CACHE_STATUS_MISS
    assert service.simulator.request_count() == 4
    hit = await service.stub.Complete(ask(QUESTION))
    assert hit.cache_status == pb.CACHE_STATUS_EXACT_HIT
    stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
    assert stats.entries == 1 and stats.bypasses == 1


async def test_truncated_answers_are_not_cached(service: Service) -> None:
    first = await service.stub.Complete(ask(QUESTION, max_tokens=3))
    assert first.finish_reason == "length"
    second = await service.stub.Complete(ask(QUESTION, max_tokens=3))
    assert second.cache_status == pb.CACHE_STATUS_MISS


async def test_ttl_expiry_and_background_purge(
    embedder: Embedder, simulator: UpstreamSimulator, backend: str, tmp_path: object
) -> None:
    settings = make_settings(backend, tmp_path / "data", simulator.base_url, ttl_s=1)  # type: ignore[operator]
    service = await start_service(embedder, simulator, settings)
    try:
        await service.stub.Complete(ask(QUESTION))
        assert (
            await service.stub.Complete(ask(QUESTION))
        ).cache_status == pb.CACHE_STATUS_EXACT_HIT
        await asyncio.sleep(1.2)
        stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
        assert stats.entries == 0, "expired entries are not counted"
        # neither the exact layer nor the ANN search (which would score 1.0) serves it
        assert (await service.stub.Complete(ask(QUESTION))).cache_status == pb.CACHE_STATUS_MISS
        await service.stub.Complete(ask(UNRELATED))
        await asyncio.sleep(1.2)
        assert await service.app.cache.purge_expired() == 2
        assert await service.app.cache.purge_expired() == 0
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("request_fields", "message_part"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "empty"),
        ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x" * 40_000}, "bytes"),
        ({"prompt": "hi", "temperature": 3.0}, "temperature"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "namespace": "no spaces please"}, "namespace"),
        ({"prompt": "hi", "messages": [pb.Message(role="user", content="hi")]}, "not both"),
        ({"messages": [pb.Message(role="assistant", content="hi")]}, "last message"),
        ({"messages": [pb.Message(role="robot", content="hi")]}, "role"),
        ({"prompt": "hi", "cache_policy": 42}, "cache_policy"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
async def test_invalid_requests_get_invalid_argument(
    service: Service, request_fields: dict[str, object], message_part: str
) -> None:
    for call in (service.stub.Complete, service.stub.StreamComplete):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(pb.CompleteRequest(**request_fields))  # type: ignore[arg-type]
            if isinstance(result, grpc.aio.UnaryStreamCall):
                await collect(result)
            else:
                await result
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message_part in (caught.value.details() or "")
    stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
    assert stats.entries == 0 and service.simulator.request_count() == 0


async def test_invalid_tenant_is_rejected(service: Service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Complete(ask(QUESTION), metadata=tenant("bad tenant!"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant" in (caught.value.details() or "")


async def test_invalidate_by_namespace_model_and_age(service: Service) -> None:
    await service.stub.Complete(ask(QUESTION, namespace="a"))
    await service.stub.Complete(ask(QUESTION, namespace="b", model="gpt-4o"))
    await service.stub.Complete(ask(UNRELATED, namespace="b"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.InvalidateCache(pb.InvalidateCacheRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "all=true" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # found from outside: deleted 0
        await service.stub.InvalidateCache(pb.InvalidateCacheRequest(model="m" * 10_000))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "longer than 128 characters" in (caught.value.details() or "")

    young = await service.stub.InvalidateCache(pb.InvalidateCacheRequest(older_than_s=3600))
    assert young.deleted_entries == 0
    by_model = await service.stub.InvalidateCache(pb.InvalidateCacheRequest(model="gpt-4o"))
    assert by_model.deleted_entries == 1
    by_namespace = await service.stub.InvalidateCache(pb.InvalidateCacheRequest(namespace="b"))
    assert by_namespace.deleted_entries == 1
    left = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
    assert left.entries == 1
    hit = await service.stub.Complete(ask(QUESTION, namespace="a"))
    assert hit.cache_status == pb.CACHE_STATUS_EXACT_HIT


async def test_all_tenants_stats_list_every_tenant_with_entries(service: Service) -> None:
    """Found from outside: a tenant that had only seeded (and after a restart, every
    tenant) was missing from the all-tenants view: it listed only the tenants this
    replica had counted since it started."""
    seeds = pb.PutEntriesRequest(entries=[pb.Entry(question=QUESTION, answer="seeded")])
    await service.stub.PutEntries(seeds, metadata=(("x-tenant-id", "seedonly"),))
    every = await service.stub.GetCacheStats(pb.GetCacheStatsRequest(all_tenants=True))
    assert {t.tenant: t.entries for t in every.tenants}.get("seedonly") == 1


async def test_upstream_down_is_unavailable_and_names_the_provider(
    embedder: Embedder, backend: str, tmp_path: object, unused_tcp_port: int
) -> None:
    dead_url = f"http://127.0.0.1:{unused_tcp_port}/v1"
    settings = make_settings(backend, tmp_path / "data", dead_url)  # type: ignore[operator]
    async with UpstreamSimulator() as unused:
        service = await start_service(embedder, unused, settings)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.Complete(ask(QUESTION))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        details = caught.value.details() or ""
        assert "openai" in details and "unreachable" in details
        assert f"127.0.0.1:{unused_tcp_port}" not in details, "the address stays in the log"
        stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
        assert stats.entries == 0
    finally:
        await service.close()


async def test_restart_on_same_data_directory_keeps_the_cache(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: object
) -> None:
    settings = make_settings("edge", tmp_path / "data", simulator.base_url)  # type: ignore[operator]
    first = await start_service(embedder, simulator, settings)
    miss = await first.stub.Complete(ask(QUESTION))
    await first.close()

    second = await start_service(embedder, simulator, settings)
    try:
        exact = await second.stub.Complete(ask(QUESTION))
        paraphrase = await second.stub.Complete(ask(PARAPHRASE))
        assert exact.cache_status == pb.CACHE_STATUS_EXACT_HIT
        assert paraphrase.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
        assert exact.content == paraphrase.content == miss.content
    finally:
        await second.close()


async def test_health_and_reflection(service: Service) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "semcache.v1.SemanticCacheService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert "semcache.v1.SemanticCacheService" in names
    assert "grpc.health.v1.Health" in names


async def test_identical_concurrent_misses_share_one_upstream_call(
    embedder: Embedder, backend: str, tmp_path: object
) -> None:
    async with UpstreamSimulator(SimulatorConfig(ttft_ms=500, ms_per_token=0)) as slow:
        settings = make_settings(backend, tmp_path / "data", slow.base_url)  # type: ignore[operator]
        service = await start_service(embedder, slow, settings)
        try:
            calls = [service.stub.Complete(ask(QUESTION)) for _ in range(50)]
            calls[0].cancel()  # the first caller leaving must not cancel the shared call
            results = await asyncio.gather(*calls, return_exceptions=True)
            answers = [r for r in results if isinstance(r, pb.CompleteResponse)]
            assert len(answers) == 49
            assert slow.request_count() == 1
            assert {a.content for a in answers} == {answers[0].content}
            # late arrivals on a loaded machine find the stored answer instead: also fine
            ok = {pb.CACHE_STATUS_MISS, pb.CACHE_STATUS_EXACT_HIT}
            assert {a.cache_status for a in answers} <= ok
            assert sum(a.cost_usd > 0 for a in answers) == 1, "exactly one caller paid"
            spent = sum(a.cost_usd for a in answers)
            saved = sum(a.cost_saved_usd for a in answers)
            assert spent == pytest.approx(saved / 48)
            again = await service.stub.Complete(ask(QUESTION))
            assert again.cache_status == pb.CACHE_STATUS_EXACT_HIT
        finally:
            await service.close()


async def test_all_tenants_stats_list_the_busiest_counted_tenants_only(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found from outside: every tenant a caller named in open mode was listed, about 40
    bytes each, without bound (at 100,000 past gRPC's 4 MiB message limit)."""
    monkeypatch.setattr("service.pipeline.admin.MAX_TENANTS_LISTED", 2)
    bypass = pb.CACHE_POLICY_BYPASS
    for tenant, calls in [("quiet", 1), ("busy", 3), ("middling", 2)]:
        for _ in range(calls):
            await service.stub.Complete(
                ask(QUESTION, cache_policy=bypass), metadata=(("x-tenant-id", tenant),)
            )
    every = await service.stub.GetCacheStats(pb.GetCacheStatsRequest(all_tenants=True))
    assert sorted(t.tenant for t in every.tenants) == ["busy", "middling"]
