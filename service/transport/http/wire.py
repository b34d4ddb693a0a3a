"""OpenAI chat-completion request bodies and semcache's cache controls → domain requests.

Fields OpenAI defines that only describe the call (`user`, `seed`, `metadata`,
`store`, `service_tier`, ...) and fields nobody defines are ignored. A field that
would change the answer and that semcache neither sends on nor keys the cache by
(`logprobs`, penalties, `logit_bias`, `reasoning_effort`, legacy `functions`,
...) is refused unless it holds its default (found from outside: `logprobs: true`
got `logprobs: null`, and `functions` got plain text). A field semcache uses but
cannot read is a `BadFieldError` naming it (HTTP 400). Range checks (temperature
0-2, ...) are the pipeline's, the same for both doors.

Cache controls come from headers and from the body's `semcache` object; a field
in the body wins over its header, so a header set once on a client (the SDKs'
`default_headers`) is the default that one call's `extra_body` can override. The
object takes only its own fields, numbers as JSON numbers: a misspelt control
(`namespce`) is a 400, never a silent default (found from outside: it served the
`default` namespace's answer to a call that asked for another).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from service.domain import CachePolicy, ChatMessage, CompletionRequest, SamplingParams
from service.transport.http.errors import BadFieldError
from service.validation import ROLES

T = TypeVar("T")

DEFAULT_NAMESPACE = "default"
EXTENSION_KEY = "semcache"
# Header ⇄ body-extension field, for each cache control.
CONTROL_HEADERS: dict[str, str] = {
    "cache": "x-semcache-cache",
    "namespace": "x-semcache-namespace",
    "ttl_s": "x-semcache-ttl-s",
    "similarity_min": "x-semcache-similarity-min",
    "max_error_rate": "x-semcache-max-error-rate",
}
CACHE_POLICIES: dict[str, CachePolicy] = {
    "default": CachePolicy.DEFAULT,
    "bypass": CachePolicy.BYPASS,
    "refresh": CachePolicy.REFRESH,
    "no-store": CachePolicy.NO_STORE,
    "no_store": CachePolicy.NO_STORE,
}
# Fields that change what a model answers, which semcache neither sends on nor keys the
# cache by: accepted only at their defaults (absent, null, or the value here).
UNSUPPORTED_FIELDS: dict[str, object] = {
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "reasoning_effort": None,
    "functions": None,
    "function_call": None,
    "parallel_tool_calls": True,
    "audio": None,
    "modalities": ["text"],
    "prediction": None,
    "web_search_options": None,
}
# Controls a caller may reach for under another name, and what to send instead.
_CONTROL_HINTS = {
    **{name: f"did you mean {EXTENSION_KEY}.cache?" for name in ("cache_policy", "policy")},
    "ttl": f"did you mean {EXTENSION_KEY}.ttl_s?",
    "timeout_s": "the time budget is the x-semcache-timeout-s header",
}
# OpenAI's "developer" role is its newer name for "system".
_ROLE_ALIASES = {"developer": "system"}
_DOOR_ROLES = (*ROLES, *_ROLE_ALIASES)


@dataclass(frozen=True)
class ChatCall:
    """One parsed `POST /v1/chat/completions`: the domain request and how to answer it."""

    request: CompletionRequest
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class CacheControls:
    """The per-request cache fields, from headers and the body's extension."""

    policy: CachePolicy = CachePolicy.DEFAULT
    namespace: str = DEFAULT_NAMESPACE
    ttl_s: int | None = None
    similarity_min: float | None = None
    max_error_rate: float | None = None


def parse_chat(
    body: object,
    headers: Mapping[str, str],
    tenant: str,
    deadline_s: float | None,
    request_id: str = "",
) -> ChatCall:
    """The domain request for an OpenAI chat-completions body; `request_id` is the door's.

    Raises:
        BadFieldError: a field or cache-control header is malformed; it is named.
    """
    if not isinstance(body, dict):
        raise BadFieldError("body", "the request body must be a JSON object")
    _check_supported(body)
    controls = cache_controls(body.get(EXTENSION_KEY), headers)
    request = CompletionRequest(
        messages=_messages(body.get("messages")),
        tenant=tenant,
        namespace=controls.namespace,
        model=_optional(body, "model", str) or None,
        sampling=_sampling(body),
        cache_policy=controls.policy,
        deadline_s=deadline_s,
        ttl_s=controls.ttl_s,
        similarity_min=controls.similarity_min,
        max_error_rate=controls.max_error_rate,
        request_id=request_id,
    )
    stream = _optional(body, "stream", bool) or False
    return ChatCall(request, stream, stream and _include_usage(body.get("stream_options")))


