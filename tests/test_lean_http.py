"""`service.llm.lean_http`: the provider's httpx client and openai client take short cuts
on a plain call, and the requests they send are the ones httpx and the SDK would send."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import web

from service.llm.aiohttp_transport import AiohttpTransport
from service.llm.lean_http import LeanAsyncClient, LeanAsyncOpenAI
from service.llm.openai_compat import OpenAICompatProvider
from tests.test_upstream_wire import CALL, chat_server

URL = "http://upstream.test/v1/chat/completions"
HEADERS = [
    ("Authorization", "Bearer k"),
    ("Content-Type", "application/json"),
    ("Accept", "application/json"),  # one of httpx's own defaults, given again
    ("X-A", "1"),
    ("X-A", "2"),  # a name given twice keeps both
]


def answering(*responses: httpx2.Response) -> tuple[httpx2.MockTransport, list[httpx2.Request]]:
    """A transport answering `responses` in turn, and the requests it was sent."""
    seen: list[httpx2.Request] = []
    queue = list(responses)

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx2.MockTransport(handle), seen


def _shape(request: httpx2.Request) -> tuple[Any, ...]:
    headers = request.headers.multi_items()  # in order, repeated names and all
    return request.method, str(request.url), headers, request.content, request.extensions


@pytest.mark.parametrize("timeout", [httpx2.USE_CLIENT_DEFAULT, 2.5, httpx2.Timeout(3.0, read=9)])
def test_a_plain_call_is_built_as_httpx_builds_it(timeout: Any) -> None:
    client = LeanAsyncClient(answering()[0])
    args: dict[str, Any] = {"content": b'{"x": 1}', "headers": HEADERS, "timeout": timeout}
    lean = client.build_request("POST", URL, **args)
    assert _shape(lean) == _shape(httpx2.AsyncClient.build_request(client, "POST", URL, **args))


async def test_a_plain_call_goes_straight_to_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("httpx's send loop was used")

    def refused_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("httpx's build_request was used")

    transport, seen = answering(httpx2.Response(200, content=b'{"ok": true}'))
    client = LeanAsyncClient(transport)
    monkeypatch.setattr(httpx2.AsyncClient, "build_request", refused_build)
    monkeypatch.setattr(httpx2.AsyncClient, "send", refused)
    request = client.build_request("POST", URL, content=b"{}", headers=HEADERS)
    response = await client.send(request)
    assert response.json() == {"ok": True} and response.request is request
    assert seen == [request]


async def test_a_redirect_is_followed_as_httpx_follows_it() -> None:
    moved = httpx2.Response(307, headers={"Location": "http://upstream.test/v2/chat"})
    transport, seen = answering(moved, httpx2.Response(200, content=b"moved here"))
    client = LeanAsyncClient(transport)
    response = await client.send(client.build_request("POST", URL, content=b"{}", headers=HEADERS))
    assert response.status_code == 200 and response.content == b"moved here"
    assert [str(request.url) for request in seen] == [URL, "http://upstream.test/v2/chat"]


async def test_a_cookie_the_provider_set_goes_back_with_the_next_call() -> None:
    sets = httpx2.Response(200, headers={"Set-Cookie": "lb=a1; Path=/"}, content=b"{}")
    transport, seen = answering(sets, httpx2.Response(200, content=b"{}"))
    client = LeanAsyncClient(transport)
    for _ in range(2):
        await client.send(client.build_request("POST", URL, content=b"{}", headers=HEADERS))
    assert "cookie" not in seen[0].headers
    assert seen[1].headers["cookie"] == "lb=a1"


async def test_event_hooks_and_a_closed_client_take_httpx_s_path() -> None:
    hooked: list[str] = []

    async def hook(request: httpx2.Request) -> None:
        hooked.append(str(request.url))

    transport, _ = answering(httpx2.Response(200, content=b"{}"))
    client = LeanAsyncClient(transport, event_hooks={"request": [hook]})
    await client.send(client.build_request("POST", URL, content=b"{}", headers=HEADERS))
    assert hooked == [URL]
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.send(client.build_request("POST", URL, content=b"{}", headers=HEADERS))


def test_the_joined_url_is_the_sdk_s_own_and_follows_the_base_url() -> None:
    client = LeanAsyncOpenAI(base_url="http://a.test/v1", api_key="k")
    for path in ("/chat/completions", "completions", "http://elsewhere.test/x?y=1"):
        assert client._prepare_url(path) == openai.AsyncOpenAI._prepare_url(client, path)
        assert client._prepare_url(path) == openai.AsyncOpenAI._prepare_url(client, path)
    client.base_url = httpx2.URL("http://b.test/v2/")
    assert str(client._prepare_url("/chat/completions")) == "http://b.test/v2/chat/completions"


@asynccontextmanager
async def recording() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A one-route chat server's base URL, and the headers of each request it got."""
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({name.lower(): value for name, value in request.headers.items()})
        return web.json_response(
            {"model": "m", "choices": [{"index": 0, "message": {"content": "hi"}}]}
        )

    async with chat_server(handle) as base_url:
        yield base_url, seen


async def test_the_provider_sends_what_the_sdk_s_own_client_sends() -> None:
    async with recording() as (base_url, seen):
        provider = OpenAICompatProvider(base_url, "k", 5.0, name="p")
        sdk = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="k",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(transport=AiohttpTransport()),
        )
        try:
            answer = await provider.complete(CALL)
            body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
            await sdk.post("/chat/completions", cast_to=object, body=body, options={"timeout": 5.0})
        finally:
            await provider.close()
            await sdk.close()
    assert answer.content == "hi"
    lean, plain = seen
    assert lean == plain


async def test_a_compressed_answer_is_read_as_httpx_reads_it() -> None:
    """The short path leaves decoding to httpx's response, as its own path did: aiohttp
    hands over the bytes as sent (`auto_decompress=False`)."""

    async def handle(request: web.Request) -> web.Response:
        answer = {"model": "m", "choices": [{"index": 0, "message": {"content": "squeezed"}}]}
        body = gzip.compress(json.dumps(answer).encode())
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip"}, content_type="application/json"
        )

    async with chat_server(handle) as base_url:
        provider = OpenAICompatProvider(base_url, "k", 5.0, name="p")
        try:
            answer = await provider.complete(CALL)
        finally:
            await provider.close()
    assert answer.content == "squeezed"
