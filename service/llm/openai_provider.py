"""Any OpenAI-compatible endpoint, through `openai.AsyncOpenAI`.

The simulator, OpenAI, vLLM, Ollama and llama.cpp's server all go through
this one code path. openai's own retries are off: the caller's deadline
decides how long a call may take, and retries belong to the gateway.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk

from service.domain import Usage
from service.errors import (
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from service.llm.provider import ProviderAnswer, ProviderCall


def _translate(error: openai.OpenAIError, base_url: str) -> UpstreamError:
    """The service's error for an openai client error, naming the provider."""
    where = f"upstream provider at {base_url}"
    if isinstance(error, openai.APITimeoutError):
        return UpstreamTimeoutError(f"{where} did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return UpstreamError(f"{where} is unreachable: {error}")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        detail = f"{where} answered HTTP {status}: {error.message}"
        if status == 429 or status >= 500:
            return UpstreamError(detail)
        return UpstreamRejectedError(detail)
    return UpstreamError(f"{where} failed: {error}")


def _request_args(call: ProviderCall) -> dict[str, Any]:
    sampling = call.sampling
    args: dict[str, Any] = {
        "model": call.model,
        "messages": [{"role": m.role, "content": m.content} for m in call.messages],
        "timeout": call.timeout_s,
    }
    optional = {
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop) or None,
        "response_format": {"type": sampling.response_format} if sampling.response_format else None,
        "tools": json.loads(sampling.tools_json) if sampling.tools_json else None,
        "tool_choice": _tool_choice(sampling.tool_choice),
    }
    args.update({name: value for name, value in optional.items() if value is not None})
    return args


def _tool_choice(value: str | None) -> Any:
    """'auto' / 'none' / 'required' pass as they are; anything else is a JSON object."""
    if not value or value in ("auto", "none", "required"):
        return value or None
    return json.loads(value)


class OpenAIProvider:
    """A `Provider` for one OpenAI-compatible base URL."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float) -> None:
        self.base_url = base_url
        # Local servers accept any key; the client refuses to start without one.
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=0
        )

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        try:
            response = await self._client.chat.completions.create(**_request_args(call))
        except openai.OpenAIError as error:
            raise _translate(error, self.base_url) from error
        if not response.choices:
            raise UpstreamError(f"upstream provider at {self.base_url} returned no choices")
        choice = response.choices[0]
        usage = response.usage
        tool_calls = choice.message.tool_calls or []
        return ProviderAnswer(
            content=choice.message.content or "",
            model=response.model or call.model,
            finish_reason=choice.finish_reason or "stop",
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            tool_calls_json=json.dumps([c.model_dump() for c in tool_calls]) if tool_calls else "",
        )

    async def stream(self, call: ProviderCall) -> AsyncGenerator[str | ProviderAnswer, None]:
        parts: list[str] = []
        finish_reason = ""
        model = call.model
        usage = Usage()
        try:
            stream = await self._client.chat.completions.create(
                **_request_args(call), stream=True, stream_options={"include_usage": True}
            )
            async with stream:
                async for chunk in stream:
                    model = chunk.model or model
                    usage = _usage_of(chunk) or usage
                    for choice in chunk.choices:
                        finish_reason = choice.finish_reason or finish_reason
                        if choice.delta.content:
                            parts.append(choice.delta.content)
                            yield choice.delta.content
        except openai.OpenAIError as error:
            raise _translate(error, self.base_url) from error
        if not finish_reason:
            raise UpstreamError(f"upstream provider at {self.base_url} ended the stream early")
        yield ProviderAnswer("".join(parts), model, finish_reason, usage)

    async def close(self) -> None:
        await self._client.close()


def _usage_of(chunk: ChatCompletionChunk) -> Usage | None:
    if chunk.usage is None:
        return None
    return Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