def cache_controls(extension: object, headers: Mapping[str, str]) -> CacheControls:
    """The cache controls of one request: the body's `semcache` fields over the headers.

    Raises:
        BadFieldError: a value is malformed (named as `semcache.<field>` or its header).
    """
    if extension is not None and not isinstance(extension, dict):
        raise BadFieldError(EXTENSION_KEY, "semcache must be an object of cache controls")
    _check_controls(extension or {})
    fields: dict[str, tuple[str, object]] = {}
    for name, header in CONTROL_HEADERS.items():
        if extension and extension.get(name) is not None:
            param = f"{EXTENSION_KEY}.{name}"
            value = extension[name]
            fields[name] = (
                param,
                value if name in ("cache", "namespace") else _not_text(param, value),
            )
        elif header in headers:
            fields[name] = (header, headers[header].strip())
    return CacheControls(
        policy=_policy(*fields["cache"]) if "cache" in fields else CachePolicy.DEFAULT,
        namespace=_text(*fields["namespace"]) if "namespace" in fields else DEFAULT_NAMESPACE,
        ttl_s=_integer(*fields["ttl_s"]) if "ttl_s" in fields else None,
        similarity_min=_number(*fields["similarity_min"]) if "similarity_min" in fields else None,
        max_error_rate=_number(*fields["max_error_rate"]) if "max_error_rate" in fields else None,
    )


def refuse_unknown(
    fields: Mapping[str, object],
    known: Collection[str],
    where: str = "",
    hints: Mapping[str, str] | None = None,
) -> None:
    """Every key of `fields` (the object at `where`, "" for the body) is in `known`.

    Raises:
        BadFieldError: one is not, named, with its hint or else the known fields.
    """
    for name in fields:
        if name in known:
            continue
        param = f"{where}.{name}" if where else name
        hint = (hints or {}).get(name) or f"the fields are {', '.join(known)}"
        raise BadFieldError(param, f"{param} is not a field here: {hint}")


def _check_controls(extension: Mapping[str, object]) -> None:
    """Every key of the body's `semcache` object is a cache control.

    Raises:
        BadFieldError: one is not, named with the controls there are.
    """
    refuse_unknown(extension, CONTROL_HEADERS, EXTENSION_KEY, _CONTROL_HINTS)


def _check_supported(body: Mapping[str, Any]) -> None:
    """No field that would change the answer is set to more than its default.

    Raises:
        BadFieldError: one is, named, with why it cannot be honoured.
    """
    for name, default in UNSUPPORTED_FIELDS.items():
        value = body.get(name)
        if value is None or value == default or (value in ({}, []) and default is None):
            continue
        raise BadFieldError(
            name,
            f"{name} is not supported by semcache's door: it would change the answer, and"
            " semcache neither sends it to the provider nor keys its cache by it; leave it"
            " out (or at its default), or call the provider directly",
        )


def _policy(param: str, value: object) -> CachePolicy:
    policy = CACHE_POLICIES.get(value.strip().lower()) if isinstance(value, str) else None
    if policy is None:
        raise BadFieldError(
            param, f"{param} is {value!r}; use default, bypass, refresh or no-store"
        )
    return policy


def _text(param: str, value: object) -> str:
    if not isinstance(value, str):
        raise BadFieldError(param, f"{param} must be a string")
    return value


def _integer(param: str, value: object) -> int:
    """An integer from JSON (a whole number) or a header (its digits)."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise BadFieldError(param, f"{param} is {value!r}; send a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadFieldError(param, f"{param} is {value!r}; send a whole number")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise BadFieldError(param, f"{param} is {value!r}; send a whole number")
    return int(value)


def _number(param: str, value: object) -> float:
    """A finite number from JSON or a header."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise BadFieldError(param, f"{param} is {value!r}; send a number") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise BadFieldError(param, f"{param} is {value!r}; send a number")
    if not math.isfinite(number):
        raise BadFieldError(param, f"{param} is {value!r}; send a finite number")
    return number


def _optional(body: Mapping[str, Any], name: str, kind: type[T], prefix: str = "") -> T | None:
    """`body[name]` when it is a `kind`; None when absent or null.

    Raises:
        BadFieldError: present with another type (named `prefix + name`).
    """
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        param = prefix + name
        raise BadFieldError(param, f"{param} must be a {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


_KIND_NAMES: dict[type, str] = {str: "string", bool: "boolean", dict: "JSON object", list: "list"}


def optional_field(body: Mapping[str, Any], name: str, kind: type[T]) -> T | None:
    """`body[name]` when it is a `kind`; None when absent or null.

    Raises:
        BadFieldError: present with another type.
    """
    return _optional(body, name, kind)


def optional_number(body: Mapping[str, Any], name: str) -> float | None:
    """`body[name]` as a finite number; None when absent or null.

    Raises:
        BadFieldError: present and not a finite number.
    """
    return _optional_number(body, name)


def optional_integer(body: Mapping[str, Any], name: str) -> int | None:
    """`body[name]` as a whole number; None when absent or null.

    Raises:
        BadFieldError: present and not a whole number.
    """
    value = body.get(name)
    return None if value is None else _integer(name, _not_text(name, value))


def _messages(raw: object) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list) or not raw:
        raise BadFieldError(
            "messages", "messages must be a non-empty array ending with a user message"
        )
    return tuple(_message(index, item) for index, item in enumerate(raw))


