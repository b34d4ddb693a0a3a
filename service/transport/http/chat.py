"""`POST /v1/chat/completions` and `GET /v1/models`: OpenAI's API onto the request pipeline.

A stream follows the pipeline's contract for storing: it is iterated with
`async for` to its end, and the final content chunk (the one with
`finish_reason`) is written before the pipeline is asked for the next item,
which is when it stores the answer. Only then go the usage chunk and
`data: [DONE]`, so a caller that has read `[DONE]` finds the answer cached,
and one that went away before the final chunk was written stores nothing.

Errors raised before the first byte of a stream are ordinary HTTP errors
(400, 401, 404, 429, ...); one raised after it is an `{"error": ...}` event,
which the OpenAI SDKs raise as `APIError`, and the stream ends without `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing

import structlog
from aiohttp import web

from service.batching.deltas import join_waiting_text
from service.domain import Completion
from service.errors import UnknownModelError, UpstreamTimeoutError
from service.transport.http.door import CALL, DOOR, HttpCall
from service.transport.http.errors import BadFieldError, error_body, http_error_for
from service.transport.http.replies import (
    DONE,
    REQUEST_ID_HEADER,
    ChunkWriter,
    chat_completion,
    completion_headers,
    sse,
)
from service.transport.http.wire import ChatCall, parse_chat
from service.validation import encodable

log = structlog.get_logger(__name__)

TIMEOUT_HEADER = "x-semcache-timeout-s"
# The OpenAI Python SDK says how long it will wait for a response (its read timeout).
SDK_TIMEOUT_HEADER = "x-stainless-read-timeout"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
RPC_UNARY = "http_chat_completions"
RPC_STREAM = "http_chat_completions_stream"
RPC_MODELS = "http_models"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/chat/completions`: one answer, or a stream of chunks when `stream` is true.

    Raises:
        SemcacheError: the request is refused or fails before a byte is sent.
    """
    door, call = request.app[DOOR], request[CALL]
    call.rpc = RPC_UNARY
    principal = door.principal(request)
    body = await json_body(request)
    streaming = isinstance(body, dict) and body.get("stream") is True
    deadline = deadline_s(request, streaming)
    chat = parse_chat(body, request.headers, principal.tenant, deadline, call.request_id)
    if chat.stream:
        call.rpc = RPC_STREAM
        return await _stream(request, chat, call)
    completion = await door.app.pipeline.complete(chat.request)
    _served(call, completion)
    return web.json_response(
        chat_completion(completion, call.request_id),
        headers=completion_headers(completion, call.request_id),
    )


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the catalogue's models, in OpenAI's list shape.

    Raises:
        AuthenticationError: keys are configured and the caller sent no known key.
    """
    door, call = request.app[DOOR], request[CALL]
    call.rpc = RPC_MODELS
    door.principal(request)
    catalogue = door.app.catalogue
    data = [_model(name, spec.provider) for name, spec in catalogue.models.items()]
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """`GET /v1/models/{model}`: one catalogue model.

    Raises:
        UnknownModelError: the catalogue has no such model (404).
    """
    door, call = request.app[DOOR], request[CALL]
    call.rpc = RPC_MODELS
    door.principal(request)
    name = request.match_info["model"]
    spec = door.app.catalogue.models.get(name)
    if spec is None:  # not the chat route's hint to let the router choose
        shown = name if len(name) <= 64 else f"{name[:64]}…"
        known = ", ".join(sorted(door.app.catalogue.models))
        raise UnknownModelError(f"no model {shown!r} in the catalogue; the models are {known}")
    return web.json_response(_model(spec.name, spec.provider))


def _model(name: str, provider: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": provider}


async def json_body(request: web.Request) -> object:
    """The request's JSON body.

    Raises:
        BadFieldError: the body is not JSON.
        HTTPRequestEntityTooLarge: the body is larger than the server takes.
    """
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError as error:
        if "int_max_str_digits" in str(error):  # Python's advice to the server, not the caller
            raise BadFieldError(
                "body", "the request body holds an integer of more than 4,300 digits"
            ) from None
        raise BadFieldError("body", f"the request body is not valid JSON ({error})") from None
    except RecursionError:
        raise BadFieldError("body", "the request body is nested too deeply to read") from None
    if _SURROGATE_ESCAPE.search(raw) and not encodable(body):  # the common body pays nothing
        raise BadFieldError(
            "body",
            "a string in the request body holds a lone UTF-16 surrogate (an unpaired"
            " \\ud800-\\udfff escape); send valid Unicode",
        )
    return body


# A UTF-16 surrogate can only reach a JSON string as an escape (UTF-8 has none); a pair
# decodes to one character, a lone one stays a surrogate no encoder will take.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def deadline_s(request: web.Request, streaming: bool) -> float | None:
    """The caller's time budget: `x-semcache-timeout-s`, else for a unary call the
    OpenAI SDK's read timeout (a stream's only bounds the wait between chunks).

    Raises:
        BadFieldError: `x-semcache-timeout-s` is not a positive number.
    """
    value = request.headers.get(TIMEOUT_HEADER)
    if value is not None:
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not 0 < seconds < float("inf"):
            raise BadFieldError(TIMEOUT_HEADER, f"{TIMEOUT_HEADER} must be a positive number")
        return seconds
    return None if streaming else _sdk_timeout_s(request.headers)


def _sdk_timeout_s(headers: Mapping[str, str]) -> float | None:
    try:
        seconds = float(headers.get(SDK_TIMEOUT_HEADER, ""))
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def _served(call: HttpCall, completion: Completion) -> None:
    call.cache, call.model = completion.cache_status.value, completion.model


async def _stream(request: web.Request, chat: ChatCall, call: HttpCall) -> web.StreamResponse:
    """Relay the pipeline's stream as server-sent events (see the module docstring), all
    of it within the caller's deadline, as the gRPC door's deadline bounds a stream."""
    events = join_waiting_text(request.app[DOOR].app.pipeline.stream(chat.request))
    async with aclosing(events):
        try:
            async with asyncio.timeout(chat.request.remaining_s()):
                first = await anext(events)  # a refusal here is still an ordinary HTTP error
        except TimeoutError:
            raise _late(chat) from None
        response = web.StreamResponse(headers={**SSE_HEADERS, REQUEST_ID_HEADER: call.request_id})
        await response.prepare(request)
        writer = ChunkWriter(call.request_id, chat.request.model or "", chat.include_usage)
        try:
            async with asyncio.timeout(chat.request.remaining_s()):
                await _relay(request, chat, call, (first, events), (response, writer))
        except ConnectionResetError:
            call.code = "CANCELLED"
            log.info("stream abandoned by the caller", latency_ms=call.elapsed_ms())
        except TimeoutError:
            await _stream_error(response, call, _late(chat))
        except Exception as error:  # after the first byte the status line is gone
            await _stream_error(response, call, error)
    return response


def _late(chat: ChatCall) -> UpstreamTimeoutError:
    return UpstreamTimeoutError(
        f"the answer did not finish within the caller's deadline of {chat.request.deadline_s:g}s"
    )


async def _relay(
    request: web.Request,
    chat: ChatCall,
    call: HttpCall,
    source: tuple[str | Completion, AsyncGenerator[str | Completion, None]],
    sink: tuple[web.StreamResponse, ChunkWriter],
) -> None:
    first, events = source
    response, writer = sink
    final = await _send(request, chat, call, first, sink)
    async for event in events:  # asking past the final chunk lets the pipeline store
        final = await _send(request, chat, call, event, sink) or final
    if final is not None:
        await response.write(writer.usage(final) + DONE)
    await response.write_eof()


async def _send(
    request: web.Request,
    chat: ChatCall,
    call: HttpCall,
    event: str | Completion,
    sink: tuple[web.StreamResponse, ChunkWriter],
) -> Completion | None:
    response, writer = sink
    if isinstance(event, str):
        await response.write(writer.delta(event))
        return None
    await response.write(writer.final(event))
    _served(call, event)
    return event


async def _stream_error(response: web.StreamResponse, call: HttpCall, error: Exception) -> None:
    answer = http_error_for(error)
    call.code, call.cache, call.model = answer.metric_code, "none", ""
    log.warning("stream failed after its first chunk", exc_info=error, status=answer.status)
    try:
        await response.write(sse(error_body(error, answer, call.request_id)))
        await response.write_eof()
    except ConnectionResetError:
        call.code = "CANCELLED"
