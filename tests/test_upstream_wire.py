"""What `OpenAICompatProvider` makes of the wire: its aiohttp transport's failures become
the same errors httpx's did, and answers are read from their JSON as sent."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
import structlog.testing
from aiohttp import web

from service.domain import ChatMessage, CompletionRequest, SamplingParams, Usage
from service.errors import UpstreamError, UpstreamTimeoutError
from service.llm.http_errors import RetryableUpstreamError
from service.llm.openai_compat import OpenAICompatProvider, _StreamedAnswer
from service.llm.provider import ProviderAnswer, ProviderCall
from service.pipeline.request import CachingPolicy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CALL = ProviderCall("m", (ChatMessage("user", "hello"),), SamplingParams(), 5.0)


@asynccontextmanager
async def chat_server(handler: Handler) -> AsyncIterator[str]:
    """The base URL of a one-route server answering chat completions with `handler`."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving(handler: Handler, timeout_s: float = 5.0) -> AsyncIterator[OpenAICompatProvider]:
    """A provider pointed at a one-route server answering with `handler`."""
    async with chat_server(handler) as base_url:
        provider = OpenAICompatProvider(base_url, "k", timeout_s, name="p")
        try:
            yield provider
        finally:
            await provider.close()


async def outcome(provider: OpenAICompatProvider, call: ProviderCall, stream: bool) -> object:
    if not stream:
        return await provider.complete(call)
    return [item async for item in provider.stream(call)]


def sse_of(chunks: list[dict[str, Any]]) -> Handler:
    """A handler streaming `chunks` as server-sent events, then `[DONE]`."""

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    return sse


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_connection_is_retryable_not_a_timeout(stream: bool) -> None:
    # The openai SDK's own aiohttp adapter reports this as a timeout.
    provider = OpenAICompatProvider(f"http://127.0.0.1:{unused_port()}/v1", "k", 5.0, name="p")
    try:
        with pytest.raises(RetryableUpstreamError, match="upstream provider p is unreachable"):
            await outcome(provider, CALL, stream)
    finally:
        await provider.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_connection_dropped_before_the_answer_is_retryable(stream: bool) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async with serving(drop) as provider:
        with pytest.raises(RetryableUpstreamError, match="unreachable"):
            await outcome(provider, CALL, stream)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("provider_timeout_s", "message", "level"),
    [
        (0.2, "did not answer in time", "warning"),
        # Found from outside: a caller's 15-60 ms deadline was logged as a warning
        # blaming the provider.
        (5.0, "the caller's deadline ended the call to upstream provider p after 0.2s", "info"),
    ],
)
async def test_a_silent_provider_times_out(
    stream: bool, provider_timeout_s: float, message: str, level: str
) -> None:
    released = asyncio.Event()

    async def silent(_request: web.Request) -> web.StreamResponse:
        await released.wait()
        return web.Response()

    async with serving(silent, provider_timeout_s) as provider:
        call = ProviderCall("m", CALL.messages, CALL.sampling, 0.2)
        with (
            structlog.testing.capture_logs() as logged,
            pytest.raises(UpstreamTimeoutError, match=message),
        ):
            await outcome(provider, call, stream)
        released.set()
    assert [entry["log_level"] for entry in logged] == [level]


async def test_the_request_carries_the_key_and_the_body_create_would_send() -> None:
    seen: dict[str, object] = {}

    async def record(request: web.Request) -> web.StreamResponse:
        seen["authorization"] = request.headers.get("Authorization")
        seen["body"] = await request.json()
        return web.json_response({"model": "m", "choices": [{"message": {"content": "hi"}}]})

    sampling = SamplingParams(temperature=0.5, max_tokens=7, stop=("x",), tool_choice="auto")
    async with serving(record) as provider:
        await provider.complete(ProviderCall("m", CALL.messages, sampling, 5.0))
    assert seen["authorization"] == "Bearer k"
    assert seen["body"] == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0.5,
        "max_tokens": 7,
        "stop": ["x"],
        "tool_choice": "auto",
    }


