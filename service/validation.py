"""Checks a request before any work is done; each failure says what to change."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from service.domain import CompletionRequest, SamplingParams
from service.errors import InvalidRequestError

ROLES = ("system", "user", "assistant")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_STOP_SEQUENCES = 4
MAX_MODEL_NAME_CHARS = 128


@dataclass(frozen=True)
class Limits:
    """Size limits on one request (from the settings)."""

    max_prompt_bytes: int = 32_768
    max_messages: int = 64
    max_tokens: int = 16_384
    max_ttl_s: int = 30 * 24 * 3600


def check_name(kind: str, value: str) -> None:
    """Tenant and namespace names: 1–64 of letters, digits and `._:-`, starting alphanumeric."""
    if not NAME_PATTERN.match(value):
        raise InvalidRequestError(
            f"{kind} {value!r} is not valid: use 1-64 letters, digits, '.', '_', ':' or '-',"
            " starting with a letter or digit"
        )


def validate(request: CompletionRequest, limits: Limits) -> None:
    """Raise `InvalidRequestError` if `request` cannot be served as sent."""
    _check_messages(request, limits)
    _check_sampling(request.sampling, limits)
    _check_cache_controls(request, limits)
    check_name("tenant", request.tenant)
    check_name("namespace", request.namespace)
    if request.model is not None and len(request.model) > MAX_MODEL_NAME_CHARS:
        raise InvalidRequestError(f"model name is longer than {MAX_MODEL_NAME_CHARS} characters")


def _check_messages(request: CompletionRequest, limits: Limits) -> None:
    messages = request.messages
    if not messages:
        raise InvalidRequestError("set a non-empty prompt, or messages ending with a user message")
    if len(messages) > limits.max_messages:
        raise InvalidRequestError(
            f"{len(messages)} messages is more than the limit of {limits.max_messages}"
        )
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidRequestError(
                f"messages[{index}].role is {message.role!r}; use one of {', '.join(ROLES)}"
            )
    if messages[-1].role != "user":
        raise InvalidRequestError("the last message must have role 'user' (the question)")
    if not request.question.strip():
        raise InvalidRequestError("the prompt (the last user message) is empty")
    size = sum(len(m.content.encode()) for m in messages)
    if size > limits.max_prompt_bytes:
        raise InvalidRequestError(
            f"the prompt is {size} bytes; the limit is {limits.max_prompt_bytes} bytes"
        )


def _check_sampling(sampling: SamplingParams, limits: Limits) -> None:
    if sampling.max_tokens is not None and not 1 <= sampling.max_tokens <= limits.max_tokens:
        raise InvalidRequestError(
            f"max_tokens is {sampling.max_tokens}; use 1 to {limits.max_tokens}, or leave it unset"
        )
    _check_range("temperature", sampling.temperature, 0.0, 2.0)
    _check_range("top_p", sampling.top_p, 0.0, 1.0)
    if len(sampling.stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    if any(not s for s in sampling.stop):
        raise InvalidRequestError("stop sequences must not be empty strings")
    if sampling.response_format not in (None, "text", "json_object"):
        raise InvalidRequestError(
            f"response_format is {sampling.response_format!r}; use 'text' or 'json_object'"
        )
    _check_tools(sampling)


def _check_tools(sampling: SamplingParams) -> None:
    if sampling.tools_json is not None:
        tools = _json("tools_json", sampling.tools_json)
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise InvalidRequestError("tools_json must be a JSON array of tool objects")
    choice = sampling.tool_choice
    named = choice is not None and choice not in ("auto", "none", "required")
    if named and not isinstance(_json("tool_choice", str(choice)), dict):
        raise InvalidRequestError("tool_choice must be 'auto', 'none', 'required' or a JSON object")


def _json(name: str, text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as error:
        raise InvalidRequestError(f"{name} is not valid JSON: {error}") from None


def _check_cache_controls(request: CompletionRequest, limits: Limits) -> None:
    if request.ttl_s is not None and not 1 <= request.ttl_s <= limits.max_ttl_s:
        raise InvalidRequestError(
            f"ttl_s is {request.ttl_s}; use 1 to {limits.max_ttl_s} seconds, or leave it unset"
        )
    _check_range("similarity_min", request.similarity_min, 0.0, 1.0)


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise InvalidRequestError(f"{name} is {value}; use {low} to {high}, or leave it unset")
