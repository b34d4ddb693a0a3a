"""The Python clients: against the real service (both store backends) and a fake server.

The sync client runs in a thread (`asyncio.to_thread`), since the servers run
on the test's event loop. The fake server stands in where the real one cannot
be made to fail on cue (UNAVAILABLE, slowness, RESOURCE_EXHAUSTED) and for
BatchComplete, which the service does not serve yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio

from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.client import (
    Answer,
    AsyncSemcacheClient,
    CachePolicy,
    CacheStatus,
    CompleteParams,
    DeadlineExceeded,
    InvalidArgument,
    ItemFailure,
    Message,
    ResourceExhausted,
    SemcacheClient,
    SemcacheError,
    Unavailable,
)
from service.ratelimit import retry_info_trailer
from tests.conftest import Service

QUESTION = "What is machine learning?"


def target_of(service: Service) -> str:
    return f"127.0.0.1:{service.server.port}"


# --- the real service -------------------------------------------------------------


async def test_async_complete_miss_then_hit(service: Service) -> None:
    async with AsyncSemcacheClient(target_of(service), tenant="acme") as client:
        miss = await client.complete(QUESTION)
        hit = await client.complete("  what is MACHINE learning ")
    assert miss.cache_status is CacheStatus.MISS and not miss.is_hit
    assert QUESTION in miss.content and miss.usage.total_tokens > 0 and miss.cost_usd > 0
    assert miss.request_id and miss.model and miss.finish_reason == "stop"
    assert hit.cache_status is CacheStatus.EXACT_HIT and hit.is_hit
    assert (hit.content, hit.similarity) == (miss.content, 1.0)
    assert hit.cost_saved_usd == pytest.approx(miss.cost_usd)


async def test_async_stream_gives_deltas_then_the_answer(service: Service) -> None:
    async with AsyncSemcacheClient(target_of(service)) as client:
        stream = client.stream(messages=[("system", "Be brief."), Message("user", QUESTION)])
        deltas = [delta async for delta in stream]
        replay = client.stream(messages=[("system", "Be brief."), ("user", QUESTION)])
        replayed = await replay.text()
    assert len(deltas) > 1 and stream.answer is not None
    assert "".join(deltas) == stream.answer.content
    assert stream.answer.cache_status is CacheStatus.MISS
    assert replay.answer is not None and replay.answer.cache_status is CacheStatus.EXACT_HIT
    assert replayed == stream.answer.content


async def test_async_stats_and_invalidate_are_per_tenant(service: Service) -> None:
    async with AsyncSemcacheClient(target_of(service), tenant="acme") as client:
        await client.complete(QUESTION, namespace="faq")
        await client.complete(QUESTION, namespace="faq")
        stats = await client.stats()
        assert (stats.tenant, stats.entries, stats.misses, stats.exact_hits) == ("acme", 1, 1, 1)
        assert (await client.stats("other")).entries == 0
        with pytest.raises(InvalidArgument):
            await client.invalidate()  # no filter and not all: refused
        assert await client.invalidate(namespace="faq") == 1
        assert (await client.stats()).entries == 0


async def test_cache_policy_by_name(service: Service) -> None:
    async with AsyncSemcacheClient(target_of(service)) as client:
        await client.complete(QUESTION)
        bypass = await client.complete(QUESTION, cache_policy="bypass")
        no_store = await client.complete(QUESTION, cache_policy=CachePolicy.NO_STORE)
        with pytest.raises(ValueError, match="unknown cache_policy"):
            await client.complete(QUESTION, cache_policy="sometimes")
    assert bypass.cache_status is CacheStatus.BYPASS
    assert no_store.cache_status is CacheStatus.EXACT_HIT


def _sync_session(target: str) -> tuple[Answer, Answer, list[str], Answer | None, int, int]:
    with SemcacheClient(target, tenant="sync", timeout_s=10) as client:
        miss = client.complete(QUESTION, temperature=0.0, max_tokens=200)
        hit = client.complete(QUESTION, temperature=0.0, max_tokens=200)
        stream = client.stream(QUESTION, temperature=0.0, max_tokens=200)
        with stream:
            deltas = list(stream)
        entries = client.stats().entries
        deleted = client.invalidate(all=True)
    return miss, hit, deltas, stream.answer, entries, deleted


async def test_sync_client_complete_stream_stats_invalidate(service: Service) -> None:
    miss, hit, deltas, streamed, entries, deleted = await asyncio.to_thread(
        _sync_session, target_of(service)
    )
    assert miss.cache_status is CacheStatus.MISS and hit.cache_status is CacheStatus.EXACT_HIT
    assert streamed is not None and streamed.cache_status is CacheStatus.EXACT_HIT
    assert "".join(deltas) == miss.content == streamed.content
    assert (entries, deleted) == (1, 1)


def _sync_empty_prompt(target: str) -> SemcacheError:
    with SemcacheClient(target) as client, pytest.raises(InvalidArgument) as raised:
        client.complete("")
    return raised.value


async def test_empty_prompt_is_invalid_argument_for_both_clients(service: Service) -> None:
    async with AsyncSemcacheClient(target_of(service)) as client:
        with pytest.raises(InvalidArgument) as raised:
            await client.complete("")
        with pytest.raises(InvalidArgument):
            await client.stream("   ").text()
    sync_error = await asyncio.to_thread(_sync_empty_prompt, target_of(service))
    for error in (raised.value, sync_error):
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt" in error.details


# --- a fake server that fails on cue ----------------------------------------------


def _response(prompt: str, status: int = pb.CACHE_STATUS_MISS) -> pb.CompleteResponse:
    return pb.CompleteResponse(
        content=f"answer to {prompt}",
        model="fake-model",
        cache_status=status,  # type: ignore[arg-type]
        usage=pb.Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        finish_reason="stop",
        request_id="req-1",
    )


@dataclass
class FakeServicer(pb_grpc.SemanticCacheServiceServicer):
    """Answers "answer to <prompt>"; the first `failures` calls of each RPC are UNAVAILABLE."""

    failures: int = 0
    delay_s: float = 0.0
    break_stream_after_delta: bool = False
    calls: dict[str, int] = field(default_factory=dict)
    metadata: list[dict[str, str]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)

    async def _enter(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        self.requests.append(request)
        if self.calls[name] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fake: not yet")
        await asyncio.sleep(self.delay_s)

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteResponse:
        await self._enter("Complete", request, context)
        return _response(request.prompt)

    async def StreamComplete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        await self._enter("StreamComplete", request, context)
        final = _response(request.prompt)
        for word in final.content.split(" "):
            yield pb.StreamCompleteResponse(delta=word + " ")
            if self.break_stream_after_delta:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "fake: provider hung up")
        yield pb.StreamCompleteResponse(final=final)

    async def GetCacheStats(
        self, request: pb.GetCacheStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCacheStatsResponse:
        await self._enter("GetCacheStats", request, context)
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = retry_info_trailer(1.5, "fake: slow down")
        await context.abort(code, "fake: slow down", trailing_metadata=trailers)
        raise AssertionError("abort raises")

    async def InvalidateCache(
        self, request: pb.InvalidateCacheRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvalidateCacheResponse:
        await self._enter("InvalidateCache", request, context)
        return pb.InvalidateCacheResponse(deleted_entries=7)

    async def BatchComplete(
        self, request: pb.BatchCompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCompleteResponse:
        await self._enter("BatchComplete", request, context)
        return pb.BatchCompleteResponse(results=[_batch_item(item) for item in request.requests])


def _batch_item(request: pb.CompleteRequest) -> pb.BatchItemResult:
    text = request.messages[-1].content if request.messages else request.prompt
    if not text.strip():
        return pb.BatchItemResult(error=pb.ItemError(code=3, message="prompt is empty"))
    return pb.BatchItemResult(response=_response(text))


@dataclass
class Fake:
    servicer: FakeServicer
    target: str


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[Fake]:
    servicer = FakeServicer()
    server = grpc.aio.server()
    pb_grpc.add_SemanticCacheServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Fake(servicer, f"127.0.0.1:{port}")
    await server.stop(0)


async def test_unavailable_is_retried_until_it_succeeds(fake: Fake) -> None:
    fake.servicer.failures = 2
    async with AsyncSemcacheClient(fake.target, retries=2) as client:
        answer = await client.complete(QUESTION)
    assert answer.content == f"answer to {QUESTION}"
    assert fake.servicer.calls["Complete"] == 3


async def test_retries_run_out_and_raise_unavailable(fake: Fake) -> None:
    fake.servicer.failures = 2
    async with AsyncSemcacheClient(fake.target, retries=1) as client:
        with pytest.raises(Unavailable, match="fake: not yet") as raised:
            await client.complete(QUESTION)
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert fake.servicer.calls["Complete"] == 2


def _sync_retry(target: str) -> tuple[Answer, str]:
    with SemcacheClient(target, retries=2) as client:
        answer = client.complete(QUESTION)
        text = client.stream(QUESTION).text()
    return answer, text


async def test_sync_client_retries_unary_and_stream(fake: Fake) -> None:
    fake.servicer.failures = 2
    answer, text = await asyncio.to_thread(_sync_retry, fake.target)
    assert answer.content == text.strip() == f"answer to {QUESTION}"
    assert fake.servicer.calls == {"Complete": 3, "StreamComplete": 3}


async def test_retries_never_go_past_the_deadline(fake: Fake) -> None:
    fake.servicer.failures = 1_000
    started = time.monotonic()
    async with AsyncSemcacheClient(fake.target, retries=1_000, timeout_s=0.6) as client:
        with pytest.raises(Unavailable):
            await client.complete(QUESTION)
    assert time.monotonic() - started < 0.6 + 0.1  # the deadline, plus scheduling slack
    assert 2 <= fake.servicer.calls["Complete"] < 20


async def test_deadline_is_respected_with_per_call_override(fake: Fake) -> None:
    fake.servicer.delay_s = 5.0
    started = time.monotonic()
    async with AsyncSemcacheClient(fake.target, timeout_s=30) as client:
        with pytest.raises(DeadlineExceeded) as raised:
            await client.complete(QUESTION, timeout_s=0.2)
    assert time.monotonic() - started < 1.0
    assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert fake.servicer.calls["Complete"] == 1  # a deadline is never retried


async def test_stream_is_retried_only_before_the_first_delta(fake: Fake) -> None:
    fake.servicer.failures = 1
    async with AsyncSemcacheClient(fake.target) as client:
        stream = client.stream(QUESTION)
        text = await stream.text()
        assert stream.answer is not None and text.strip() == stream.answer.content
        fake.servicer.break_stream_after_delta = True
        broken = client.stream("another question")
        received: list[str] = []
        with pytest.raises(Unavailable, match="hung up"):
            async for delta in broken:
                received.append(delta)
    assert received == ["answer "] and broken.answer is None
    assert fake.servicer.calls["StreamComplete"] == 3  # 1 failure + 1 success + 1 broken


async def test_tenant_and_api_key_are_sent_as_metadata(fake: Fake) -> None:
    async with AsyncSemcacheClient(fake.target, tenant="acme", api_key="sk-123") as client:
        await client.complete(QUESTION)
    async with AsyncSemcacheClient(fake.target) as client:
        await client.complete(QUESTION)
    sent, bare = fake.servicer.metadata
    assert sent["x-tenant-id"] == "acme" and sent["authorization"] == "Bearer sk-123"
    assert "x-tenant-id" not in bare and "authorization" not in bare


async def test_invalidate_sends_its_filters(fake: Fake) -> None:
    async with AsyncSemcacheClient(fake.target) as client:
        deleted = await client.invalidate(namespace="faq", model="gpt-4o", older_than_s=3600)
    assert deleted == 7
    (sent,) = fake.servicer.requests
    assert (sent.namespace, sent.model, sent.older_than_s, sent.all) == (
        "faq",
        "gpt-4o",
        3600,
        False,
    )


async def test_resource_exhausted_carries_retry_after_and_is_not_retried(fake: Fake) -> None:
    async with AsyncSemcacheClient(fake.target, retries=3) as client:
        with pytest.raises(ResourceExhausted) as raised:
            await client.stats()
    assert raised.value.retry_after_s == pytest.approx(1.5)
    assert raised.value.details == "fake: slow down"
    assert fake.servicer.calls["GetCacheStats"] == 1


async def test_batch_complete_answers_in_order_with_item_failures(fake: Fake) -> None:
    requests = [
        CompleteParams(prompt="one", model="m", temperature=0.2, ttl_s=60),
        CompleteParams(prompt=" "),
        CompleteParams(messages=[("user", "three")], cache_policy="no-store"),
    ]
    async with AsyncSemcacheClient(fake.target) as client:
        results = await client.batch_complete(requests, max_concurrency=2)
    first, failed, third = results
    assert isinstance(first, Answer) and first.content == "answer to one"
    assert failed == ItemFailure(1, grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty")
    assert isinstance(failed.error(), InvalidArgument)
    assert isinstance(third, Answer)
    sent = fake.servicer.requests[0]
    assert sent.max_concurrency == 2
    assert sent.requests[0].temperature == pytest.approx(0.2) and sent.requests[0].ttl_s == 60
    assert not sent.requests[1].HasField("temperature")
    assert sent.requests[2].cache_policy == pb.CACHE_POLICY_NO_STORE


async def test_map_reduce_maps_items_in_batches_and_reduces_in_order(fake: Fake) -> None:
    template = CompleteParams(model="gpt-4o-mini", namespace="reports")
    async with AsyncSemcacheClient(fake.target) as client:
        summary = await client.map_reduce(
            ["alpha", "beta", "gamma", "delta", "epsilon"],
            lambda word: f"Define {word}",
            lambda answers: [a.content for a in answers],
            template=template,
            batch_size=2,
        )
    words = ("alpha", "beta", "gamma", "delta", "epsilon")
    assert summary == [f"answer to Define {w}" for w in words]
    assert [len(r.requests) for r in fake.servicer.requests] == [2, 2, 1]
    assert {r.namespace for batch in fake.servicer.requests for r in batch.requests} == {"reports"}


def _sync_map_reduce(target: str, skip_failures: bool) -> int:
    with SemcacheClient(target) as client:
        return client.map_reduce(
            ["a", "", "c", ""],
            lambda text: text,
            len,
            batch_size=3,
            skip_failures=skip_failures,
        )


async def test_map_reduce_failed_items_raise_or_are_skipped(fake: Fake) -> None:
    assert await asyncio.to_thread(_sync_map_reduce, fake.target, True) == 2
    with pytest.raises(InvalidArgument, match="batch item 1: prompt is empty"):
        await asyncio.to_thread(_sync_map_reduce, fake.target, False)
    async with AsyncSemcacheClient(fake.target) as client:
        with pytest.raises(InvalidArgument, match="batch item 3"):
            await client.map_reduce(["a", "b", "c", " "], str, len, batch_size=3)


def test_bad_client_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SemcacheClient("localhost:1", timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        SemcacheClient("localhost:1", retries=-1)
