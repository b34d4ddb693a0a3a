"""Issue 3's cache controls, end to end over gRPC on both store backends."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.cache.edge_store import EdgeVectorStore
from service.cache.semantic import Answer, SemanticCache, ThresholdVerifier
from service.domain import ChatMessage, CompletionRequest
from service.embedding.base import Embedder
from service.embedding.batcher import EmbeddingBatcher
from tests.conftest import Service, make_settings, start_service

QUESTION = "What is machine learning?"
# An everyday form of QUESTION: served at once ("same_form") by the default error-budget
# decision, yet found by the vector search, so a semantic hit.
PARAPHRASE = "Can you explain machine learning?"


def ask(text: str, **fields: object) -> pb.CompleteRequest:
    return pb.CompleteRequest(prompt=text, **fields)  # type: ignore[arg-type]


def chat(*turns: tuple[str, str]) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role=r, content=c) for r, c in turns])


async def test_near_miss_traps_are_refused_with_a_reason(service: Service) -> None:
    await service.stub.Complete(ask("How do I turn on two-factor authentication?"))
    await service.stub.Complete(ask("Can I get a refund of $50 for my order?"))
    for trap, reason in (
        ("How do I turn off two-factor authentication?", "antonym_mismatch"),
        ("Can I get a refund of $500 for my order?", "number_mismatch"),
    ):
        response = await service.stub.Complete(ask(trap))
        assert response.cache_status == pb.CACHE_STATUS_MISS, trap
        assert response.cache_detail == reason
        assert response.similarity > 0.8, "the trap really was a close neighbour"


async def test_request_similarity_min_can_only_raise_the_floor(service: Service) -> None:
    await service.stub.Complete(ask(QUESTION))
    strict = await service.stub.Complete(ask(PARAPHRASE, similarity_min=0.99))
    assert strict.cache_status == pb.CACHE_STATUS_MISS
    assert strict.cache_detail == "below_request_similarity_min"
    lax = await service.stub.Complete(ask("What is deep learning?", similarity_min=0.01))
    assert lax.cache_status == pb.CACHE_STATUS_MISS, "a request never lowers the operator's floor"
    assert 0 < lax.similarity < service.settings.effective_similarity_min


async def test_hot_temperatures_skip_the_cache(service: Service) -> None:
    for _ in range(2):
        hot = await service.stub.Complete(ask(QUESTION, temperature=1.5))
        assert hot.cache_status == pb.CACHE_STATUS_BYPASS
        assert hot.cache_detail == "temperature_above_cacheable"
    cool = await service.stub.Complete(ask(QUESTION, temperature=0.2))
    assert cool.cache_status == pb.CACHE_STATUS_MISS
    again = await service.stub.Complete(ask(QUESTION, temperature=0.2))
    assert again.cache_status == pb.CACHE_STATUS_EXACT_HIT


async def test_follow_ups_need_the_same_conversation(service: Service) -> None:
    streaming = chat(
        ("user", "I've got a Streamflix subscription I barely use anymore."),
        ("assistant", "Your Streamflix Standard plan renews on the 14th. Cancel or change plan?"),
        ("user", "cancel it"),
    )
    gym = chat(
        ("user", "My FitZone gym membership costs too much and I hardly go."),
        ("assistant", "Your FitZone membership has a 30-day notice period. Cancel or freeze it?"),
        ("user", "Cancel it."),
    )
    first = await service.stub.Complete(streaming)
    other = await service.stub.Complete(gym)
    assert first.cache_status == other.cache_status == pb.CACHE_STATUS_MISS
    assert other.cache_detail.startswith("context"), other.cache_detail
    same = await service.stub.Complete(streaming)
    assert same.cache_status == pb.CACHE_STATUS_EXACT_HIT
    assert same.content == first.content


async def test_standalone_question_ignores_unrelated_history(service: Service) -> None:
    await service.stub.Complete(ask("How do I reset my online banking password?"))
    later = await service.stub.Complete(
        chat(
            ("user", "Thanks for the help with my statement earlier."),
            ("assistant", "You're welcome!"),
            ("user", "How do I reset my online banking password?"),
        )
    )
    assert later.cache_status in (pb.CACHE_STATUS_EXACT_HIT, pb.CACHE_STATUS_SEMANTIC_HIT)


async def test_ttl_override_per_request(service: Service) -> None:
    response = await service.stub.Complete(ask(QUESTION, ttl_s=1))
    assert response.cache_status == pb.CACHE_STATUS_MISS
    entry = await service.app.cache.store.get(service.app.cache.key_for(_domain(QUESTION)).point_id)
    assert entry is not None
    assert entry.expires_at - entry.created_at == pytest.approx(1.0)
    for bad in (0, -5, service.settings.max_ttl_s + 1):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.Complete(ask(QUESTION, ttl_s=bad))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttl_s" in (caught.value.details() or "")


def _domain(text: str) -> object:
    from service.domain import ChatMessage, CompletionRequest

    return CompletionRequest(messages=(ChatMessage("user", text),))


async def test_least_recently_hit_entries_are_evicted(
    embedder: Embedder, simulator: UpstreamSimulator, backend: str, tmp_path: Path
) -> None:
    settings = make_settings(
        backend, tmp_path / "data", simulator.base_url, max_entries_per_tenant=2
    )
    service = await start_service(embedder, simulator, settings)
    try:
        questions = ["How tall is Mount Everest?", "Who wrote Hamlet?", "What is photosynthesis?"]
        await service.stub.Complete(ask(questions[0]))
        await service.stub.Complete(ask(questions[1]))
        await service.stub.Complete(ask(questions[0]))  # a hit: the first is now the most recent
        await service.app.cache.close()  # let the hit's timestamp land
        await service.stub.Complete(ask(questions[2]))  # evicts the least recently hit: [1]
        stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
        assert stats.entries == 2
        kept = await service.stub.Complete(ask(questions[0]))
        evicted = await service.stub.Complete(ask(questions[1]))
        assert kept.cache_status == pb.CACHE_STATUS_EXACT_HIT
        assert evicted.cache_status == pb.CACHE_STATUS_MISS
        other = await service.stub.Complete(ask(questions[1]), metadata=(("x-tenant-id", "b"),))
        assert other.cache_status == pb.CACHE_STATUS_MISS, "eviction is per tenant"
    finally:
        await service.close()


async def test_an_expired_entry_goes_before_a_live_one_is_evicted(
    embedder: Embedder, simulator: UpstreamSimulator, backend: str, tmp_path: Path
) -> None:
    """Found from outside: the limit counted expired entries not yet purged, so a live
    entry was evicted while a dead one was kept (the store then held one fewer live
    entry than the limit allows)."""
    settings = make_settings(
        backend, tmp_path / "data", simulator.base_url, max_entries_per_tenant=2
    )
    service = await start_service(embedder, simulator, settings)
    clock = [1_000_000.0]
    service.app.cache._clock = lambda: clock[0]  # time passes on demand
    try:
        await service.stub.Complete(ask("How tall is Mount Everest?"))
        await service.stub.Complete(ask("Who wrote Hamlet?", ttl_s=2))
        await service.stub.Complete(ask("Who wrote Hamlet?"))  # hit: the newest hit time
        await service.app.cache.close()  # let the hit's timestamp land
        clock[0] += 10  # Hamlet's answer has expired, and is not purged yet
        await service.stub.Complete(ask("What is photosynthesis?"))  # the limit is reached
        stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
        assert stats.entries == 2, "both live entries kept"
        kept = await service.stub.Complete(ask("How tall is Mount Everest?"))
        assert kept.cache_status == pb.CACHE_STATUS_EXACT_HIT
    finally:
        await service.close()


async def test_batch_complete_answers_in_order_with_a_status_per_item(service: Service) -> None:
    await service.stub.Complete(ask(QUESTION))
    reply = await service.stub.BatchComplete(
        pb.BatchCompleteRequest(
            requests=[ask(QUESTION), ask(""), ask("Who painted the Mona Lisa?"), ask(PARAPHRASE)],
            max_concurrency=2,
        )
    )
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["response", "status", "response", "response"]
    assert reply.results[0].response.cache_status == pb.CACHE_STATUS_EXACT_HIT
    assert reply.results[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "prompt" in reply.results[1].status.message
    assert "Mona Lisa" in reply.results[2].response.content
    assert reply.results[3].response.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT


async def test_batch_complete_rejects_empty_and_oversized_batches(service: Service) -> None:
    for batch in ([], [ask(QUESTION)] * (service.settings.batch_max_items + 1)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.BatchComplete(pb.BatchCompleteRequest(requests=batch))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


TOOLS = '[{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}]'


async def test_tool_call_answers_are_passed_on_but_not_cached(service: Service) -> None:
    request = ask("Where is my order 1234?", tools_json=TOOLS, tool_choice="required")
    first = await service.stub.Complete(request)
    assert first.finish_reason == "tool_calls"
    assert "lookup_order" in first.tool_calls_json
    again = await service.stub.Complete(request)
    assert again.cache_status == pb.CACHE_STATUS_MISS, "tool calls are not cached by default"


async def test_a_streamed_tool_call_arrives_whole_in_the_final_message(service: Service) -> None:
    """Found by an audit: the stream read only `delta.content`, so a streamed tool call
    ended with finish_reason tool_calls and no call. Its fragments are now joined."""
    request = ask("Where is my order 1234?", tools_json=TOOLS, tool_choice="required")
    unary = await service.stub.Complete(request)
    events = [event async for event in service.stub.StreamComplete(request)]
    final = events[-1].final
    assert final.finish_reason == "tool_calls"
    assert json.loads(final.tool_calls_json) == [
        {**call, "id": json.loads(final.tool_calls_json)[0]["id"]}
        for call in json.loads(unary.tool_calls_json)
    ]
    assert json.loads(final.tool_calls_json)[0]["function"]["name"] == "lookup_order"


async def test_tool_call_answers_are_cached_when_allowed(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    settings = make_settings("edge", tmp_path / "data", simulator.base_url, cache_tool_calls=True)
    service = await start_service(embedder, simulator, settings)
    try:
        request = ask("Where is my order 1234?", tools_json=TOOLS, tool_choice="required")
        first = await service.stub.Complete(request)
        hit = await service.stub.Complete(request)
        assert hit.cache_status == pb.CACHE_STATUS_EXACT_HIT
        assert hit.tool_calls_json == first.tool_calls_json != ""
        other_tools = await service.stub.Complete(ask("Where is my order 1234?"))
        assert other_tools.cache_status == pb.CACHE_STATUS_MISS, "tools are part of the scope"
    finally:
        await service.close()


class TouchCountingStore(EdgeVectorStore):
    """The embedded store, remembering each hit-time write."""

    def __init__(self, path: Path, dim: int) -> None:
        super().__init__(path, dim)
        self.touches: list[list[str]] = []

    async def touch(self, point_ids: Sequence[str], now: float) -> None:
        self.touches.append(list(point_ids))
        await super().touch(point_ids, now)


async def test_hit_times_are_written_together_not_once_per_hit(
    embedder: Embedder, tmp_path: Path
) -> None:
    store = TouchCountingStore(tmp_path / "shard", embedder.dim)
    batcher = EmbeddingBatcher(embedder)
    cache = SemanticCache(store, batcher, ThresholdVerifier(0.9))
    request = CompletionRequest(messages=(ChatMessage("user", "How tall is Mount Everest?"),))
    try:
        missed = await cache.lookup(request)
        await cache.store_answer(missed, Answer("8,849 m", "m", "stop", 1, 1, 0.0))
        for _ in range(5):
            assert (await cache.lookup(request)).hit is not None
        assert store.touches == []  # nothing written on the request path
    finally:
        await cache.close()
        await batcher.close()
        await store.close()
    assert store.touches == [[missed.key.point_id]]


async def test_a_request_with_no_floor_is_never_below_it(service: Service) -> None:
    """Found from outside: with no similarity_min sent, a nearest entry at a negative
    cosine was refused as "below_request_similarity_min" (the floor defaulted to 0)."""
    await service.stub.Complete(ask("What is machine learning?"))
    unrelated = await service.stub.Complete(ask("Compare REST and gRPC trade-offs step by step"))
    assert unrelated.cache_status == pb.CACHE_STATUS_MISS
    assert unrelated.similarity < 0.3
    assert unrelated.cache_detail != "below_request_similarity_min"
