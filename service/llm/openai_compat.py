"""Any OpenAI-compatible endpoint, through `openai.AsyncOpenAI`.

The simulator, OpenAI, Anthropic's OpenAI-compatible API, vLLM, Ollama and
llama.cpp's server all go through this one code path. openai's own retries
are off: the caller's deadline decides how long a call may take, and
retries, fallbacks and circuit breaking belong to `service.llm.resilience`,
which tells what to retry from the errors raised here (see
`service.llm.http_errors`).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import openai
import structlog
from openai import AsyncStream
from openai.types.chat import ChatCompletionMessage

from service.domain import SamplingParams, Usage
from service.errors import UpstreamError, UpstreamTimeoutError
from service.llm.aiohttp_transport import AiohttpTransport
from service.llm.http_errors import RetryableUpstreamError, translate_openai_error
from service.llm.lean_http import LeanAsyncClient, LeanAsyncOpenAI
from service.llm.provider import ProviderAnswer, ProviderCall
from service.llm.simulator_probe import SIMULATOR_FINGERPRINT
from service.llm.sse import BadEventError, sse_data

if TYPE_CHECKING:
    from openai._types import RequestOptions

log = structlog.get_logger(__name__)
# Calls go through the client's generic `post` with the JSON body built here and the
# answer read as plain JSON: `chat.completions.create` would run its request-typing
# transform over the body and build pydantic models for the answer (and for every
# chunk of a stream), which cost more than the rest of the call. The client, its
# auth, base URL, timeouts and error types are the same. A stream's body is read by
# `sse` rather than the client's event reader, which cost about 15 us a chunk.
_CHAT_PATH = "/chat/completions"


class OpenAICompatProvider:
    """A `Provider` for one OpenAI-compatible base URL.

    `name` labels the endpoint in error messages (e.g. the catalogue's
    provider name; "upstream" when not given). Errors name the provider, never
    its address, since they reach callers; the address goes to the log.
    """

    def __init__(
        self, base_url: str, api_key: str | None, timeout_s: float, *, name: str | None = None
    ) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.name = name or "upstream"
        self._where = f"upstream provider {self.name}"
        self._addresses = _addresses_of(base_url)
        # Local servers accept any key; the client refuses to start without one.
        self._client = LeanAsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            timeout=timeout_s,
            max_retries=0,
            http_client=LeanAsyncClient(AiohttpTransport()),
        )

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        """The whole answer in one piece.

        Raises:
            RetryableUpstreamError: HTTP 429 or 5xx, or the connection failed.
            UpstreamTimeoutError: no answer within `call.timeout_s`.
            UpstreamRejectedError: any other HTTP 4xx.
            UpstreamError: an answer without choices, or another client failure.
        """
        try:
            data = await self._client.post(
                _CHAT_PATH, cast_to=object, body=_chat_body(call), options=_options(call)
            )
        except openai.OpenAIError as error:
            raise self._failed(error, call.timeout_s) from error
        except ValueError as error:  # the client parses a JSON content type itself
            raise UpstreamError(f"{self._where} returned a body that is not JSON") from error
        return self._answer_of(data, call.model)

    async def complete_prompts(
        self, model: str, prompts: Sequence[str], sampling: SamplingParams, timeout_s: float
    ) -> list[ProviderAnswer]:
        """One legacy `/v1/completions` request answering every prompt, in order.

        The response reports usage for the whole request only, so each answer's
        share is apportioned: prompt tokens by prompt length, completion tokens
        by answer length (the shares add up to the reported totals).

        Raises:
            as `complete`; UpstreamError also when a prompt got no choice.
        """
        args: dict[str, Any] = {"model": model, "prompt": list(prompts), "timeout": timeout_s}
        args.update(_sampling_args(sampling))
        try:
            response = await self._client.completions.create(**args)
        except openai.OpenAIError as error:
            raise self._failed(error, timeout_s) from error
        choices = {choice.index: choice for choice in response.choices}
        if sorted(choices) != list(range(len(prompts))):
            raise UpstreamError(
                f"{self._where} answered {len(response.choices)} choices for {len(prompts)} prompts"
            )
        texts = [choices[i].text for i in range(len(prompts))]
        usage = response.usage
        prompt_shares = apportion(usage.prompt_tokens if usage else 0, [len(p) for p in prompts])
        answer_shares = apportion(usage.completion_tokens if usage else 0, [len(t) for t in texts])
        return [
            ProviderAnswer(
                content=text,
                model=response.model or model,
                finish_reason=choices[i].finish_reason or "",  # unsaid: not storable
                usage=Usage(prompt_shares[i], answer_shares[i]),
                simulated=response.system_fingerprint == SIMULATOR_FINGERPRINT,
            )
            for i, text in enumerate(texts)
        ]

    async def stream(self, call: ProviderCall) -> AsyncGenerator[str | ProviderAnswer, None]:
        """Text deltas, then one `ProviderAnswer`; closing the generator closes the stream.

        Raises:
            RetryableUpstreamError: as `complete`, or the stream ended before both a
                finish reason and `[DONE]` (a provider's own end without a reason is
                served unsaid, as `complete` serves it).
            UpstreamTimeoutError, UpstreamRejectedError, UpstreamError: as `complete`.
        """
        answer = _StreamedAnswer(call.model)
        body = {**_chat_body(call), "stream": True, "stream_options": {"include_usage": True}}
        try:
            stream = await self._client.post(
                _CHAT_PATH,
                cast_to=object,
                body=body,
                options=_options(call),
                stream=True,
                stream_cls=AsyncStream[object],
            )
            async with stream:  # its body is read here (`sse`), the client's reader unused
                response = stream.response
                events = sse_data(_body(response), response.request, answer.mark_done)
                async for chunk in events:
                    for content in answer.add(_dict(chunk)):
                        yield content
        except openai.OpenAIError as error:
            raise self._failed(error, call.timeout_s) from error
        except BadEventError as error:
            raise UpstreamError(
                f"{self._where} sent a stream that is not chat chunks: {error}"
            ) from error
        if not (answer.finish_reason or answer.done):
            raise RetryableUpstreamError(f"{self._where} ended the stream early")
        yield ProviderAnswer(
            "".join(answer.parts), answer.model, answer.finish_reason, answer.usage,
            tool_calls_json=answer.tool_calls_json(), simulated=answer.simulated,
        )  # fmt: skip

    def _answer_of(self, data: object, model: str) -> ProviderAnswer:
        """The answer in a chat completion's JSON, read as it came (no response models).

        Raises:
            UpstreamError: it is not a chat completion, or it has no choices.
        """
        if isinstance(data, str):  # a JSON body under another content type
            data = _json_or_none(data)
        if not isinstance(data, dict):
            raise UpstreamError(f"{self._where} returned something other than a chat completion")
        choices = _dicts(data.get("choices"))
        if not choices:
            raise UpstreamError(f"{self._where} returned no choices")
        message = _dict(choices[0].get("message"))
        return ProviderAnswer(
            content=_text(message.get("content")),
            model=_text(data.get("model")) or model,
            simulated=data.get("system_fingerprint") == SIMULATOR_FINGERPRINT,
            # Unsaid is not "stop": an answer its provider did not call complete is not
            # cached (a stream without one is a broken stream).
            finish_reason=_text(choices[0].get("finish_reason")),
            usage=_usage_of(data.get("usage")) or Usage(),
            tool_calls_json=_tool_calls_json(message),
        )

    async def close(self) -> None:
        """Close the HTTP client's connections."""
        await self._client.close()

    def _failed(self, error: openai.OpenAIError, timeout_s: float) -> UpstreamError:
        """The service's error for `error`, without the provider's address (logged instead).

        A timeout shorter than the provider's own (`timeout_s`: the caller's deadline
        was nearer) is the caller's, not the provider's: said so, and logged at info
        (found from outside: 1-60 ms deadlines logged a warning blaming the provider).
        """
        if isinstance(error, openai.APITimeoutError) and timeout_s < self.timeout_s:
            log.info("upstream call cut short by the caller's deadline", provider=self.name)
            return UpstreamTimeoutError(
                f"the caller's deadline ended the call to {self._where} after {timeout_s:.3g}s"
            )
        translated = translate_openai_error(error, self._where, hide=self._addresses)
        log.warning(
            "upstream call failed",
            provider=self.name,
            base_url=self.base_url,
            error=f"{type(error).__name__}: {error}",
        )
        return translated