async def test_an_answer_is_read_from_its_json_with_the_same_defaults() -> None:
    async def sparse(_request: web.Request) -> web.StreamResponse:
        # No model, no finish reason, no usage, null content: the defaults fill in.
        return web.json_response({"choices": [{"message": {"content": None}}]})

    async with serving(sparse) as provider:
        answer = await provider.complete(CALL)
    assert answer == ProviderAnswer(content="", model="m", finish_reason="", usage=Usage())


async def test_an_answer_with_no_finish_reason_is_served_but_never_stored() -> None:
    """Found from outside: a unary answer whose provider did not say it finished was
    read as "stop" and cached, where the same answer streamed is a broken stream."""

    async def unsaid(_request: web.Request) -> web.StreamResponse:
        body = {"model": "m", "choices": [{"message": {"content": "Half an ans"}}]}
        return web.json_response(body)

    async with serving(unsaid) as provider:
        answer = await provider.complete(CALL)
    request = CompletionRequest(messages=(ChatMessage("user", "q"),))
    assert (answer.content, answer.finish_reason) == ("Half an ans", "")
    assert not CachingPolicy().storable(request, answer)


async def test_a_json_answer_under_another_content_type_is_still_read() -> None:
    body = {"model": "m2", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}

    async def plain(_request: web.Request) -> web.StreamResponse:
        return web.Response(text=json.dumps(body), content_type="text/plain")

    async with serving(plain) as provider:
        answer = await provider.complete(CALL)
    assert (answer.content, answer.model) == ("ok", "m2")


@pytest.mark.parametrize(
    "payload", [[1, 2], {"choices": []}, {"choices": "no"}, "not json", b"not json"]
)
async def test_an_answer_that_is_no_chat_completion_is_an_upstream_error(payload: object) -> None:
    """A bytes payload is sent as `application/json` (found by an audit: the client's own
    JSON parse raised past the provider, a 500 with a traceback)."""

    async def odd(_request: web.Request) -> web.StreamResponse:
        if isinstance(payload, bytes):
            return web.Response(body=payload, content_type="application/json")
        if isinstance(payload, str):
            return web.Response(text=payload, content_type="text/plain")
        return web.json_response(payload)

    async with serving(odd) as provider:
        with pytest.raises(UpstreamError, match="upstream provider p returned"):
            await provider.complete(CALL)


