"""The OpenAI-compatible HTTP door, called with the real `openai` Python SDK (sync, async,
streaming) against the service running in-process with both doors."""

from __future__ import annotations

import asyncio
import io
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import openai
import pytest
import pytest_asyncio

from semcache_simulator import SimulatorConfig, UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.auth import load_keys
from service.domain import Completion, CompletionRequest
from service.embedding.base import Embedder
from service.errors import (
    InvalidRequestError,
    StartupError,
    UnknownModelError,
    UpstreamError,
)
from service.transport.grpc.status import status_for
from service.transport.http import start_http_from_settings, start_http_server
from service.transport.http.errors import http_error_for
from service.transport.tls import tls_context
from tests.conftest import IsolatedSettings
from tests.httpdoor import (
    CLIENT_KEY,
    MODEL,
    OTHER_KEY,
    QUESTION,
    SAME_FORM,
    HttpService,
    ask,
    start_http_service,
    write_keys_file,
)


@pytest_asyncio.fixture
async def door(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> AsyncIterator[HttpService]:
    running = await start_http_service(embedder, simulator, tmp_path / "data")
    yield running
    await running.close()


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_keys_file(tmp_path / "keys.yaml")


@pytest_asyncio.fixture
async def keyed_door(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path, keys_file: Path
) -> AsyncIterator[HttpService]:
    running = await start_http_service(embedder, simulator, tmp_path / "data", load_keys(keys_file))
    yield running
    await running.close()


# --- the SDKs ------------------------------------------------------------------------------


async def test_sync_sdk_miss_then_paraphrase_is_a_semantic_hit_in_the_headers(
    door: HttpService,
) -> None:
    def calls() -> tuple[Any, Any]:
        with door.client() as client:
            chat = client.chat.completions.with_raw_response
            return (
                chat.create(model=MODEL, messages=ask(QUESTION)),
                chat.create(model=MODEL, messages=ask(SAME_FORM)),
            )

    miss_raw, hit_raw = await asyncio.to_thread(calls)
    miss, hit = miss_raw.parse(), hit_raw.parse()
    assert miss_raw.headers["x-semcache-cache-status"] == "miss"
    assert hit_raw.headers["x-semcache-cache-status"] == "semantic_hit"
    assert 0.0 < float(hit_raw.headers["x-semcache-similarity"]) < 1.0
    assert float(hit_raw.headers["x-semcache-cost-saved-usd"]) > 0
    assert hit_raw.headers["x-semcache-request-id"]
    assert hit_raw.headers["x-semcache-route-reason"] == "cache"
    assert hit.choices[0].message.content == miss.choices[0].message.content
    assert QUESTION in (miss.choices[0].message.content or "")
    assert hit.model == MODEL and hit.usage is not None and hit.usage.total_tokens > 0
    assert door.grpc.simulator.request_count() == 1


async def test_async_sdk_body_extension_says_what_the_cache_did(door: HttpService) -> None:
    async with door.async_client() as client:
        first = await client.chat.completions.create(model=MODEL, messages=ask(QUESTION))
        again = await client.chat.completions.create(model=MODEL, messages=ask(QUESTION))
    first_ext: dict[str, Any] = first.model_extra["semcache"]  # type: ignore[index]
    again_ext: dict[str, Any] = again.model_extra["semcache"]  # type: ignore[index]
    assert first_ext["cache_status"] == "miss" and first_ext["cost_usd"] > 0
    assert again_ext["cache_status"] == "exact_hit" and again_ext["similarity"] == 1.0
    assert again_ext["cost_saved_usd"] == pytest.approx(first_ext["cost_usd"])
    assert again.id == f"chatcmpl-{again_ext['request_id']}"
    assert again.object == "chat.completion"
    assert again.choices[0].finish_reason == "stop"


async def test_sync_sdk_stream_ends_with_usage_and_the_answer_is_cached(
    door: HttpService,
) -> None:
    def stream() -> list[Any]:
        with door.client() as client:
            chunks = client.chat.completions.create(
                model=MODEL,
                messages=ask(QUESTION),
                stream=True,
                stream_options={"include_usage": True},
            )
            return list(chunks)

    chunks = await asyncio.to_thread(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert QUESTION in text
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.choices[0].finish_reason == "stop"
    assert final.model_extra["semcache"]["cache_status"] == "miss"  # type: ignore[index]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens > 0
    # [DONE] was sent after the answer was stored: asking again is a hit at once.
    async with door.async_client() as client:
        hit = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ask(QUESTION)
        )
    assert hit.headers["x-semcache-cache-status"] == "exact_hit"
    assert hit.parse().choices[0].message.content == text


async def test_async_sdk_stream_of_a_hit_replays_the_answer(door: HttpService) -> None:
    async with door.async_client() as client:
        miss = await client.chat.completions.create(model=MODEL, messages=ask(QUESTION))
        stream = await client.chat.completions.create(
            model=MODEL, messages=ask(SAME_FORM), stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.usage is None for chunk in chunks)  # include_usage was not asked for
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == miss.choices[0].message.content
    assert chunks[-1].model_extra["semcache"]["cache_status"] == "semantic_hit"  # type: ignore[index]
    assert door.grpc.simulator.request_count() == 1


async def test_models_lists_the_catalogue(door: HttpService) -> None:
    async with door.async_client() as client:
        models = [model.id async for model in client.models.list()]
        one = await client.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("x" * 5000)
    # Found from outside: it echoed the 5,000-character id whole and suggested naming no
    # model, which means nothing to this route.
    message = str(caught.value)
    assert "router" not in message and len(message) < 1000 and MODEL in message
    assert models == list(door.grpc.app.catalogue.models)
    assert one.id == MODEL and one.owned_by == "openai"


# --- cache controls ------------------------------------------------------------------------


async def test_cache_controls_from_headers_and_the_body_which_wins(door: HttpService) -> None:
    async with door.async_client() as client:
        chat = client.chat.completions.with_raw_response
        await chat.create(model=MODEL, messages=ask(QUESTION))
        bypass = await chat.create(
            model=MODEL, messages=ask(QUESTION), extra_headers={"x-semcache-cache": "bypass"}
        )
        body_wins = await chat.create(
            model=MODEL,
            messages=ask(QUESTION),
            extra_headers={"x-semcache-cache": "bypass"},
            extra_body={"semcache": {"cache": "default"}},
        )
        other_namespace = await chat.create(
            model=MODEL, messages=ask(QUESTION), extra_headers={"x-semcache-namespace": "faq"}
        )
        in_body_namespace = await chat.create(
            model=MODEL, messages=ask(QUESTION), extra_body={"semcache": {"namespace": "faq"}}
        )
    assert bypass.headers["x-semcache-cache-status"] == "bypass"
    assert bypass.headers["x-semcache-cache-detail"] == "bypass"
    assert body_wins.headers["x-semcache-cache-status"] == "exact_hit"
    assert other_namespace.headers["x-semcache-cache-status"] == "miss"
    assert in_body_namespace.headers["x-semcache-cache-status"] == "exact_hit"


async def test_no_store_and_similarity_min_controls(door: HttpService) -> None:
    async with door.async_client() as client:
        chat = client.chat.completions.with_raw_response
        await chat.create(
            model=MODEL, messages=ask(QUESTION), extra_headers={"x-semcache-cache": "no-store"}
        )
        after_no_store = await chat.create(model=MODEL, messages=ask(QUESTION))
        strict = await chat.create(
            model=MODEL,
            messages=ask(SAME_FORM),
            extra_headers={"x-semcache-similarity-min": "0.999"},
        )
    assert after_no_store.headers["x-semcache-cache-status"] == "miss"
    assert strict.headers["x-semcache-cache-status"] == "miss"
    assert strict.headers["x-semcache-cache-detail"] == "below_request_similarity_min"


async def test_unknown_fields_are_ignored_and_openai_fields_are_read(door: HttpService) -> None:
    async with door.async_client() as client:
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "developer", "content": "Answer briefly."},
                {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
            ],
            temperature=0.2,
            top_p=0.9,
            max_completion_tokens=64,
            stop=["\n\n\n"],
            user="someone",
            seed=7,
            # Fields that would change the answer are accepted at their defaults, as
            # frameworks send them (LangChain sends the penalties at 0).
            frequency_penalty=0,
            presence_penalty=0.0,
            logprobs=False,
            parallel_tool_calls=True,
            logit_bias={},
            extra_body={"not_an_openai_field": {"x": 1}},
        )
    assert reply.choices[0].message.content