def _message(index: int, raw: object) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise BadFieldError(where, f"{where} must be an object with role and content")
    role = raw.get("role")
    if not isinstance(role, str):
        raise BadFieldError(f"{where}.role", f"{where}.role must be a string")
    for calls in ("tool_calls", "function_call"):
        if raw.get(calls):  # dropping them would cache an answer to another conversation
            raise BadFieldError(
                f"{where}.{calls}",
                f"{where} carries {calls}: semcache answers one turn, so a conversation that"
                " goes on from a tool call needs the provider directly",
            )
    if role not in _DOOR_ROLES:
        raise BadFieldError(
            f"{where}.role",
            f"{where}.role is {role[:64]!r}; use one of {', '.join(_DOOR_ROLES)}"
            + (
                " (a tool's result continues an agent loop: semcache answers one turn, so"
                " that needs the provider directly)"
                if role == "tool"
                else ""
            ),
        )
    return ChatMessage(_ROLE_ALIASES.get(role, role), _content(where, raw.get("content")))


def _content(where: str, content: object) -> str:
    """Text content: a string, null (an assistant turn that called tools), or text parts,
    one line each (found from outside: joined with nothing, "What is" and "a dog?"
    reached the provider, and the cache key, as "What isa dog?")."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadFieldError(f"{where}.content", f"{where}.content must be a string or an array")
    texts = []
    for index, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text"):
            raise BadFieldError(
                f"{where}.content",
                f"{where}.content has a part that is not text; semcache caches text only",
            )
        param = f"{where}.content[{index}].text"
        text = part.get("text")
        if not isinstance(text, str):
            raise BadFieldError(param, f"{param} must be a string: a text part carries its text")
        texts.append(text)
    return "\n".join(texts)


def _sampling(body: Mapping[str, Any]) -> SamplingParams:
    tools = _optional(body, "tools", list)
    if tools is not None and not all(isinstance(tool, dict) for tool in tools):
        raise BadFieldError("tools", "tools must be an array of tool objects")
    _check_one_choice(body)
    return SamplingParams(
        temperature=_optional_number(body, "temperature"),
        max_tokens=_max_tokens(body),
        max_tokens_name=(
            "max_completion_tokens"
            if body.get("max_completion_tokens") is not None
            else "max_tokens"
        ),
        top_p=_optional_number(body, "top_p"),
        stop=_stop(body.get("stop")),
        response_format=_response_format(body.get("response_format")),
        tools_json=json.dumps(tools) if tools else None,
        tool_choice=_tool_choice(body.get("tool_choice")),
    )


def _check_one_choice(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadFieldError("n", f"n is {n!r}; semcache answers with one choice: send 1 or omit n")


def _optional_number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    return None if value is None else _number(name, _not_text(name, value))


def _not_text(name: str, value: object) -> object:
    """A body field's number as JSON sent it: "0.5" is a string there, as OpenAI's API
    says too (only a header's value is text to read as a number)."""
    if isinstance(value, str):
        raise BadFieldError(name, f"{name} is the string {value!r}; send a JSON number")
    return value


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    values = {
        name: _integer(name, _not_text(name, body[name]))
        for name in ("max_completion_tokens", "max_tokens")
        if body.get(name) is not None
    }
    if len(set(values.values())) > 1:
        raise BadFieldError(
            "max_tokens", "max_tokens and max_completion_tokens differ; send one of them"
        )
    return next(iter(values.values()), None)


def _stop(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    raise BadFieldError("stop", "stop must be a string or an array of strings")


def _response_format(raw: object) -> str | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("text", "json_object"):
        raise BadFieldError(
            "response_format",
            f"response_format must be {{'type': 'text'}} or {{'type': 'json_object'}}, got {raw!r}",
        )
    return str(kind)


def _tool_choice(raw: object) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, dict):
        return json.dumps(raw)
    raise BadFieldError(
        "tool_choice", "tool_choice must be 'auto', 'none', 'required' or an object"
    )


def _include_usage(raw: object) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, dict):
        raise BadFieldError("stream_options", "stream_options must be an object")
    return bool(_optional(raw, "include_usage", bool, "stream_options."))
