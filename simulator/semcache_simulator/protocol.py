"""Request bodies of the OpenAI API, checked and turned into typed values.

A body the real API would refuse is refused here too, with the same status
and error object, `{"error": {"message", "type", "param", "code"}}`, so the
service's error handling meets the shapes it will meet in production.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from semcache_simulator.answers import ChatMessage

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TEMPERATURE_MAX = 2.0


class RequestError(Exception):
    """A request answered with an OpenAI-style error object instead of a result."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON error object, as OpenAI sends it."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    """A checked `POST /v1/chat/completions` body."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    include_usage: bool = False
    tool_call: str | None = None  # the function the answer calls, when tools force one


@dataclass(frozen=True)
class CompletionRequest:
    """A checked `POST /v1/completions` body; `prompts` holds one or more prompts."""

    model: str
    prompts: tuple[str, ...]
    max_tokens: int | None = None
    temperature: float | None = None


def parse_chat_request(body: object) -> ChatRequest:
    """Check a chat completions body.

    Raises:
        RequestError: 400 naming the first field that is missing or wrong.
    """
    fields = _require_object(body)
    stream = _optional_bool(fields, "stream") or False
    return ChatRequest(
        model=_require_model(fields),
        messages=_parse_messages(fields.get("messages")),
        max_tokens=_max_tokens(fields),
        temperature=_temperature(fields),
        stream=stream,
        include_usage=_include_usage(fields, stream),
        tool_call=_forced_tool(fields),
    )


def _forced_tool(fields: dict[str, Any]) -> str | None:
    """The function the answer calls (unary or streamed): the named one, or the first with
    "required"."""
    tools = fields.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = fields.get("tool_choice")
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name")
        return name if isinstance(name, str) else None
    first = tools[0].get("function", {}).get("name") if isinstance(tools[0], dict) else None
    return first if choice == "required" and isinstance(first, str) else None


def parse_completion_request(body: object) -> CompletionRequest:
    """Check a legacy completions body (`prompt` a string or a list of strings).

    Raises:
        RequestError: 400 naming the first field that is missing or wrong, or
            asking for streaming, which the simulator does not offer here.
    """
    fields = _require_object(body)
    if _optional_bool(fields, "stream"):
        raise _invalid("streaming is not supported on /v1/completions; omit 'stream'", "stream")
    return CompletionRequest(
        model=_require_model(fields),
        prompts=_parse_prompts(fields.get("prompt")),
        max_tokens=_max_tokens(fields),
        temperature=_temperature(fields),
    )


def _invalid(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param=param)


def _require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object")
    return body


def _require_model(fields: dict[str, Any]) -> str:
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("you must provide a model parameter (a non-empty string)", "model")
    return model


def _optional_bool(fields: dict[str, Any], name: str) -> bool | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, bool):
        raise _invalid(f"'{name}' must be a boolean, got {value!r}", name)
    return value


def _max_tokens(fields: dict[str, Any]) -> int | None:
    # max_completion_tokens replaced max_tokens; when both are sent it wins.
    for name in ("max_completion_tokens", "max_tokens"):
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _invalid(f"'{name}' must be an integer >= 1, got {value!r}", name)
        return value
    return None


def _temperature(fields: dict[str, Any]) -> float | None:
    value = fields.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"'temperature' must be a number, got {value!r}", "temperature")
    if not 0.0 <= value <= _TEMPERATURE_MAX:
        raise _invalid(f"'temperature' must be in [0, 2], got {value}", "temperature")
    return float(value)


def _include_usage(fields: dict[str, Any], stream: bool) -> bool:
    options = fields.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise _invalid(
            "the 'stream_options' parameter is only allowed when 'stream' is enabled",
            "stream_options",
        )
    if not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise _invalid("'stream_options.include_usage' must be a boolean", "stream_options")
    return include


def _parse_messages(raw: object) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list) or not raw:
        raise _invalid("'messages' must be a non-empty array of messages", "messages")
    return tuple(_parse_message(item, f"messages[{i}]") for i, item in enumerate(raw))


def _parse_message(raw: object, param: str) -> ChatMessage:
    if not isinstance(raw, dict):
        raise _invalid(f"'{param}' must be an object with 'role' and 'content'", param)
    role = raw.get("role")
    if role not in _ROLES:
        raise _invalid(f"'{param}.role' must be one of {sorted(_ROLES)}, got {role!r}", param)
    return ChatMessage(role=str(role), text=_content_text(raw.get("content"), param))


def _content_text(content: object, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(f"'{param}.content' must be a string or an array of parts", param)
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(f"each part of '{param}.content' must be an object with 'type'", param)
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid(f"a text part of '{param}.content' needs a string 'text'", param)
            texts.append(text)
    return "\n".join(texts)


def _parse_prompts(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        return tuple(raw)
    raise _invalid(
        "'prompt' must be a string or a non-empty array of strings "
        "(token-id prompts are not supported by the simulator)",
        "prompt",
    )
