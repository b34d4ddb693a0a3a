"""The Python client at its edges, as an outside audit used it (2026-12-01).

Each test here failed on the client before its fix: a `stop` string sent as one
stop sequence per character, a batch of long answers over gRPC's default 4 MiB
receive limit, UNAVAILABLE retried after the service had already retried its
providers (one call, three times the upstream calls), the store's state missing
from `CacheStats`, gRPC's own errors from a closed client, errors that could not
be unpickled, options of the wrong type failing without naming the option, and
an empty API key accepted until the first call.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from semcache_client import AsyncSemcacheClient, SemcacheClient
from semcache_client._convert import complete_request, put_entries_request
from semcache_client._proto.semcache.v1 import semcache_pb2 as pb
from semcache_client._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client.errors import InvalidArgument, ResourceExhausted, Unavailable
from semcache_client.types import CompleteParams
from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as spb
from service.embedding.base import Embedder
from tests.conftest import make_settings, start_service

LONG_ANSWER = "x" * 300_000  # 24 of them: 7.2 MB, over gRPC's default 4 MiB


@dataclass
class EdgeServicer(pb_grpc.SemanticCacheServiceServicer):
    """Long batch answers, an UNAVAILABLE with or without the no-retry trailer, and a
    store whose storing is paused."""

    no_retry: bool = True
    calls: dict[str, int] = field(default_factory=dict)

    async def Complete(
        self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteResponse:
        self.calls["Complete"] = self.calls.get("Complete", 0) + 1
        trailer = (("x-should-retry", "false"),) if self.no_retry else ()
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "providers are unavailable", trailing_metadata=trailer
        )
        raise AssertionError("abort raises")

    async def BatchComplete(
        self, request: pb.BatchCompleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCompleteResponse:
        answer = pb.CompleteResponse(content=LONG_ANSWER, finish_reason="stop")
        return pb.BatchCompleteResponse(
            results=[pb.BatchItemResult(response=answer) for _ in request.requests]
        )

    async def GetCacheStats(
        self, request: pb.GetCacheStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCacheStatsResponse:
        return pb.GetCacheStatsResponse(
            tenant="default",
            storing_paused=True,
            storing_paused_reason="the disk has 12 MB free",
            store_missing_entries=3,
        )


@pytest_asyncio.fixture
async def edge() -> AsyncIterator[tuple[EdgeServicer, str]]:
    servicer = EdgeServicer()
    server = grpc.aio.server()
    pb_grpc.add_SemanticCacheServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_a_batch_of_long_answers_is_read_whole(edge: tuple[EdgeServicer, str]) -> None:
    _, target = edge
    prompts = [f"question {n}" for n in range(24)]
    async with AsyncSemcacheClient(target, retries=0) as client:
        answers = await client.batch_complete([CompleteParams(p) for p in prompts])
    assert [getattr(a, "content", a) for a in answers] == [LONG_ANSWER] * 24


async def test_an_unavailable_the_service_already_retried_is_not_retried(
    edge: tuple[EdgeServicer, str],
) -> None:
    servicer, target = edge
    async with AsyncSemcacheClient(target, retries=2) as client:
        with pytest.raises(Unavailable, match="providers are unavailable"):
            await client.complete("hi")
        assert servicer.calls["Complete"] == 1
        servicer.no_retry, servicer.calls = False, {}
        with pytest.raises(Unavailable):
            await client.complete("hi")  # the service itself unreachable: retried
        assert servicer.calls["Complete"] == 3


async def test_the_sync_client_does_not_retry_it_either(edge: tuple[EdgeServicer, str]) -> None:
    servicer, target = edge

    def call() -> None:  # on a thread: the server runs on this event loop
        with SemcacheClient(target, retries=2) as client, pytest.raises(Unavailable):
            client.complete("hi")

    await asyncio.to_thread(call)
    assert servicer.calls["Complete"] == 1


async def test_stats_say_whether_storing_is_paused(edge: tuple[EdgeServicer, str]) -> None:
    _, target = edge
    async with AsyncSemcacheClient(target) as client:
        stats = await client.stats()
    assert stats.storing_paused and stats.storing_paused_reason == "the disk has 12 MB free"
    assert stats.store_missing_entries == 3


async def test_the_service_marks_failed_providers_as_already_retried(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    """The real service sends the trailer when its providers fail (here none listens),
    and not with a refusal of the request itself."""
    settings = make_settings(
        "edge", tmp_path / "data", "http://127.0.0.1:9/v1", retry_max_attempts=1
    )
    service = await start_service(embedder, simulator, settings)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await service.stub.Complete(spb.CompleteRequest(prompt="What is water?"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.Complete(spb.CompleteRequest(prompt=""))
    finally:
        await service.close()
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ("x-should-retry", "false") in list(failed.value.trailing_metadata() or ())
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "x-should-retry" not in dict(refused.value.trailing_metadata() or ())


def test_a_stop_string_is_one_stop_sequence() -> None:
    assert list(complete_request(CompleteParams("hi", stop="END")).stop) == ["END"]
    assert list(complete_request(CompleteParams("hi", stop=["a", "b"])).stop) == ["a", "b"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 2**40}, "max_tokens must be a whole number below 2147483648"),
        ({"ttl_s": 1.5}, "ttl_s must be a whole number"),
        ({"namespace": 5}, "namespace must be a string"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"stop": [1]}, "stop must be a string or a list of strings"),
    ],
)
def test_an_option_of_the_wrong_type_is_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        complete_request(CompleteParams("hi", **options))


def test_a_scope_value_of_the_wrong_type_is_named() -> None:
    with pytest.raises(ValueError, match="ttl_s must be a whole number"):
        put_entries_request([("q", "a")], {"ttl_s": 2.5})  # type: ignore[typeddict-item]
    request = put_entries_request([("q", "a")], {"namespace": "faq"})
    assert request.namespace == "faq" and not request.HasField("ttl_s")


@pytest.mark.parametrize("client_class", [SemcacheClient, AsyncSemcacheClient])
def test_an_empty_api_key_is_refused_at_construction(client_class: Any) -> None:
    with pytest.raises(ValueError, match="api_key is empty"):
        client_class("localhost:1", api_key="")


def test_a_closed_client_says_so() -> None:
    client = SemcacheClient("localhost:1", retries=0)
    client.close()
    with pytest.raises(ValueError, match="SemcacheClient is closed"):
        client.complete("hi")
    with pytest.raises(ValueError, match="SemcacheClient is closed"):
        client.stream("hi")


async def test_a_closed_async_client_says_so() -> None:
    client = AsyncSemcacheClient("localhost:1", retries=0)
    await client.aclose()
    with pytest.raises(ValueError, match="AsyncSemcacheClient is closed"):
        await client.stats()


def test_client_errors_survive_pickling() -> None:
    invalid = pickle.loads(pickle.dumps(InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "bad")))
    assert isinstance(invalid, InvalidArgument) and invalid.details == "bad"
    assert invalid.code is grpc.StatusCode.INVALID_ARGUMENT
    exhausted = ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", 1.5)
    copy = pickle.loads(pickle.dumps(exhausted))
    assert isinstance(copy, ResourceExhausted) and copy.retry_after_s == 1.5
    assert str(copy) == str(exhausted)
