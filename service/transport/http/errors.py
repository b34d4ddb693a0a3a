"""The one table from the service's errors to HTTP statuses, and OpenAI-shaped error bodies.

    error                    HTTP  OpenAI type            code                  metric code
    UnknownModelError        404   invalid_request_error  model_not_found       INVALID_ARGUMENT
    InvalidRequestError      400   invalid_request_error  invalid_value         INVALID_ARGUMENT
    NotFoundError            404   invalid_request_error  not_found             NOT_FOUND
    AuthenticationError      401   invalid_request_error  invalid_api_key       UNAUTHENTICATED
    PermissionDeniedError    403   permission_error       permission_denied     PERMISSION_DENIED
    RateLimitedError         429   rate_limit_error       rate_limit_exceeded   RESOURCE_EXHAUSTED
    OverloadedError          503   server_error           overloaded            RESOURCE_EXHAUSTED
    UpstreamTimeoutError     504   timeout_error          upstream_timeout      DEADLINE_EXCEEDED
    UpstreamBusyError        503   server_error           upstream_busy         RESOURCE_EXHAUSTED
    UpstreamRejectedError    400   invalid_request_error  upstream_rejected     INVALID_ARGUMENT
    UpstreamError            503   server_error           upstream_unavailable  UNAVAILABLE
    StoreNotWritableError    503   server_error           store_not_writable    UNAVAILABLE
    anything else            500   server_error           internal_error        INTERNAL

Rate-limited and overloaded answers carry `Retry-After` (whole seconds, rounded
up: the header takes no fractions) and `retry-after-ms`, which the OpenAI SDKs
read first; `upstream_unavailable` and `upstream_timeout` carry `x-should-retry:
false`, since the service has retried the providers already. The metric code
is the gRPC status name the gRPC door gives the same error, so
`semcache_requests_total{code="OK"}` means the same for both doors. Nothing
here imports gRPC.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from service.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    SemcacheError,
    StoreNotWritableError,
    UnknownModelError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    upstream_already_retried,
)

NO_RETRY_HEADER = "x-should-retry"


class BadFieldError(InvalidRequestError):
    """A field of the request body or a header is malformed; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


class BadBodyEncodingError(InvalidRequestError):
    """The body's Content-Encoding says it is compressed, and it does not decompress."""


@dataclass(frozen=True)
class HttpError:
    """How one kind of error is answered over HTTP."""

    status: int
    type: str
    code: str
    metric_code: str


_BAD, _SERVER = "invalid_request_error", "server_error"
_INVALID, _EXHAUSTED, _UNAVAILABLE = "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE"
HTTP_ERROR_BY_ERROR: tuple[tuple[type[SemcacheError], HttpError], ...] = (
    # most specific first
    (UnknownModelError, HttpError(404, _BAD, "model_not_found", _INVALID)),
    (BadBodyEncodingError, HttpError(400, _BAD, "bad_content_encoding", _INVALID)),
    (InvalidRequestError, HttpError(400, _BAD, "invalid_value", _INVALID)),
    (NotFoundError, HttpError(404, _BAD, "not_found", "NOT_FOUND")),
    (AuthenticationError, HttpError(401, _BAD, "invalid_api_key", "UNAUTHENTICATED")),
    (
        PermissionDeniedError,
        HttpError(403, "permission_error", "permission_denied", "PERMISSION_DENIED"),
    ),
    (RateLimitedError, HttpError(429, "rate_limit_error", "rate_limit_exceeded", _EXHAUSTED)),
    (OverloadedError, HttpError(503, _SERVER, "overloaded", _EXHAUSTED)),
    (
        UpstreamTimeoutError,
        HttpError(504, "timeout_error", "upstream_timeout", "DEADLINE_EXCEEDED"),
    ),
    (UpstreamBusyError, HttpError(503, _SERVER, "upstream_busy", _EXHAUSTED)),
    (UpstreamRejectedError, HttpError(400, _BAD, "upstream_rejected", _INVALID)),
    (UpstreamError, HttpError(503, _SERVER, "upstream_unavailable", _UNAVAILABLE)),
    (StoreNotWritableError, HttpError(503, _SERVER, "store_not_writable", _UNAVAILABLE)),
)
INTERNAL = HttpError(500, _SERVER, "internal_error", "INTERNAL")

# A domain message that starts with an OpenAI field's name is about that field.
_LEADING_FIELD = re.compile(
    r"^(?:messages|model|temperature|top_p|max_tokens|stop|n"
    r"|response_format|tools|tool_choice|ttl_s|similarity_min|max_error_rate|namespace"
    r"|entry_id|request_id|verdict)\b"
)


def http_error_for(error: BaseException) -> HttpError:
    """The HTTP answer for `error`; INTERNAL (500) for anything unexpected."""
    for error_type, answer in HTTP_ERROR_BY_ERROR:
        if isinstance(error, error_type):
            return answer
    return INTERNAL


def error_body(error: BaseException, answer: HttpError, request_id: str) -> dict[str, Any]:
    """OpenAI's error object for `error`; an internal error says only its request id."""
    internal = answer is INTERNAL
    message = f"internal error (request id {request_id})" if internal else str(error)
    return {
        "error": {
            "message": message,
            "type": answer.type,
            "param": param_of(error),
            "code": answer.code,
        }
    }


# Messages shared with the gRPC door that name their field another way (found from outside:
# these 400s had `param: null`, where the README says a malformed field's names it).
_PARAM_BY_MESSAGE = (
    (
        re.compile(r"^(?:\d+ messages |the last message |the prompt |set a non-empty prompt)"),
        "messages",
    ),
    (re.compile(r"^(?:at most \d+ stop sequences|stop sequences )"), "stop"),
    (re.compile(r"^tools_json\b"), "tools"),
    (re.compile(r"^model name "), "model"),
)


def param_of(error: BaseException) -> str | None:
    """The request field an error is about, when it names one."""
    if isinstance(error, BadFieldError):
        return error.param
    if isinstance(error, UnknownModelError):
        return "model"
    if isinstance(error, InvalidRequestError):
        message = str(error)
        match = _LEADING_FIELD.match(message)
        if match:
            return match.group(0)
        return next((param for rule, param in _PARAM_BY_MESSAGE if rule.match(message)), None)
    return None


def retry_headers(error: BaseException) -> dict[str, str]:
    """`Retry-After` (whole seconds) and `retry-after-ms` for errors that say when to retry;
    `x-should-retry: false` (which the OpenAI SDKs obey) when the service has already
    retried the providers itself: an SDK retrying a 503 upstream_unavailable twice more
    turned one call into 18 upstream calls (found from outside)."""
    if upstream_already_retried(error):
        return {NO_RETRY_HEADER: "false"}
    if not isinstance(error, RateLimitedError | OverloadedError):
        return {}
    delay_s = max(error.retry_after_s, 0.0)
    return {
        "Retry-After": str(max(1, math.ceil(delay_s))),
        "retry-after-ms": str(max(1, math.ceil(delay_s * 1000))),
    }
