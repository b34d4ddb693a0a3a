"""Response bodies of the OpenAI API: completions, stream chunks, models, errors.

The shapes follow what the `openai` client parses: `chat.completion`,
`chat.completion.chunk` sent as server-sent events (`data: {...}\\n\\n`, ending
with `data: [DONE]\\n\\n`), `text_completion`, the model `list`, and the error
object.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from semcache_simulator.answers import Answer
from semcache_simulator.config import SimulatorConfig
from semcache_simulator.protocol import RequestError

SYSTEM_FINGERPRINT = "fp_semcache_sim"
SSE_DONE = b"data: [DONE]\n\n"
_OWNED_BY = "semcache-simulator"
_MODELS_CREATED = 1_700_000_000  # a fixed date, so the model list is reproducible


@dataclass(frozen=True)
class ResponseMeta:
    """The fields every completion object and every chunk of one stream share."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, id_prefix: str, model: str) -> ResponseMeta:
        """Fresh metadata for one response, e.g. `id_prefix="chatcmpl"`."""
        return cls(f"{id_prefix}-{uuid.uuid4().hex}", int(time.time()), model)

    def header(self, object_type: str) -> dict[str, Any]:
        """The leading fields of a response object of `object_type`."""
        return {
            "id": self.id,
            "object": object_type,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """A `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tool_call_completion(
    meta: ResponseMeta, function: str, arguments: dict[str, Any], prompt_tokens: int
) -> dict[str, Any]:
    """A unary `chat.completion` whose one choice calls `function` with `arguments`."""
    call = {
        "id": f"call_{meta.id[-12:]}",
        "type": "function",
        "function": {"name": function, "arguments": json.dumps(arguments)},
    }
    message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
    return {
        **meta.header("chat.completion"),
        "choices": [choice],
        "usage": usage(prompt_tokens, 8),
    }


def chat_completion(meta: ResponseMeta, answer: Answer, prompt_tokens: int) -> dict[str, Any]:
    """A unary `chat.completion` with one choice."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": answer.text, "refusal": None},
        "logprobs": None,
        "finish_reason": answer.finish_reason,
    }
    return {
        **meta.header("chat.completion"),
        "choices": [choice],
        "usage": usage(prompt_tokens, answer.completion_tokens),
    }


def chat_chunk(
    meta: ResponseMeta,
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One `chat.completion.chunk` with a single choice.

    With `include_usage`, OpenAI sends `"usage": null` on every chunk but the
    last, and so does this.
    """
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    chunk = {**meta.header("chat.completion.chunk"), "choices": [choice]}
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(meta: ResponseMeta, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream with `include_usage`: no choices, only usage."""
    return {
        **meta.header("chat.completion.chunk"),
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(
    meta: ResponseMeta, answers: Sequence[Answer], prompt_tokens: int
) -> dict[str, Any]:
    """A legacy `text_completion`: one choice per prompt, in order, usage summed."""
    choices = [
        {"text": a.text, "index": i, "logprobs": None, "finish_reason": a.finish_reason}
        for i, a in enumerate(answers)
    ]
    completion_tokens = sum(a.completion_tokens for a in answers)
    return {
        **meta.header("text_completion"),
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def model_list(config: SimulatorConfig) -> dict[str, Any]:
    """The `/v1/models` list, each model with its price and effective latency."""
    data = [
        {
            "id": name,
            "object": "model",
            "created": _MODELS_CREATED,
            "owned_by": _OWNED_BY,
            "input_usd_per_mtok": profile.price.input_usd_per_mtok,
            "output_usd_per_mtok": profile.price.output_usd_per_mtok,
            "ttft_ms": config.ttft_ms_for(name),
            "ms_per_token": config.ms_per_token_for(name),
        }
        for name, profile in config.models.items()
    ]
    return {"object": "list", "data": data}


def model_not_found(model: str) -> RequestError:
    """404 for a model the simulator does not serve."""
    return RequestError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def invalid_api_key(given: str = "") -> RequestError:
    """401 for a missing or wrong bearer token; a wrong one is quoted masked, its last
    four characters shown, as OpenAI's own 401 does."""
    if not given:
        message = "Incorrect or missing API key; send the header 'Authorization: Bearer <key>'."
    else:
        masked = given[:3] + "*" * max(len(given) - 7, 0) + given[-4:]
        message = f"Incorrect API key provided: {masked}."
    return RequestError(401, message, code="invalid_api_key")


def rate_limited(model: str, retry_after_s: float) -> RequestError:
    """429 with `Retry-After` (seconds) and `retry-after-ms`, as OpenAI sends them."""
    return RequestError(
        429,
        f"Rate limit reached for {model} (simulated). Please try again in {retry_after_s:g}s.",
        error_type="requests",
        code="rate_limit_exceeded",
        headers={
            "Retry-After": str(math.ceil(retry_after_s)),
            "retry-after-ms": str(round(retry_after_s * 1000)),
        },
    )


def server_error() -> RequestError:
    """500, worded as OpenAI words its own."""
    return RequestError(
        500,
        "The server had an error while processing your request. Sorry about that! (simulated)",
        error_type="server_error",
    )


def route_error(status: int, reason: str, method: str, path: str) -> RequestError:
    """An error object for a request no route accepts (404, 405)."""
    return RequestError(status, f"{reason}: {method} {path}", code=reason.lower().replace(" ", "_"))
