"""semcache_client, the thin client distribution: both clients, one suite.

Every scenario runs against the async client and the sync one (driven from a
thread by `SyncDriven`, since the servers run on the test's event loop), on
the real service and on a fake server that fails on cue (UNAVAILABLE,
slowness, RESOURCE_EXHAUSTED). Then the distribution itself: what it declares
it depends on, and what importing it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import re
import subprocess
import sys
import tomllib
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from google.rpc.status_pb2 import Status

from semcache_client import (
    Answer,
    AnswerStream,
    AsyncSemcacheClient,
    CachePolicy,
    CacheStatus,
    CompleteParams,
    DeadlineExceeded,
    InvalidArgument,
    ItemFailure,
    Message,
    RequestOptions,
    ResourceExhausted,
    SemcacheClient,
    Unavailable,
)
from semcache_client._proto.semcache.v1 import semcache_pb2 as pb
from semcache_client._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client._rpc_status import STATUS_DETAILS_KEY, retry_after_s
from tests.conftest import Service

QUESTION = "What is machine learning?"
CLIENT_DIR = Path(__file__).resolve().parents[1] / "clients" / "python"
HEAVY_MODULES = frozenset(
    {
        "service",
        "benchmarks",
        "torch",
        "onnxruntime",
        "onnx",
        "qdrant_client",
        "qdrant_edge",
        "sentence_transformers",
        "transformers",
        "numpy",
    }
)
HEAVY_DISTRIBUTIONS = ("torch", "onnxruntime", "qdrant", "sentence-transformers", "numpy")


@pytest.fixture
def backend() -> str:
    """One store backend: which one serves is the server's business, not the client's."""
    return "edge"


# --- one interface over both clients ----------------------------------------------

_END = object()


class ThreadedStream:
    """A sync `AnswerStream` behind `AsyncAnswerStream`'s interface."""

    def __init__(self, stream: AnswerStream) -> None:
        self._stream = stream

    @property
    def answer(self) -> Answer | None:
        return self._stream.answer

    def __aiter__(self) -> ThreadedStream:
        return self

    async def __anext__(self) -> str:
        delta = await asyncio.to_thread(next, self._stream, _END)
        if delta is _END:
            raise StopAsyncIteration
        return str(delta)

    async def text(self) -> str:
        return await asyncio.to_thread(self._stream.text)