async def test_text_parts_are_one_line_each(door: HttpService) -> None:
    """Found from outside: parts were joined with nothing, so "What is" and "a dog?"
    reached the provider (and the cache key) as "What isa dog?"."""
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "a dog?"}]
    async with door.async_client() as client:
        first = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": parts}]
        )
        same = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ask("What is\na dog?")
        )
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": [{"type": "text"}]}]
            )
    assert first.headers["x-semcache-cache-status"] == "miss"
    assert same.headers["x-semcache-cache-status"] == "exact_hit"
    assert caught.value.param == "messages[0].content[0].text"


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"stop": 5}, "stop"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"n": 2}, "n"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"extra_body": {"semcache": {"cache": "sometimes"}}}, "semcache.cache"),
        ({"extra_headers": {"x-semcache-ttl-s": "a week"}}, "x-semcache-ttl-s"),
        # Found from outside: a misspelt control fell back to its default silently,
        # serving the default namespace's answer to a call that asked for another.
        ({"extra_body": {"semcache": {"namespce": "billing"}}}, "semcache.namespce"),
        ({"extra_body": {"semcache": {"cache_policy": "bypass"}}}, "semcache.cache_policy"),
        ({"extra_body": {"semcache": {"ttl_s": "60"}}}, "semcache.ttl_s"),
        ({"extra_body": {"semcache": {"similarity_min": "0.9"}}}, "semcache.similarity_min"),
        # Found from outside: these were dropped, so logprobs came back null and
        # legacy functions got plain text.
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 1.5}, "presence_penalty"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ],
)
async def test_malformed_fields_are_a_400_naming_the_field(
    door: HttpService, fields: dict[str, Any], param: str
) -> None:
    async with door.async_client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=ask(QUESTION), **fields)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


