"""Checks a request before any work is done; each failure says what to change.

Every field is bounded, so nothing a caller sends can make the service fail
later (an INTERNAL) or carry an unbounded payload upstream: the prompt by
`Limits.max_prompt_bytes`; `stop` by OpenAI's 4 sequences of at most
`MAX_STOP_SEQUENCE_BYTES` each; `tools_json` by `Limits.max_tools_json_bytes`,
`MAX_JSON_DEPTH` levels of nesting and plain JSON (no NaN, no Infinity, no
number too large for a float, no unpaired surrogate escape), since it is sent
on as JSON; `tool_choice` likewise, within `MAX_TOOL_CHOICE_BYTES`. Values
echoed in an error message are cut to `SHOWN_CHARS`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass

from service.domain import CompletionRequest, SamplingParams
from service.errors import InvalidRequestError

# Entries one PutEntries call may carry (the import command sends batches under it).
MAX_SEEDS_PER_CALL = 1000

ROLES = ("system", "user", "assistant")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
NAME_RULE = "use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_SEQUENCE_BYTES = 1_024  # stop sequences are markers, a few characters long
MAX_MODEL_NAME_CHARS = 128
# The longest request id: a caller's own `x-request-id` (either door; longer gets a new
# one), and the one SubmitFeedback takes.
MAX_REQUEST_ID_CHARS = 128


def usable_request_id(value: str) -> bool:
    """Whether a caller's `x-request-id` is kept as the request's id: 1 to
    `MAX_REQUEST_ID_CHARS` printable characters, not all blank (either door makes a
    new one otherwise, and the response carries it)."""
    return 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isprintable() and not value.isspace()


MAX_JSON_DEPTH = 32  # tool schemas nest a few levels; Python's parser recurses per level
MAX_INT_DIGITS = 309  # a longer integer is beyond a 64-bit float (1.8e308)
MAX_TOOL_CHOICE_BYTES = 4_096  # {"type": "function", "function": {"name": ...}}
SHOWN_CHARS = 40
# Nothing a reader can see: white space, control characters (Cc) and format characters
# (Cf: zero-width spaces, joiners, direction marks, the byte-order mark, tag characters).
INVISIBLE_ONLY = re.compile(
    "[\\s\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    "\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]*"
)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class Limits:
    """Size limits on one request (from the settings)."""

    max_prompt_bytes: int = 32_768
    max_messages: int = 64
    max_tokens: int = 16_384
    max_ttl_s: int = 30 * 24 * 3600
    max_tools_json_bytes: int = 65_536


def check_name(kind: str, value: str) -> None:
    """Tenant and namespace names: 1–64 of letters, digits and `._:-`, starting alphanumeric."""
    if not NAME_PATTERN.match(value):
        raise InvalidRequestError(f"{kind} {shown(value)} is not valid: {NAME_RULE}")


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
                f"messages[{index}].role is {shown(message.role)}; use one of {', '.join(ROLES)}"
            )
    if messages[-1].role != "user":
        raise InvalidRequestError("the last message must have role 'user' (the question)")
    if INVISIBLE_ONLY.fullmatch(request.question):
        raise InvalidRequestError(
            "the prompt (the last user message) is empty: it has no visible character,"
            " only white space, control or format characters"
        )
    size = sum(len(m.content.encode()) for m in messages)
    if size > limits.max_prompt_bytes:
        raise InvalidRequestError(
            f"the prompt is {size} bytes (every message's content, a system prompt's"
            f" too); the limit is {limits.max_prompt_bytes} bytes"
        )


def _check_sampling(sampling: SamplingParams, limits: Limits) -> None:
    if sampling.max_tokens is not None and not 1 <= sampling.max_tokens <= limits.max_tokens:
        raise InvalidRequestError(
            f"max_tokens is {sampling.max_tokens}; use 1 to {limits.max_tokens}, or leave it unset"
        )
    _check_range("temperature", sampling.temperature, 0.0, 2.0)
    _check_range("top_p", sampling.top_p, 0.0, 1.0)
    _check_stop(sampling.stop)
    if sampling.response_format not in (None, "text", "json_object"):
        raise InvalidRequestError(
            f"response_format is {shown(sampling.response_format)}; use 'text' or 'json_object'"
        )
    _check_tools(sampling, limits)


def _check_stop(stop: tuple[str, ...]) -> None:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    for index, sequence in enumerate(stop):
        if not sequence:
            raise InvalidRequestError("stop sequences must not be empty strings")
        if len(sequence.encode()) > MAX_STOP_SEQUENCE_BYTES:
            raise InvalidRequestError(
                f"stop[{index}] is {len(sequence.encode())} bytes; the limit is"
                f" {MAX_STOP_SEQUENCE_BYTES} bytes per stop sequence"
            )


def _check_tools(sampling: SamplingParams, limits: Limits) -> None:
    if sampling.tools_json is not None:
        tools = parse_json("tools_json", sampling.tools_json, limits.max_tools_json_bytes)
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise InvalidRequestError("tools_json must be a JSON array of tool objects")
    choice = sampling.tool_choice
    if choice is None or choice == "none":
        return
    if choice not in ("auto", "required"):
        wanted = "tool_choice must be 'auto', 'none', 'required' or a JSON object"
        if not choice.lstrip().startswith("{"):
            raise InvalidRequestError(f"{wanted}, not {shown(choice)}")
        if not isinstance(parse_json("tool_choice", choice, MAX_TOOL_CHOICE_BYTES), dict):
            raise InvalidRequestError(wanted)
    if sampling.tools_json is None:  # as OpenAI's API refuses it (found from outside)
        raise InvalidRequestError(
            f"tool_choice is {shown(choice)} but the request has no tools: send tools"
            " (tools_json over gRPC) or leave tool_choice out"
        )


def parse_json(name: str, text: str, max_bytes: int) -> object:
    """`text` parsed as plain JSON that can be sent on as it is.

    Raises:
        InvalidRequestError: `text` is larger than `max_bytes` UTF-8 bytes, nests
            deeper than `MAX_JSON_DEPTH`, is not JSON, or holds NaN, Infinity, a
            number too large for a float, or an unpaired surrogate escape.
    """
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidRequestError(f"{name} is {size} bytes; the limit is {max_bytes} bytes")
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequestError(
            f"{name} nests {depth} levels deep; the limit is {MAX_JSON_DEPTH} levels"
        )
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_short_int
        )
    except ValueError as error:  # JSONDecodeError, and the limits of the parse_* hooks
        raise InvalidRequestError(f"{name} is not valid JSON: {error}") from None
    if not encodable(value):
        raise InvalidRequestError(
            f"{name} holds an unpaired surrogate escape such as \\ud800; send valid Unicode"
        )
    return value


def encodable(value: object) -> bool:
    """Whether parsed JSON `value` can be sent on as UTF-8 JSON: false when a string in it
    holds a lone UTF-16 surrogate (a `\\ud800` escape with no pair), which no encoder takes."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def json_depth(text: str) -> int:
    """How deep brackets nest in JSON `text` (brackets inside strings do not count)."""
    brackets = _JSON_BRACKET.findall(_JSON_STRING.sub("", text))
    steps = (1 if b in "[{" else -1 for b in brackets)
    return max(itertools.accumulate(steps, initial=0))


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number; send a finite number or a string")


def _short_int(literal: str) -> int:
    if len(literal) > MAX_INT_DIGITS:
        raise ValueError(
            f"an integer of {len(literal)} digits does not fit in a 64-bit float; send a"
            " smaller number"
        )
    return int(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{shown(literal)} does not fit in a 64-bit float; send a smaller number")
    return value


def shown(value: str) -> str:
    """`value` quoted for an error message, cut to `SHOWN_CHARS` characters."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


def _check_cache_controls(request: CompletionRequest, limits: Limits) -> None:
    if request.ttl_s is not None and not 1 <= request.ttl_s <= limits.max_ttl_s:
        raise InvalidRequestError(
            f"ttl_s is {request.ttl_s}; use 1 to {limits.max_ttl_s} seconds, or leave it unset"
        )
    _check_range("similarity_min", request.similarity_min, 0.0, 1.0)
    _check_range("max_error_rate", request.max_error_rate, 0.0, 1.0)


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise InvalidRequestError(f"{name} is {value}; use {low} to {high}, or leave it unset")
