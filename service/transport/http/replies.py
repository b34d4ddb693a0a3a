"""Domain completions → OpenAI chat-completion objects, stream chunks and semcache's headers.

What the cache did travels twice: in `x-semcache-*` response headers (for
callers that read headers, e.g. `with_raw_response` in the Python SDK) and in
the body's `semcache` object. A stream's headers leave before its answer is
known, so a stream carries only `x-semcache-request-id`; its final content
chunk (the one with `finish_reason`) carries the `semcache` object.
"""

from __future__ import annotations

import json
import time
from typing import Any

from service.domain import Completion, Usage
from service.transport.http.wire import EXTENSION_KEY

REQUEST_ID_HEADER = "x-semcache-request-id"


def completion_id(request_id: str) -> str:
    """The OpenAI `id` of the completion served for request `request_id`."""
    return f"chatcmpl-{request_id}"


def extension(completion: Completion, request_id: str) -> dict[str, Any]:
    """The body's `semcache` object: what the cache did, what it cost and saved."""
    return {
        "cache_status": completion.cache_status.value,
        "cache_detail": completion.cache_detail,
        "similarity": round(completion.similarity, 6),
        "cost_usd": completion.cost_usd,
        "cost_saved_usd": completion.cost_saved_usd,
        "latency_ms": completion.latency_ms,
        "tier": completion.tier,
        "route_reason": completion.route_reason,
        "route_score": completion.route_score,
        "upstream_attempts": completion.upstream_attempts,
        "request_id": request_id,
        "entry_id": completion.entry_id,
        "error_probability": round(completion.error_probability, 6),
    }


def completion_headers(completion: Completion, request_id: str) -> dict[str, str]:
    """The `x-semcache-*` response headers of a unary answer."""
    return {
        REQUEST_ID_HEADER: request_id,
        "x-semcache-cache-status": completion.cache_status.value,
        "x-semcache-cache-detail": completion.cache_detail,
        "x-semcache-similarity": f"{completion.similarity:.4f}",
        "x-semcache-cost-usd": f"{completion.cost_usd:.8f}",
        "x-semcache-cost-saved-usd": f"{completion.cost_saved_usd:.8f}",
        "x-semcache-model-tier": completion.tier,
        "x-semcache-route-reason": completion.route_reason,
        "x-semcache-entry-id": completion.entry_id,
        "x-semcache-error-probability": f"{completion.error_probability:.4f}",
    }


def usage(value: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": value.prompt_tokens,
        "completion_tokens": value.completion_tokens,
        "total_tokens": value.total_tokens,
    }


def tool_calls(completion: Completion) -> list[Any] | None:
    """The answer's tool calls as OpenAI objects, or None when it has none."""
    if not completion.tool_calls_json:
        return None
    calls = json.loads(completion.tool_calls_json)
    return calls if isinstance(calls, list) and calls else None


def chat_completion(completion: Completion, request_id: str) -> dict[str, Any]:
    """The `chat.completion` object for a unary answer."""
    calls = tool_calls(completion)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": completion.content if completion.content or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": completion.finish_reason or None,
    }
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [choice],
        "usage": usage(completion.usage),
        "system_fingerprint": None,
        EXTENSION_KEY: extension(completion, request_id),
    }


class ChunkWriter:
    """Builds the `chat.completion.chunk` events of one stream, as SSE bytes."""

    def __init__(self, request_id: str, model: str, include_usage: bool) -> None:
        self._id = completion_id(request_id)
        self._request_id = request_id
        self._model = model
        self._created = int(time.time())
        self._include_usage = include_usage
        self._sent_role = False

    def delta(self, text: str) -> bytes:
        """A content delta (the first one also says the role)."""
        delta: dict[str, Any] = {"content": text}
        if not self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        return self._event([_choice(delta, None)])

    def final(self, completion: Completion) -> bytes:
        """The last content chunk: tool calls if any, the finish reason, and `semcache`."""
        self._model = completion.model
        delta: dict[str, Any] = {} if self._sent_role else {"role": "assistant", "content": ""}
        calls = tool_calls(completion)
        if calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
        extra = {EXTENSION_KEY: extension(completion, self._request_id)}
        return self._event([_choice(delta, completion.finish_reason or None)], extra)

    def usage(self, completion: Completion) -> bytes:
        """The usage chunk (no choices) that `stream_options.include_usage` asks for;
        empty when it was not asked for."""
        if not self._include_usage:
            return b""
        return self._event([], {"usage": usage(completion.usage)})

    def _event(self, choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = None
        chunk.update(extra or {})
        return sse(chunk)


def _choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def sse(data: object) -> bytes:
    """One server-sent event carrying `data` as JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