async def test_malformed_json_and_bad_messages_are_a_400(door: HttpService) -> None:
    async with aiohttp.ClientSession() as session:
        url = door.base_url + "/chat/completions"
        async with session.post(url, data=b"{not json") as response:
            not_json = response.status, await response.json()
        async with session.post(url, json={"model": MODEL, "messages": []}) as response:
            empty = response.status, await response.json()
        async with session.post(url, json={"messages": ask("hi"), "stream": "yes"}) as response:
            stream_flag = response.status, await response.json()
    assert not_json[0] == 400 and not_json[1]["error"]["param"] == "body"
    assert empty[0] == 400 and empty[1]["error"]["param"] == "messages"
    assert stream_flag[0] == 400 and stream_flag[1]["error"]["param"] == "stream"
    assert set(empty[1]["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/chat/completions", b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":1e999}',
         "max_tokens"),
        ("/chat/completions", b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":NaN}',
         "max_tokens"),
        ("/chat/completions", b'{"messages":[{"role":"user","content":"hi"}],'
         b'"semcache":{"ttl_s":-1e999}}', "semcache.ttl_s"),
        ("/chat/completions", b'{"messages":[{"role":"user","content":"\\ud800 hi"}]}', "body"),
        ("/chat/completions", b'{"messages":[{"role":"system","content":"x\\udfff"},'
         b'{"role":"user","content":"hi"}]}', "body"),
        ("/chat/completions", b"[" * 200_000 + b"]" * 200_000, "body"),
        # Found from outside: an unknown role was reported as param "messages", with a
        # list of roles that left out "developer".
        ("/chat/completions", b'{"messages":[{"role":"robot","content":"hi"}]}',
         "messages[0].role"),
        ("/chat/completions", b'{"messages":[{"role":"user","content":"hi"},'
         b'{"role":"tool","content":"42"}]}', "messages[1].role"),
        ("/semcache/entries", b'{"entries":[{"question":"q","answer":"a"}],"ttl_s":1e999}',
         "ttl_s"),
        ("/semcache/entries", b'{"entries":[{"question":"q\\ud800","answer":"a"}]}', "body"),
        # Found from outside: a number sent as a string, and fields the route does not
        # read, were taken or dropped without a word.
        ("/semcache/entries", b'{"entries":[{"question":"q","answer":"a"}],"ttl_s":"5"}',
         "ttl_s"),
        ("/semcache/entries", b'{"entries":[{"question":"q","answer":"a"}],"tenant":"x"}',
         "tenant"),
        ("/semcache/entries", b'{"entries":[{"question":"q","answer":"a","ttl_s":5}]}',
         "entries[0].ttl_s"),
    ],
)  # fmt: skip
async def test_bodies_json_reads_but_python_cannot_use_are_a_400(
    door: HttpService, route: str, body: bytes, param: str
) -> None:
    """Found by an audit: each was a 500 with a traceback (OverflowError, a lone surrogate
    failing to encode, RecursionError)."""
    async with aiohttp.ClientSession() as session:
        url = door.base_url + route
        headers = {"content-type": "application/json"}
        async with session.post(url, data=body, headers=headers) as response:
            status, error = response.status, (await response.json())["error"]
    assert status == 400, error
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_malformed_http_is_one_log_line_not_a_traceback_per_request(
    door: HttpService, caplog: pytest.LogCaptureFixture
) -> None:
    """Found from outside: a control character in a header (or a header over aiohttp's
    limit) logged the parser's whole traceback per request, a way to flood the log."""
    from structlog.testing import capture_logs

    host, port = door.base_url.split("//")[1].split("/")[0].split(":")
    with capture_logs() as logs:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-request-id: \x01ctl\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            assert b" 400 " in status_line
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.exc_info]
    refused = [e for e in logs if e["event"].startswith("malformed HTTP requests refused")]
    assert len(refused) == 1 and refused[0]["refused"] == 1  # the next two wait their turn


