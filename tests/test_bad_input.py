"""Malformed input gets INVALID_ARGUMENT saying what to change, never INTERNAL or
UNKNOWN, and nothing unbounded is sent upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.domain import ChatMessage, CompletionRequest
from service.embedding.base import Embedder
from service.errors import InvalidRequestError
from service.validation import Limits, validate
from tests.conftest import Service, make_settings, start_service

METHOD = "/semcache.v1.SemanticCacheService/"
# A reply's status message must stay short: gRPC clients refuse trailers past 8 KiB.
MAX_DETAILS_CHARS = 500
TOOL = '{"type": "function", "function": {"name": "f", "parameters": {"x": %s}}}'


@pytest_asyncio.fixture
async def edge(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[Service]:
    settings = make_settings("edge", tmp_path / "data", simulator.base_url)
    service = await start_service(embedder, simulator, settings)
    yield service
    await service.close()


async def call_both(service: Service, request: pb.CompleteRequest) -> list[grpc.aio.AioRpcError]:
    """The error each of Complete and StreamComplete ends `request` with."""
    errors = []
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await service.stub.Complete(request)
    errors.append(unary.value)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in service.stub.StreamComplete(request):
            pass
    errors.append(streamed.value)
    return errors


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"tools_json": "[" + TOOL % "NaN" + "]"}, "NaN"),
    ({"tools_json": "[" + TOOL % "Infinity" + "]"}, "Infinity"),
    ({"tools_json": "[" + TOOL % "-Infinity" + "]"}, "Infinity"),
    ({"tools_json": "[" + TOOL % "1e400" + "]"}, "1e400"),
    ({"tools_json": "[" * 5_000 + "]" * 5_000}, "nests 5000 levels"),
    ({"tools_json": "[" + TOOL % ('"' + "x" * 70_000 + '"') + "]"}, "the limit is 65536 bytes"),
    ({"tools_json": "[" + TOOL % '"\\ud800"' + "]"}, "surrogate"),
    ({"tools_json": "{not json"}, "tools_json is not valid JSON"),
    ({"stop": ["x" * 1_000_000]}, "stop[0] is 1000000 bytes"),
    ({"stop": ["ok", "y" * 1_025]}, "stop[1]"),
    ({"tool_choice": "{not json"}, "tool_choice is not valid JSON"),
    ({"tool_choice": '{"type": "function", "x": NaN}'}, "NaN"),
    ({"tool_choice": "{" * 2_000}, "tool_choice nests"),
    ({"tool_choice": "sometimes"}, "tool_choice must be 'auto', 'none', 'required'"),
    ({"tools_json": "[" + TOOL % ("9" * 5_000) + "]"}, "an integer of 5000 digits"),
    ({"tool_choice": "{" + " " * 5_000 + "}"}, "tool_choice is 5002 bytes"),
    ({"tool_choice": '"auto"'}, "tool_choice must be"),
    ({"tool_choice": "required"}, "tool_choice is 'required' but the request has no tools"),
    ({"tool_choice": '{"type": "function", "function": {"name": "f"}}'}, "has no tools"),
    ({"response_format": "r" * 100_000}, "response_format"),
    ({"namespace": "n " * 50_000}, "namespace"),
]


@pytest.mark.parametrize(("fields", "message_part"), BAD_FIELDS)
async def test_malformed_fields_are_invalid_argument_and_never_sent_upstream(
    edge: Service, fields: dict[str, Any], message_part: str
) -> None:
    request = pb.CompleteRequest(prompt="What is machine learning?", **fields)
    for error in await call_both(edge, request):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        details = error.details() or ""
        assert message_part in details
        assert len(details) <= MAX_DETAILS_CHARS
    assert edge.simulator.request_count() == 0


async def test_a_long_role_is_refused_with_a_short_message(edge: Service) -> None:
    request = pb.CompleteRequest(messages=[pb.Message(role="r" * 100_000, content="hi")])
    for error in await call_both(edge, request):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "role" in (error.details() or "")
        assert len(error.details() or "") <= MAX_DETAILS_CHARS


async def test_well_formed_tools_and_stops_within_the_limits_are_served(edge: Service) -> None:
    request = pb.CompleteRequest(
        prompt="What is machine learning?",
        tools_json="[" + TOOL % '{"type": "number", "minimum": 1.5e300}' + "]",
        tool_choice="auto",
        stop=["\n\n", "z" * 1_024],
    )
    response = await edge.stub.Complete(request)
    assert response.content or response.tool_calls_json


RAW_BYTES = [
    (b"\x0a\x02\xff\xfe", "bad UTF-8"),  # prompt (field 1) holding invalid UTF-8
    (b"\x0a\x05ab", "corrupt"),  # prompt's length says 5, 2 bytes follow
    (b"\x28\xff\xff", "corrupt"),  # max_tokens (field 5): a varint cut short
    (b"\xff", "corrupt"),  # a tag cut short
]


@pytest.mark.parametrize(("raw", "reason"), RAW_BYTES)
async def test_malformed_protobuf_bytes_are_invalid_argument(
    edge: Service, raw: bytes, reason: str
) -> None:
    unary = edge.channel.unary_unary(
        METHOD + "Complete",
        request_serializer=lambda b: b,
        response_deserializer=pb.CompleteResponse.FromString,
    )
    stream = edge.channel.unary_stream(
        METHOD + "StreamComplete",
        request_serializer=lambda b: b,
        response_deserializer=pb.StreamCompleteResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as unary_error:
        await unary(raw)
    with pytest.raises(grpc.aio.AioRpcError) as stream_error:
        async for _ in stream(raw):
            pass
    for error in (unary_error.value, stream_error.value):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = error.details() or ""
        assert "semcache.v1.CompleteRequest" in details and reason in details
    assert edge.simulator.request_count() == 0


@pytest.mark.parametrize("prompt", ["\x00", "\u200b", "\ufeff", "\x01\x02\x03\x7f", " \u2060\n"])
def test_a_prompt_with_no_visible_character_is_empty(prompt: str) -> None:
    """Found by an audit: these passed `.strip()`, went upstream and were cached, and each
    was then served the answer of another (their compared forms were all empty)."""
    request = CompletionRequest(messages=(ChatMessage("user", prompt),))
    with pytest.raises(InvalidRequestError, match="no visible character"):
        validate(request, Limits())
