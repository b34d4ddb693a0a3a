"""The simulator's OpenAI routes: checks, latency and faults around each answer.

Routes:
    POST /v1/chat/completions  unary, or server-sent events with `stream: true`
    POST /v1/completions       legacy, as vLLM serves it: one choice per prompt
    GET  /v1/models            the served models, with price and latency
    GET  /sim/stats            request counters (see `RequestStats`)
    POST /sim/reset            zero the counters and restart the fault sequence

A request is checked (400), its model looked up (404), counted, then given
its fault plan (429, 500, latency spike, dropped stream) before it is answered.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from semcache_simulator import wire
from semcache_simulator.answers import (
    Answer,
    ChatMessage,
    chat_prompt_tokens,
    compose_answer,
    count_tokens,
)
from semcache_simulator.config import SimulatorConfig
from semcache_simulator.faults import FaultPlan, FaultPlanner
from semcache_simulator.protocol import (
    ChatRequest,
    RequestError,
    parse_chat_request,
    parse_completion_request,
)
from semcache_simulator.stats import RequestStats


class _Routes:
    """The request handlers, bound to one simulator's config and counters."""

    def __init__(self, config: SimulatorConfig, stats: RequestStats, planner: FaultPlanner) -> None:
        self._config = config
        self._stats = stats
        self._planner = planner

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self._stats.record_endpoint("chat.completions")
        chat = parse_chat_request(await _read_json(request))
        plan = self._admit(chat.model, prompts=1)
        answer = compose_answer(chat.model, chat.messages, chat.max_tokens, self._config.answers)
        prompt_tokens = chat_prompt_tokens(chat.messages)
        if chat.stream:
            return await self._stream_chat(request, chat, answer, prompt_tokens, plan)
        await _sleep_ms(self._ttft_ms(chat.model, plan) + self._generation_ms(chat.model, answer))
        meta = wire.ResponseMeta.new("chatcmpl", chat.model)
        if chat.tool_call is not None:
            arguments = {"question": chat.messages[-1].text}
            body = wire.tool_call_completion(meta, chat.tool_call, arguments, prompt_tokens)
            return web.json_response(body)
        return web.json_response(wire.chat_completion(meta, answer, prompt_tokens))

    async def completions(self, request: web.Request) -> web.Response:
        self._stats.record_endpoint("completions")
        batch = parse_completion_request(await _read_json(request))
        plan = self._admit(batch.model, prompts=len(batch.prompts))
        # Each prompt is answered as the same text sent alone as a chat user
        # message, so batching never changes an answer.
        answers = [
            compose_answer(
                batch.model, [ChatMessage("user", p)], batch.max_tokens, self._config.answers
            )
            for p in batch.prompts
        ]
        # The prompts decode side by side, as in a vLLM batch: the longest one sets the time.
        longest = max(answers, key=lambda a: a.completion_tokens)
        await _sleep_ms(
            self._ttft_ms(batch.model, plan) + self._generation_ms(batch.model, longest)
        )
        meta = wire.ResponseMeta.new("cmpl", batch.model)
        prompt_tokens = sum(count_tokens(p) for p in batch.prompts)
        return web.json_response(wire.text_completion(meta, answers, prompt_tokens))

    async def models(self, request: web.Request) -> web.Response:
        self._stats.record_endpoint("models")
        return web.json_response(wire.model_list(self._config))

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._stats.snapshot())

    async def reset(self, request: web.Request) -> web.Response:
        self._stats.reset()
        self._planner.reset()
        return web.json_response(self._stats.snapshot())

    def _admit(self, model: str, prompts: int) -> FaultPlan:
        """Count a request for a served model and draw its faults; raise the refusals."""
        if model not in self._config.models:
            raise wire.model_not_found(model)
        self._stats.record_model_call(model, prompts)
        plan = self._planner.plan(model)
        if plan.outcome == "rate_limited":
            raise wire.rate_limited(model, plan.retry_after_s)
        if plan.outcome == "server_error":
            raise wire.server_error()
        return plan

    async def _stream_chat(
        self,
        request: web.Request,
        chat: ChatRequest,
        answer: Answer,
        prompt_tokens: int,
        plan: FaultPlan,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        meta = wire.ResponseMeta.new("chatcmpl", chat.model)
        events = _chat_stream_events(meta, chat, answer, prompt_tokens)
        # Event 0 is the role chunk, events 1..n carry the answer's n tokens.
        drop_at = None
        if plan.disconnect_after_chunks is not None:
            drop_at = min(plan.disconnect_after_chunks, answer.completion_tokens) + 1
        try:
            for index, event in enumerate(events):
                if index == drop_at:
                    _drop_connection(request)
                    break
                await _sleep_ms(self._event_delay_ms(chat.model, plan, index, answer))
                await response.write(event)
        except ConnectionResetError:
            pass  # the client went away; there is no one left to answer
        return response

    def _event_delay_ms(self, model: str, plan: FaultPlan, index: int, answer: Answer) -> float:
        if index == 0:
            return self._ttft_ms(model, plan)
        if 2 <= index <= answer.completion_tokens:
            return self._config.ms_per_token_for(model)
        return 0.0

    def _ttft_ms(self, model: str, plan: FaultPlan) -> float:
        return self._config.ttft_ms_for(model) + plan.spike_ms

    def _generation_ms(self, model: str, answer: Answer) -> float:
        return answer.completion_tokens * self._config.ms_per_token_for(model)


def _chat_stream_events(
    meta: wire.ResponseMeta, chat: ChatRequest, answer: Answer, prompt_tokens: int
) -> Iterator[bytes]:
    usage = chat.include_usage
    if chat.tool_call is not None:
        yield from _tool_call_stream_events(meta, chat, chat.tool_call, prompt_tokens)
        return
    yield wire.sse_event(
        wire.chat_chunk(meta, {"role": "assistant", "content": ""}, include_usage=usage)
    )
    for token in answer.tokens:
        yield wire.sse_event(wire.chat_chunk(meta, {"content": token}, include_usage=usage))
    yield wire.sse_event(
        wire.chat_chunk(meta, {}, finish_reason=answer.finish_reason, include_usage=usage)
    )
    if usage:
        yield wire.sse_event(wire.usage_chunk(meta, prompt_tokens, answer.completion_tokens))
    yield wire.SSE_DONE


def _tool_call_stream_events(
    meta: wire.ResponseMeta, chat: ChatRequest, function: str, prompt_tokens: int
) -> Iterator[bytes]:
    """A forced tool call streamed as OpenAI streams one: the call's id, type and name
    first, then its arguments in fragments (clients join them), then `tool_calls`."""
    usage = chat.include_usage
    arguments = json.dumps({"question": chat.messages[-1].text})
    head = {"index": 0, "id": f"call_{meta.id[-12:]}", "type": "function",
            "function": {"name": function, "arguments": ""}}  # fmt: skip
    first = {"role": "assistant", "content": None, "tool_calls": [head]}
    yield wire.sse_event(wire.chat_chunk(meta, first, include_usage=usage))
    for start in range(0, len(arguments), _ARGUMENT_FRAGMENT_CHARS):
        fragment = arguments[start : start + _ARGUMENT_FRAGMENT_CHARS]
        delta = {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}
        yield wire.sse_event(wire.chat_chunk(meta, delta, include_usage=usage))
    yield wire.sse_event(wire.chat_chunk(meta, {}, finish_reason="tool_calls", include_usage=usage))
    if usage:
        yield wire.sse_event(wire.usage_chunk(meta, prompt_tokens, 8))
    yield wire.SSE_DONE


_ARGUMENT_FRAGMENT_CHARS = 8


def _drop_connection(request: web.Request) -> None:
    # Closing the socket mid-body leaves the chunked stream unterminated, which
    # is what a client sees when a provider's connection breaks.
    if request.transport is not None:
        request.transport.close()


async def _read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise RequestError(
            400,
            "We could not parse the JSON body of your request; send a valid JSON object.",
        ) from None


async def _sleep_ms(delay_ms: float) -> None:
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)


def _error_response(error: RequestError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every refusal, ours or aiohttp's (404, 405, 413), with an error object."""
    try:
        return await handler(request)
    except RequestError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(
            wire.route_error(exc.status, exc.reason, request.method, request.path)
        )


def _require_api_key(api_key: str) -> Middleware:
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                key = given.decode("utf-8", "replace").removeprefix("Bearer ")
                raise wire.invalid_api_key(key if len(key) >= 8 else "")
        return await handler(request)

    return check


def create_app(
    config: SimulatorConfig, stats: RequestStats, planner: FaultPlanner
) -> web.Application:
    """The aiohttp application of one simulator, sharing its counters and planner."""
    middlewares: list[Middleware] = [_errors_as_json]
    if config.api_key is not None:
        middlewares.append(_require_api_key(config.api_key))
    routes = _Routes(config, stats, planner)
    app = web.Application(middlewares=middlewares)
    app.router.add_post("/v1/chat/completions", routes.chat_completions)
    app.router.add_post("/v1/completions", routes.completions)
    app.router.add_get("/v1/models", routes.models)
    app.router.add_get("/sim/stats", routes.stats)
    app.router.add_post("/sim/reset", routes.reset)
    return app