async def test_a_paired_surrogate_escape_is_a_character_not_an_error(door: HttpService) -> None:
    async with aiohttp.ClientSession() as session:
        body = b'{"messages":[{"role":"user","content":"What does \\ud83c\\udf55 mean?"}]}'
        url = door.base_url + "/chat/completions"
        headers = {"content-type": "application/json"}
        async with session.post(url, data=body, headers=headers) as response:
            assert response.status == 200, await response.text()


async def test_a_streamed_tool_call_reaches_the_sdk_as_the_unary_one_does(
    door: HttpService,
) -> None:
    """Found by an audit: streamed tool calls were dropped (one chunk, no tool_calls)."""
    tools: Any = [{"type": "function", "function": {"name": "lookup_order", "parameters": {}}}]
    question = ask("Where is my order 1234?")
    async with door.async_client() as client:
        unary = await client.chat.completions.create(
            model=MODEL, messages=question, tools=tools, tool_choice="required"
        )
        stream = await client.chat.completions.create(
            model=MODEL, messages=question, tools=tools, tool_choice="required", stream=True
        )
        calls = [c for chunk in [c async for c in stream] for c in chunk.choices]
    streamed = [call for c in calls for call in (c.delta.tool_calls or [])]
    expected = (unary.choices[0].message.tool_calls or [])[0].function
    assert [(t.function.name, t.function.arguments) for t in streamed if t.function] == [
        (expected.name, expected.arguments)
    ]
    assert calls[-1].finish_reason == "tool_calls"


async def test_unknown_model_is_a_404(door: HttpService) -> None:
    async with door.async_client() as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-9", messages=ask(QUESTION))
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert "gpt-9" in caught.value.message


async def test_keys_are_checked_and_the_tenant_comes_from_the_key(
    keyed_door: HttpService,
) -> None:
    async with keyed_door.async_client(api_key="sk-sc-not-a-key") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model=MODEL, messages=ask(QUESTION))
    async with keyed_door.async_client(api_key=CLIENT_KEY) as acme:
        await acme.chat.completions.create(model=MODEL, messages=ask(QUESTION))
        hit = await acme.chat.completions.with_raw_response.create(
            model=MODEL, messages=ask(QUESTION), extra_headers={"x-tenant-id": "globex"}
        )
    async with keyed_door.async_client(api_key=OTHER_KEY) as globex:
        other = await globex.chat.completions.with_raw_response.create(
            model=MODEL, messages=ask(QUESTION)
        )
    assert hit.headers["x-semcache-cache-status"] == "exact_hit"  # x-tenant-id is ignored
    assert other.headers["x-semcache-cache-status"] == "miss"  # another tenant's cache