class _StreamedAnswer:
    """What the chunks of a streamed chat completion have said so far."""

    def __init__(self, model: str) -> None:
        self.parts: list[str] = []
        self.finish_reason = ""
        self.model = model
        self.usage = Usage()
        self.calls: dict[int, dict[str, Any]] = {}  # tool calls by index, joined as they come
        self.simulated = False  # a chunk bore the simulator's mark
        # The provider closed the stream itself ([DONE]): without a finish reason, the
        # answer is served as its unary twin is (finish_reason empty, never stored),
        # not failed as a stream that broke off after all its text was sent.
        self.done = False

    def mark_done(self) -> None:
        """The stream's `[DONE]` arrived."""
        self.done = True

    def add(self, fields: dict[str, Any]) -> list[str]:
        """Take in one chunk; returns its text deltas. Fields of the wrong type are
        ignored. Written out inline: a streamed answer is tens of chunks (issue 13)."""
        model = fields.get("model")
        if model and isinstance(model, str):
            self.model = model
        if fields.get("system_fingerprint") == SIMULATOR_FINGERPRINT:
            self.simulated = True
        usage = fields.get("usage")
        if usage is not None:
            self.usage = _usage_of(usage) or self.usage
        choices = fields.get("choices")
        if not isinstance(choices, list):
            return []
        deltas: list[str] = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            if reason and isinstance(reason, str):
                self.finish_reason = reason
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            if content and isinstance(content, str):
                deltas.append(content)
            if delta.get("tool_calls"):
                self._add_calls(delta["tool_calls"])
        self.parts += deltas
        return deltas

    def _add_calls(self, parts: object) -> None:
        """Join streamed tool-call fragments: each names its call by `index`; the id, type
        and name come once, the name and arguments as text to append."""
        for part in parts if isinstance(parts, list) else ():
            index = part.get("index") if isinstance(part, dict) else None
            if not isinstance(index, int):
                continue
            call = self.calls.setdefault(
                index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            for field in ("id", "type"):
                if isinstance(part.get(field), str) and part[field]:
                    call[field] = part[field]
            function = part.get("function")
            for field in ("name", "arguments"):
                if isinstance(function, dict) and isinstance(function.get(field), str):
                    call["function"][field] += function[field]

    def tool_calls_json(self) -> str:
        """The joined tool calls as the unary answer gives them, "" when there were none."""
        return json.dumps([self.calls[i] for i in sorted(self.calls)]) if self.calls else ""


async def _body(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The bytes of a streamed response, a transport failure raised as the client raises
    it while reading a stream (so it is translated, and retried, the same way)."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx2.TimeoutException as error:
        raise openai.APITimeoutError(request=response.request) from error
    except (httpx2.RequestError, ssl.SSLError) as error:
        raise openai.APIConnectionError(request=response.request) from error


def _addresses_of(base_url: str) -> tuple[str, ...]:
    """The forms of `base_url` an error message might quote: the URL, host:port, host."""
    parts = urlsplit(base_url)
    forms = (base_url.rstrip("/"), parts.netloc, parts.hostname or "")
    return tuple(sorted({form for form in forms if form}, key=len, reverse=True))


def _options(call: ProviderCall) -> RequestOptions:
    """The client's options for one call: its timeout, and the bearer key as `create` sends it."""
    return {"timeout": call.timeout_s, "security": {"bearer_auth": True}}


def _chat_body(call: ProviderCall) -> dict[str, Any]:
    """The `/chat/completions` JSON body for `call`, as `chat.completions.create` sends it."""
    sampling = call.sampling
    args: dict[str, Any] = {
        "model": call.model,
        "messages": [{"role": m.role, "content": m.content} for m in call.messages],
    }
    chat_only = {
        "response_format": {"type": sampling.response_format} if sampling.response_format else None,
        "tools": json.loads(sampling.tools_json) if sampling.tools_json else None,
        "tool_choice": _tool_choice(sampling.tool_choice),
    }
    args.update(_sampling_args(sampling))
    if "max_tokens" in args and sampling.max_tokens_name != "max_tokens":
        args[sampling.max_tokens_name] = args.pop("max_tokens")  # as the caller named it
    args.update({name: value for name, value in chat_only.items() if value is not None})
    return args


def _sampling_args(sampling: SamplingParams) -> dict[str, Any]:
    """The sampling parameters both the chat and the legacy completions API take, when set."""
    optional = {
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop) or None,
    }
    return {name: value for name, value in optional.items() if value is not None}


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` (equally when they are all 0), in whole
    numbers that add up to `total`: the largest remainders get the leftover units."""
    if not weights:
        return []
    scale = sum(weights)
    exact = [total * w / scale for w in weights] if scale else [total / len(weights)] * len(weights)
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _tool_choice(value: str | None) -> Any:
    """'auto' / 'none' / 'required' pass as they are; anything else is a JSON object."""
    if not value or value in ("auto", "none", "required"):
        return value or None
    return json.loads(value)


def _usage_of(usage: object) -> Usage | None:
    """The token counts of a `usage` object; None when there is none."""
    if not isinstance(usage, dict):
        return None
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def _tool_calls_json(message: dict[str, Any]) -> str:
    """The message's tool calls as JSON, "" when there are none; built through the client's
    own models, so the text is what `chat.completions.create` gave.

    Raises:
        UpstreamError: `tool_calls` is not a list of objects.
    """
    raw = message.get("tool_calls")
    if not raw:
        return ""
    if not isinstance(raw, list) or not all(isinstance(call, dict) for call in raw):
        raise UpstreamError("the provider returned tool_calls that are not a list of objects")
    tool_calls = ChatCompletionMessage.construct(**message).tool_calls or []
    return json.dumps([c.model_dump() for c in tool_calls])


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