async def test_a_stream_is_read_from_its_chunks() -> None:
    chunks = [
        {"model": "m3", "choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"model": "m3", "choices": [{"delta": {"content": "Hel"}}]},
        {"model": "m3", "choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"model": "m3", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]

    async with serving(sse_of(chunks)) as provider:
        items = [item async for item in provider.stream(CALL)]
    assert items == ["Hel", "lo", ProviderAnswer("Hello", "m3", "stop", Usage(3, 2))]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (b"data: {cut short\n\n", "not chat chunks"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "overloaded"),
    ],
)
async def test_a_stream_event_that_is_broken_or_an_error_is_an_upstream_error(
    event: bytes, error: str
) -> None:
    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n')
        await response.write(event)
        return response

    items: list[object] = []
    async with serving(sse) as provider:
        with pytest.raises(UpstreamError, match=error):
            async for item in provider.stream(CALL):
                items.append(item)
    assert items == ["Hel"]


async def test_a_stream_whose_body_stays_open_after_done_still_ends() -> None:
    """After [DONE] the rest of the body is read for reuse, but not waited for."""
    hold = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "Hi"}, ')
        await response.write(b'"finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
        await hold.wait()  # never ends the body
        return response

    async with serving(sse) as provider:
        items = await asyncio.wait_for(outcome(provider, CALL, stream=True), timeout=5)
        hold.set()
    assert items == ["Hi", ProviderAnswer("Hi", "m", "stop", Usage())]


async def test_the_environments_proxy_carries_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        seen.append(str(request.url))
        return web.json_response({"model": "m", "choices": [{"message": {"content": "via"}}]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{runner.addresses[0][1]}")
    provider = OpenAICompatProvider("http://upstream.invalid/v1", "k", 5.0, name="p")
    try:
        answer = await provider.complete(CALL)
    finally:
        await provider.close()
        await runner.cleanup()
    assert answer.content == "via"
    assert seen and all("upstream.invalid" in url for url in seen)


@pytest.mark.parametrize(
    "chunk",
    [
        {"model": 3, "usage": "u", "choices": "x"},
        {"model": "", "usage": None, "choices": [5, {"finish_reason": 1, "delta": "d"}]},
        {"choices": [{"finish_reason": "", "delta": {"content": 7}}, {"delta": None}]},
        {"usage": {"prompt_tokens": True, "completion_tokens": "4"}, "choices": None},
    ],
)
def test_a_stream_chunk_s_fields_of_the_wrong_type_are_ignored(chunk: dict[str, Any]) -> None:
    answer = _StreamedAnswer("asked-model")
    answer.add({"model": "m", "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
    assert answer.add(chunk) == []
    assert (answer.model, answer.finish_reason, answer.parts) == ("m", "", [])
    assert answer.usage in (Usage(2, 3), Usage(0, 0))
    assert answer.add({"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}) == [
        "hi"
    ]
    assert (answer.parts, answer.finish_reason) == (["hi"], "stop")


async def test_tool_calls_that_are_not_a_list_of_objects_are_an_upstream_error() -> None:
    """Found from outside: a string `tool_calls` raised AttributeError, INTERNAL."""

    async def odd(_request: web.Request) -> web.StreamResponse:
        message = {"content": "", "tool_calls": "get_weather"}
        return web.json_response({"model": "m", "choices": [{"message": message}]})

    async with serving(odd) as provider:
        with pytest.raises(UpstreamError, match="tool_calls"):
            await provider.complete(CALL)


async def test_max_completion_tokens_goes_upstream_under_the_name_the_caller_used() -> None:
    """Found from outside: an app's max_completion_tokens was sent on as max_tokens,
    which OpenAI's reasoning models refuse with a 400 the caller cannot fix."""
    from service.transport.http.wire import parse_chat

    seen: dict[str, object] = {}

    async def record(request: web.Request) -> web.StreamResponse:
        seen["body"] = await request.json()
        return web.json_response({"model": "m", "choices": [{"message": {"content": "hi"}}]})

    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    newer = parse_chat({**body, "max_completion_tokens": 7}, {}, "t", None, "r").request
    older = parse_chat({**body, "max_tokens": 7}, {}, "t", None, "r").request
    async with serving(record) as provider:
        await provider.complete(ProviderCall("m", CALL.messages, newer.sampling, 5.0))
        sent_newer = seen["body"]
        await provider.complete(ProviderCall("m", CALL.messages, older.sampling, 5.0))
    assert isinstance(sent_newer, dict) and sent_newer["max_completion_tokens"] == 7
    assert "max_tokens" not in sent_newer
    assert seen["body"] == {**body, "max_tokens": 7}
    assert newer.sampling.max_tokens == older.sampling.max_tokens == 7  # one cache scope


async def test_a_stream_closed_with_done_but_no_finish_reason_is_served_unsaid() -> None:
    """Found from outside: the provider ended its stream itself ([DONE], usage) without a
    finish reason, and the stream failed as broken off after all its text was sent,
    where the same answer unary is served with `finish_reason` empty (and never stored)."""
    chunks = [
        {"model": "m", "choices": [{"delta": {"content": "Half an ans"}}]},
        {"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]

    async with serving(sse_of(chunks)) as provider:
        items = [item async for item in provider.stream(CALL)]
    answer = ProviderAnswer("Half an ans", "m", "", Usage(3, 4))
    assert items == ["Half an ans", answer]
    request = CompletionRequest(messages=(ChatMessage("user", "q"),))
    assert not CachingPolicy().storable(request, answer)


async def test_a_stream_that_stops_without_done_or_finish_reason_is_retryable() -> None:
    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n')
        return response

    async with serving(sse) as provider:
        with pytest.raises(RetryableUpstreamError, match="ended the stream early"):
            await outcome(provider, CALL, stream=True)