class SyncDriven:
    """A `SemcacheClient` with `AsyncSemcacheClient`'s interface: each call in a thread."""

    def __init__(self, client: SemcacheClient) -> None:
        self._client = client

    def stream(self, *args: Any, **kwargs: Any) -> ThreadedStream:
        return ThreadedStream(self._client.stream(*args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


Connect = Callable[..., contextlib.AbstractAsyncContextManager[Any]]


@contextlib.asynccontextmanager
async def _connect(kind: str, target: str, **kwargs: Any) -> AsyncIterator[Any]:
    if kind == "async":
        async with AsyncSemcacheClient(target, **kwargs) as client:
            yield client
        return
    with SemcacheClient(target, **kwargs) as sync_client:
        yield SyncDriven(sync_client)


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Connect:
    """Opens a client of either kind on a target: `async with connect(target) as client`."""
    return functools.partial(_connect, str(request.param))


def target_of(service: Service) -> str:
    return f"127.0.0.1:{service.server.port}"


# --- the real service -------------------------------------------------------------


async def test_complete_miss_then_hit(service: Service, connect: Connect) -> None:
    async with connect(target_of(service), tenant="acme") as client:
        miss = await client.complete(QUESTION)
        hit = await client.complete("  what is machine   learning ")
    assert miss.cache_status is CacheStatus.MISS and not miss.is_hit
    assert QUESTION in miss.content and miss.usage.total_tokens > 0 and miss.cost_usd > 0
    assert miss.request_id and miss.model and miss.finish_reason == "stop"
    assert hit.cache_status is CacheStatus.EXACT_HIT and hit.is_hit
    assert (hit.content, hit.similarity) == (miss.content, 1.0)
    assert hit.cost_saved_usd == pytest.approx(miss.cost_usd)


async def test_openai_style_dict_messages_are_the_same_conversation(
    service: Service, connect: Connect
) -> None:
    """A {"role", "content"} dict was unpacked as its keys ("messages[0].role is 'role'",
    found by an audit); it is now the same message as the pair."""
    async with connect(target_of(service)) as client:
        first = await client.complete(messages=[("system", "Be brief."), ("user", QUESTION)])
        again = await client.complete(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": QUESTION},
            ]
        )
    assert first.cache_status is CacheStatus.MISS
    assert again.cache_status is CacheStatus.EXACT_HIT


@pytest.mark.parametrize("message", [("user",), {"role": "user"}, "user: hi", ("user", 3)])
def test_a_message_of_another_shape_is_a_type_error_before_sending(message: Any) -> None:
    client = SemcacheClient("localhost:1", retries=0)
    with pytest.raises(TypeError, match="a message is a Message"):
        client.complete(messages=[message])
    client.close()


async def test_stream_gives_deltas_then_the_answer(service: Service, connect: Connect) -> None:
    async with connect(target_of(service)) as client:
        stream = client.stream(messages=[("system", "Be brief."), Message("user", QUESTION)])
        deltas = [delta async for delta in stream]
        replay = client.stream(messages=[("system", "Be brief."), ("user", QUESTION)])
        replayed = await replay.text()
    assert len(deltas) > 1 and stream.answer is not None
    assert "".join(deltas) == stream.answer.content
    assert stream.answer.cache_status is CacheStatus.MISS
    assert replay.answer is not None and replay.answer.cache_status is CacheStatus.EXACT_HIT
    assert replayed == stream.answer.content


async def test_stats_and_invalidate_are_per_tenant(service: Service, connect: Connect) -> None:
    async with connect(target_of(service), tenant="acme") as client:
        await client.complete(QUESTION, namespace="faq")
        await client.complete(QUESTION, namespace="faq")
        stats = await client.stats()
        assert (stats.tenant, stats.entries, stats.misses, stats.exact_hits) == ("acme", 1, 1, 1)
        assert (await client.stats("other")).entries == 0
        with pytest.raises(InvalidArgument):
            await client.invalidate()  # no filter and not all: refused
        assert await client.invalidate(namespace="faq") == 1
        assert (await client.stats()).entries == 0
        await client.complete(QUESTION)
        assert await client.invalidate(all=True) == 1


async def test_cache_policy_by_name(service: Service, connect: Connect) -> None:
    async with connect(target_of(service)) as client:
        await client.complete(QUESTION, temperature=0.0, max_tokens=200)
        bypass = await client.complete(QUESTION, cache_policy="bypass")
        no_store = await client.complete(
            QUESTION, temperature=0.0, max_tokens=200, cache_policy=CachePolicy.NO_STORE
        )
        with pytest.raises(ValueError, match="unknown cache_policy"):
            await client.complete(QUESTION, cache_policy="sometimes")
    assert bypass.cache_status is CacheStatus.BYPASS
    assert no_store.cache_status is CacheStatus.EXACT_HIT


async def test_empty_prompt_is_invalid_argument(service: Service, connect: Connect) -> None:
    async with connect(target_of(service)) as client:
        with pytest.raises(InvalidArgument) as raised:
            await client.complete("")
        with pytest.raises(InvalidArgument):
            await client.stream("   ").text()
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in raised.value.details


# --- a fake server that fails on cue ----------------------------------------------


def _response(prompt: str) -> pb.CompleteResponse:
    return pb.CompleteResponse(
        content=f"answer to {prompt}",
        model="fake-model",
        cache_status=pb.CACHE_STATUS_MISS,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        finish_reason="stop",
        request_id="req-1",
    )


def retry_info_trailer(retry_after_s: float, message: str) -> tuple[tuple[str, bytes], ...]:
    """The `grpc-status-details-bin` trailer of a RESOURCE_EXHAUSTED, with RetryInfo."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(round(retry_after_s * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=8, message=message, details=[detail])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


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
        trailers = retry_info_trailer(1.5, "fake: slow down")
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "fake: slow down", trailing_metadata=trailers
        )
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
        return pb.BatchItemResult(status=Status(code=3, message="prompt is empty"))
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


async def test_unavailable_is_retried_until_it_succeeds(fake: Fake, connect: Connect) -> None:
    fake.servicer.failures = 2
    async with connect(fake.target, retries=2) as client:
        answer = await client.complete(QUESTION)
        text = await client.stream(QUESTION).text()
    assert answer.content == text.strip() == f"answer to {QUESTION}"
    assert fake.servicer.calls == {"Complete": 3, "StreamComplete": 3}


async def test_retries_run_out_and_raise_unavailable(fake: Fake, connect: Connect) -> None:
    fake.servicer.failures = 2
    async with connect(fake.target, retries=1) as client:
        with pytest.raises(Unavailable, match="fake: not yet") as raised:
            await client.complete(QUESTION)
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert fake.servicer.calls["Complete"] == 2


async def test_retries_stop_before_the_deadline(fake: Fake, connect: Connect) -> None:
    fake.servicer.failures = 1_000
    async with connect(fake.target, retries=1_000, timeout_s=0.6) as client:
        # the real cause, not a DEADLINE_EXCEEDED from an attempt with no time left
        with pytest.raises(Unavailable):
            await client.complete(QUESTION)
    assert 2 <= fake.servicer.calls["Complete"] < 20


async def test_deadline_is_respected_with_per_call_override(fake: Fake, connect: Connect) -> None:
    fake.servicer.delay_s = 5.0
    async with connect(fake.target, timeout_s=30) as client:
        with pytest.raises(DeadlineExceeded) as raised:
            await client.complete(QUESTION, timeout_s=0.2)
    assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert fake.servicer.calls["Complete"] == 1  # a deadline is never retried


async def test_stream_is_retried_only_before_the_first_delta(fake: Fake, connect: Connect) -> None:
    fake.servicer.failures = 1
    async with connect(fake.target) as client:
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


async def test_tenant_and_api_key_are_sent_as_metadata(fake: Fake, connect: Connect) -> None:
    async with connect(fake.target, tenant="acme", api_key="sk-123") as client:
        await client.complete(QUESTION)
    async with connect(fake.target) as client:
        await client.complete(QUESTION)
    sent, bare = fake.servicer.metadata
    assert sent["x-tenant-id"] == "acme" and sent["authorization"] == "Bearer sk-123"
    assert "x-tenant-id" not in bare and "authorization" not in bare


@pytest.mark.parametrize(
    ("argument", "value", "named"),
    [
        ("api_key", "sk-sc-…", "U+2026"),  # a placeholder key with a Unicode ellipsis
        ("api_key", "sk-\u00a0123", "U+00A0"),  # a non-breaking space pasted into a key
        ("tenant", "café", "U+00E9"),
        ("api_key", "sk-123\n", "U+000A"),  # the newline `read()` keeps at the end of a file
    ],
)
@pytest.mark.parametrize("client_class", [SemcacheClient, AsyncSemcacheClient])
async def test_metadata_grpc_would_refuse_is_a_clear_error_before_any_call(
    fake: Fake, client_class: Any, argument: str, value: str, named: str
) -> None:
    with pytest.raises(
        ValueError, match=rf"^{argument} has .*{re.escape(named)}.*printable ASCII"
    ) as raised:
        client_class(fake.target, **{argument: value})
    assert value not in str(raised.value)  # a key is a secret: never echoed
    assert "INTERNAL" not in str(raised.value) and not fake.servicer.calls


async def test_every_request_option_is_sent(fake: Fake, connect: Connect) -> None:
    options: RequestOptions = {
        "model": "gpt-4o",
        "namespace": "faq",
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["\n\n"],
        "ttl_s": 60,
        "similarity_min": 0.95,
        "cache_policy": "no-store",
        "response_format": "json_object",
        "tools_json": "[]",
        "tool_choice": "none",
    }
    async with connect(fake.target) as client:
        await client.complete(QUESTION, **options)
        await client.stream(**options, messages=[("user", QUESTION)]).text()
    unary, streamed = fake.servicer.requests
    assert unary.prompt == QUESTION and [m.content for m in streamed.messages] == [QUESTION]
    for sent in (unary, streamed):
        assert (sent.model, sent.namespace, sent.max_tokens, sent.ttl_s) == (
            "gpt-4o",
            "faq",
            50,
            60,
        )
        assert (sent.temperature, sent.top_p, sent.similarity_min) == pytest.approx(
            (0.3, 0.9, 0.95)
        )
        assert list(sent.stop) == ["\n\n"] and sent.cache_policy == pb.CACHE_POLICY_NO_STORE
        assert (sent.response_format, sent.tools_json, sent.tool_choice) == (
            "json_object",
            "[]",
            "none",
        )


def test_request_options_and_complete_params_name_the_same_fields() -> None:
    fields = {f.name for f in dataclasses.fields(CompleteParams)}
    assert fields - {"prompt"} == set(RequestOptions.__annotations__)


async def test_invalidate_sends_its_filters(fake: Fake, connect: Connect) -> None:
    async with connect(fake.target) as client:
        deleted = await client.invalidate(namespace="faq", model="gpt-4o", older_than_s=3600)
        await client.invalidate(tenant="other", all=True)
    assert deleted == 7
    filtered, everything = fake.servicer.requests
    assert (filtered.namespace, filtered.model, filtered.older_than_s, filtered.all) == (
        "faq",
        "gpt-4o",
        3600,
        False,
    )
    assert (everything.tenant, everything.all, everything.namespace) == ("other", True, "")


async def test_resource_exhausted_carries_retry_after_and_is_not_retried(
    fake: Fake, connect: Connect
) -> None:
    async with connect(fake.target, retries=3) as client:
        with pytest.raises(ResourceExhausted) as raised:
            await client.stats()
    assert raised.value.retry_after_s == pytest.approx(1.5)
    assert raised.value.details == "fake: slow down"
    assert fake.servicer.calls["GetCacheStats"] == 1


async def test_batch_complete_answers_in_order_with_item_failures(
    fake: Fake, connect: Connect
) -> None:
    requests = [
        CompleteParams(prompt="one", model="m", temperature=0.2, ttl_s=60),
        CompleteParams(prompt=" "),
        CompleteParams(messages=[("user", "three")], cache_policy="no-store"),
    ]
    async with connect(fake.target) as client:
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


async def test_map_reduce_maps_items_in_batches_and_reduces_in_order(
    fake: Fake, connect: Connect
) -> None:
    words = ("alpha", "beta", "gamma", "delta", "epsilon")
    async with connect(fake.target) as client:
        summary = await client.map_reduce(
            words,
            lambda word: f"Define {word}",
            lambda answers: [a.content for a in answers],
            template=CompleteParams(model="gpt-4o-mini", namespace="reports"),
            batch_size=2,
        )
    assert summary == [f"answer to Define {w}" for w in words]
    assert [len(r.requests) for r in fake.servicer.requests] == [2, 2, 1]
    assert {r.namespace for batch in fake.servicer.requests for r in batch.requests} == {"reports"}


async def test_map_reduce_failed_items_raise_or_are_skipped(fake: Fake, connect: Connect) -> None:
    async with connect(fake.target) as client:
        kept = await client.map_reduce(
            ["a", "", "c", ""], str, len, batch_size=3, skip_failures=True
        )
        with pytest.raises(InvalidArgument, match="batch item 1: prompt is empty"):
            await client.map_reduce(["a", "", "c", ""], str, len, batch_size=3)
        with pytest.raises(InvalidArgument, match="batch item 3"):
            await client.map_reduce(["a", "b", "c", " "], str, len, batch_size=3)
        with pytest.raises(ValueError, match="batch_size"):
            await client.map_reduce(["a"], str, len, batch_size=0)
    assert kept == 2


@pytest.mark.parametrize("client_class", [SemcacheClient, AsyncSemcacheClient])
async def test_bad_client_arguments_fail_at_construction(client_class: Any) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        client_class("localhost:1", timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        client_class("localhost:1", retries=-1)


def test_a_misspelt_filter_or_scope_is_refused_before_anything_is_sent() -> None:
    """Found by an audit: `invalidate(all=True, namespce="scratch")` dropped the unknown
    keyword and cleared the whole tenant; `put_entries(..., namespce="faq")` stored in
    `default`. Both are a TypeError naming the keywords the call takes (no server here:
    nothing may be sent)."""
    client = SemcacheClient("localhost:1", retries=0)
    with pytest.raises(TypeError, match="unknown keyword namespce; use all, all_tenants"):
        client.invalidate(all=True, namespce="scratch")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown keyword namespce; use max_tokens"):
        client.put_entries([("q", "a")], namespce="faq")  # type: ignore[call-arg]
    client.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout_s": -1}, "timeout_s must be positive"),
        ({"timeout_s": 0}, "timeout_s must be positive"),
        ({"timeout_s": "5"}, "timeout_s must be a positive number"),
        ({"cache_policy": None}, "cache_policy must be one of"),
        ({"cache_policy": 3}, "cache_policy must be one of"),
    ],
)
def test_a_bad_per_call_option_is_a_value_error_before_sending(
    options: dict[str, Any], message: str
) -> None:
    """A per-call timeout of 0 or less went out and came back DeadlineExceeded, "5" was a
    TypeError from arithmetic, and a cache_policy of None an AttributeError."""
    client = SemcacheClient("localhost:1", retries=0)
    with pytest.raises(ValueError, match=message):
        client.complete("hi", **options)
    client.close()


# --- google.rpc.Status read without googleapis-common-protos -----------------------


def _status(*details: Any) -> bytes:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return status_pb2.Status(code=8, message="slow down", details=packed).SerializeToString()


def _trailer(blob: bytes) -> list[tuple[str, Any]]:
    return [("x-other", "value"), (STATUS_DETAILS_KEY, blob)]


def test_retry_info_is_found_behind_other_details() -> None:
    info = error_details_pb2.ErrorInfo(reason="QUOTA", domain="semcache", metadata={"k": "v"})
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=250))
    assert retry_after_s(_trailer(_status(info, retry))) == pytest.approx(2.00000025)
    nanos_only = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=500_000_000))
    assert retry_after_s(_trailer(_status(nanos_only))) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "trailer",
    [
        None,
        [],
        [("x-other", "value")],
        _trailer(_status(error_details_pb2.ErrorInfo(reason="QUOTA"))),
        _trailer(b"\xff\xff\xff"),  # not a message
        _trailer(
            _status(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=3)))[:-1]
        ),
    ],
)
def test_no_retry_info_or_a_garbled_trailer_is_none(trailer: Any) -> None:
    assert retry_after_s(trailer) is None


# --- the distribution ---------------------------------------------------------------


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[(]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_the_distribution_declares_no_ml_dependency() -> None:
    project = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared |= _names(extra)
    assert project["name"] == "semcache-client"
    assert not {n for n in declared if any(heavy in n for heavy in HEAVY_DISTRIBUTIONS)}
    # googleapis-common-protos: the stubs import google.rpc.Status (batch item errors)
    assert declared <= {"grpcio", "protobuf", "googleapis-common-protos"}
    installed = importlib.metadata.requires("semcache-client") or []
    assert _names(installed) == _names(project["dependencies"])


def test_importing_the_client_loads_neither_the_service_nor_ml_modules(tmp_path: Path) -> None:
    probe = (
        "import sys, semcache_client, semcache_client.aio, semcache_client.sync;"
        "print(semcache_client.__file__);"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} | "
        "{m for m in sys.modules if m.startswith('google.')})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    where, loaded = result.stdout.splitlines()
    assert Path(where).is_relative_to(CLIENT_DIR)
    modules = set(loaded.split())
    assert "semcache_client" in modules and "grpc" in modules
    assert not modules & HEAVY_MODULES
    # only google.rpc.status, which the stubs import (batch item errors); details are read by hand
    assert {m for m in modules if m.startswith("google.rpc.")} <= {"google.rpc.status_pb2"}


def _accepted(function: Callable[..., Any]) -> set[str]:
    """The names `function` takes, with the keys of `**options: Unpack[SomeTypedDict]`."""
    names = set()
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            (typed_dict,) = typing.get_args(typing.get_type_hints(function)[parameter.name])
            names |= set(typed_dict.__annotations__)
        else:
            names.add(parameter.name)
    return names