async def test_a_missing_key_is_a_401(keyed_door: HttpService) -> None:
    async with aiohttp.ClientSession() as session:
        url = keyed_door.base_url + "/chat/completions"
        async with session.post(url, json={"messages": ask(QUESTION)}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_over_the_rate_limit_is_a_429_with_retry_after(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    running = await start_http_service(
        embedder, simulator, tmp_path / "data", rate_limit_requests_per_minute=1
    )
    try:
        async with running.async_client() as client:
            await client.chat.completions.create(model=MODEL, messages=ask(QUESTION))
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model=MODEL, messages=ask(QUESTION))
    finally:
        await running.close()
    headers = caught.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert float(headers["retry-after-ms"]) > 0
    assert caught.value.code == "rate_limit_exceeded"


async def test_no_provider_reachable_is_a_503(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    running = await start_http_service(
        embedder,
        simulator,
        tmp_path / "data",
        upstream_base_url="http://127.0.0.1:9/v1",
        retry_max_attempts=1,
    )
    try:
        async with running.async_client() as client:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.chat.completions.create(model=MODEL, messages=ask(QUESTION))
    finally:
        await running.close()
    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_unavailable"
    # The service retried the providers itself: an SDK's own retries would multiply them.
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_a_deadline_too_short_for_the_provider_is_a_504(door: HttpService) -> None:
    async with door.async_client() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=ask(QUESTION), extra_headers={"x-semcache-timeout-s": "0.01"}
            )
    assert caught.value.status_code == 504
    assert door.grpc.simulator.request_count() == 0


async def test_an_unexpected_error_is_a_500_naming_the_request_id(
    door: HttpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(request: CompletionRequest) -> Completion:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(door.grpc.app.pipeline, "complete", broken)
    async with door.async_client() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=ask(QUESTION), extra_headers={"x-request-id": "req-42"}
            )
    assert caught.value.status_code == 500
    assert caught.value.body == {
        "message": "internal error (request id req-42)",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert caught.value.response.headers["x-semcache-request-id"] == "req-42"


async def test_a_failure_mid_stream_is_an_error_event(
    door: HttpService, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        yield "The beginning"
        raise UpstreamError("the provider hung up")

    monkeypatch.setattr(door.grpc.app.pipeline, "stream", failing)
    async with door.async_client() as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=ask(QUESTION), stream=True
        )
        with pytest.raises(openai.APIError, match="the provider hung up"):
            async for _ in stream:
                pass


# --- ids, metrics, start-up ----------------------------------------------------------------


async def test_requests_are_counted_like_grpc_calls(door: HttpService) -> None:
    async with door.async_client() as client:
        await client.chat.completions.create(model=MODEL, messages=ask(QUESTION))
        stream = await client.chat.completions.create(
            model=MODEL, messages=ask(QUESTION), stream=True
        )
        async for _ in stream:
            pass
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-9", messages=ask(QUESTION))
    registry = door.grpc.app.metrics.registry

    def requests(rpc: str, code: str, cache: str) -> float | None:
        labels = {
            "rpc": rpc,
            "code": code,
            "cache": cache,
            "model": MODEL if cache != "none" else "",
        }
        return registry.get_sample_value("semcache_requests_total", labels)

    assert requests("http_chat_completions", "OK", "miss") == 1
    assert requests("http_chat_completions_stream", "OK", "exact_hit") == 1
    assert requests("http_chat_completions", "INVALID_ARGUMENT", "none") == 1
    decisions = {"tenant": "default", "detail": "exact"}
    assert registry.get_sample_value("semcache_cache_decisions_total", decisions) == 1


async def test_an_incoming_request_id_is_kept(door: HttpService) -> None:
    async with door.async_client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ask(QUESTION), extra_headers={"x-request-id": "trace-7"}
        )
    assert raw.headers["x-semcache-request-id"] == "trace-7"
    assert raw.parse().id == "chatcmpl-trace-7"


async def test_open_mode_refuses_a_public_address(door: HttpService) -> None:
    with pytest.raises(StartupError, match="SEMCACHE_HTTP_HOST"):
        await start_http_server(door.grpc.app, "0.0.0.0", 0, None)


async def test_a_busy_port_is_a_one_line_startup_error(door: HttpService) -> None:
    with pytest.raises(StartupError, match="SEMCACHE_HTTP_PORT"):
        await start_http_server(door.grpc.app, "127.0.0.1", door.http.port, None)


async def test_unknown_routes_answer_in_openai_shape(door: HttpService) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(door.base_url + "/embeddings") as response,
    ):
        body = json.loads(await response.text())
    assert response.status == 404
    assert body["error"]["type"] == "invalid_request_error"
    assert (
        body["error"]["code"] == "not_found" and "/v1/chat/completions" in body["error"]["message"]
    )


async def test_a_wrong_method_and_a_body_too_large_say_what_to_change(door: HttpService) -> None:
    """aiohttp's own refusals carry a `code` and say what the route takes or how large a
    body may be (they said only "Method Not Allowed", with `code` null)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(door.base_url + "/chat/completions") as wrong:
            wrong_body = json.loads(await wrong.text())
        async with session.post(
            door.base_url + "/chat/completions", data=io.BytesIO(b"x" * 5_000_000)
        ) as big:
            big_body = json.loads(await big.text())
    assert wrong.status == 405 and wrong_body["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong_body["error"]["message"]
    assert big.status == 413 and big_body["error"]["code"] == "request_too_large"
    assert str(4 * 1024 * 1024) in big_body["error"]["message"]


async def test_a_huge_integer_is_a_400_that_gives_no_server_advice(door: HttpService) -> None:
    """Found from outside: the message told the caller to call sys.set_int_max_str_digits()."""
    body = b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b', "messages": []}'
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(door.base_url + "/chat/completions", data=body, headers=headers) as bad,
    ):
        answer = json.loads(await bad.text())
    assert bad.status == 400
    assert "4,300 digits" in answer["error"]["message"]
    assert "sys." not in answer["error"]["message"]


@pytest.mark.parametrize("route", ["/chat/completions", "/semcache/entries", "/semcache/feedback"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decompress_is_a_400(
    door: HttpService, route: str, encoding: str
) -> None:
    """Found from outside: a corrupt deflate body (and on two routes a corrupt gzip
    one) was a 500 `internal_error` with a traceback in the log."""
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(door.base_url + route, data=b"not compressed at all", headers=headers) as bad,
    ):
        body = json.loads(await bad.text())
    assert bad.status == 400, body
    assert body["error"]["code"] == "bad_content_encoding"
    assert encoding in body["error"]["message"]


async def test_the_settings_turn_the_door_on_and_name_its_host(door: HttpService) -> None:
    app, settings = door.grpc.app, door.grpc.settings
    off = settings.model_copy(update={"http_port": None})
    assert await start_http_from_settings(app, off, None) is None
    running = await start_http_from_settings(app, settings, None)  # http_port=0: a free port
    assert running is not None
    try:
        assert running.port not in (0, door.http.port) and running.host == settings.grpc_host
        async with openai.AsyncOpenAI(base_url=running.base_url, api_key="-") as client:
            models = await client.models.list()
        assert models.data
    finally:
        await running.aclose()


def test_blank_http_host_means_the_grpc_host() -> None:
    settings = IsolatedSettings(grpc_host="127.0.0.2", http_host="")
    assert settings.http_host is None and settings.effective_http_host == "127.0.0.2"
    assert IsolatedSettings(http_host="::1").effective_http_host == "::1"


async def test_a_stream_the_caller_abandons_is_not_stored(
    embedder: Embedder, tmp_path: Path
) -> None:
    slow = UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=20))
    async with slow:
        running = await start_http_service(embedder, slow, tmp_path / "data")
        try:
            body = {"model": MODEL, "messages": ask(QUESTION), "stream": True}
            async with (
                aiohttp.ClientSession() as session,
                session.post(running.base_url + "/chat/completions", json=body) as response,
            ):
                assert b"data: " in await response.content.readline()
            # The connection is closed; the door notices at its next write.
            await _until_counted(running, "http_chat_completions_stream", "CANCELLED")
            async with running.async_client() as client:
                again = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=ask(QUESTION)
                )
        finally:
            await running.close()
    assert again.headers["x-semcache-cache-status"] == "miss"


async def _until_counted(running: HttpService, rpc: str, code: str) -> None:
    registry = running.grpc.app.metrics.registry
    for _ in range(500):
        labels = {"rpc": rpc, "code": code, "cache": "none", "model": ""}
        if registry.get_sample_value("semcache_requests_total", labels):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {rpc} request ended {code}")


def test_an_unknown_model_is_404_over_http_and_still_invalid_argument_over_grpc() -> None:
    error = UnknownModelError("unknown model 'gpt-9'")
    assert http_error_for(error).status == 404
    assert status_for(error) is grpc.StatusCode.INVALID_ARGUMENT
    assert http_error_for(InvalidRequestError("bad")).status == 400
    assert http_error_for(KeyError("surprise")).status == 500


# --- TLS ---------------------------------------------------------------------------------


async def test_the_door_speaks_https_with_the_grpc_ports_certificate(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """API keys travel in `Authorization` headers: with the gRPC port's TLS files set,
    the OpenAI door is HTTPS too, not plain HTTP beside a TLS gRPC port."""
    cert, key = tls_files
    door = await start_http_service(embedder, simulator, tmp_path / "data")
    settings = door.grpc.settings.model_copy(
        update={"tls_cert_file": cert, "tls_key_file": key, "http_port": 0}
    )
    https = await start_http_from_settings(door.grpc.app, settings, None)
    assert https is not None
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        assert https.base_url.startswith("https://")
        async with aiohttp.ClientSession() as session:
            url = f"{https.base_url}/chat/completions"
            body = {"model": MODEL, "messages": ask(QUESTION)}
            async with session.post(url, json=body, ssl=trust) as answer:
                assert answer.status == 200
                assert answer.headers["x-semcache-cache-status"] == "miss"
            plain = https.base_url.replace("https://", "http://")
            with pytest.raises(aiohttp.ClientError):  # no plain HTTP on that port
                async with session.get(f"{plain}/models") as refused:
                    await refused.read()
    finally:
        await https.aclose()
        await door.close()


def test_tls_files_the_door_cannot_use_are_one_line(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a key")
    for key in (not_pem, tmp_path / "missing.pem"):
        with pytest.raises(StartupError) as caught:
            tls_context(cert, key)
        message = str(caught.value)
        assert "SEMCACHE_TLS_KEY_FILE" in message and "\n" not in message


async def test_a_client_gone_mid_body_is_cancelled_without_a_bound_too(
    door: HttpService,
) -> None:
    """The door without an in-flight bound reads the body the same way: a client that
    closes mid-body is CANCELLED, not an internal error with a traceback."""
    _, writer = await asyncio.open_connection("127.0.0.1", door.http.port)
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    writer.write((head + "Content-Length: 100\r\n\r\n").encode() + b'{"messages"')
    await writer.drain()
    writer.close()
    metrics = door.grpc.app.metrics
    labels = {"rpc": "http_chat_completions", "cache": "none", "model": ""}

    def counted(code: str) -> float:
        value = metrics.registry.get_sample_value(
            "semcache_requests_total", {**labels, "code": code}
        )
        return value or 0.0

    for _ in range(500):
        if counted("CANCELLED"):
            break
        await asyncio.sleep(0.01)
    assert counted("CANCELLED") == 1 and counted("INTERNAL") == 0


async def test_the_deadline_header_bounds_a_whole_stream(
    embedder: Embedder, tmp_path: Path
) -> None:
    """Found from outside: a 2 s x-semcache-timeout-s let a 4.85 s trickling stream
    finish over HTTP, where the gRPC door cuts a stream at its deadline."""
    slow = SimulatorConfig(ttft_ms=0, ms_per_token=40)  # a few seconds an answer
    async with UpstreamSimulator(slow) as simulator:
        running = await start_http_service(embedder, simulator, tmp_path / "data")
        try:
            async with running.async_client() as client:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=ask(QUESTION),
                    stream=True,
                    extra_headers={"x-semcache-timeout-s": "0.5"},
                )
                with pytest.raises(openai.APIError) as caught:
                    async for _chunk in stream:
                        pass
            again = await running.grpc.stub.Complete(
                pb.CompleteRequest(prompt=QUESTION, model=MODEL)
            )
        finally:
            await running.close()
    assert "deadline of 0.5s" in str(caught.value)
    assert again.cache_status == pb.CACHE_STATUS_MISS  # nothing stored of the cut stream


def test_a_malformed_header_is_logged_without_its_value() -> None:
    """Found from outside: a bearer key with a stray control byte was logged whole."""
    import logging

    from aiohttp.http_exceptions import BadHttpMessage
    from structlog.testing import capture_logs

    from service.transport.http.malformed import MalformedRequestFilter

    error = BadHttpMessage("Invalid header value char: b'Authorization: Bearer sk-sc-SECRET\\x7f'")
    record = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "x", (), (None, error, None))
    with capture_logs() as logs:
        assert MalformedRequestFilter().filter(record) is False
    assert "SECRET" not in repr(logs)
    assert logs[0]["reason"] == "Invalid header value char"
