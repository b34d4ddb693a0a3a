"""The one table from domain errors to gRPC status codes, and the RetryInfo trailer.

The interceptor (`interceptors.py`) is the only code that ends an RPC with a
status from here; a refusal that says when to retry (`RateLimitedError`,
`OverloadedError`) carries a `google.rpc.RetryInfo` detail in the
`grpc-status-details-bin` trailer. A batch item's failure is the same
`google.rpc.Status` (`item_status`), RetryInfo included, inside the response.
"""

from __future__ import annotations

import math
from typing import NoReturn

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2

# googleapis-common-protos ships .pyi stubs without a py.typed marker; once
# pyproject sets `follow_untyped_imports` for google.rpc.*, these ignores go unused.
from google.rpc.code_pb2 import RESOURCE_EXHAUSTED  # type: ignore[import-untyped,unused-ignore]
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped,unused-ignore]
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped,unused-ignore]

from service.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    SemcacheError,
    StoreNotWritableError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)

log = structlog.get_logger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Sent with a status the service reached after retrying the providers itself, as the
# HTTP door sends the header of that name: semcache's clients do not retry such a call.
NO_RETRY_TRAILER: tuple[tuple[str, str], ...] = (("x-should-retry", "false"),)

STATUS_BY_ERROR: tuple[tuple[type[SemcacheError], grpc.StatusCode], ...] = (
    # most specific first
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UpstreamTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UpstreamBusyError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UpstreamRejectedError, grpc.StatusCode.INVALID_ARGUMENT),
    (UpstreamError, grpc.StatusCode.UNAVAILABLE),
    (StoreNotWritableError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for `error`; INTERNAL for anything unexpected."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def _retry_detail(retry_after_s: float) -> any_pb2.Any:
    retry_ms = max(1, math.ceil(retry_after_s * 1000))
    retry = RetryInfo(retry_delay=duration_pb2.Duration())
    retry.retry_delay.FromMilliseconds(retry_ms)
    detail = any_pb2.Any()
    detail.Pack(retry)
    return detail


def retry_info_trailer(retry_after_s: float, message: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata for a RESOURCE_EXHAUSTED status with a `RetryInfo` detail.

    `message` must be the status message the RPC ends with: clients
    (`grpc_status.rpc_status.from_call`) reject details that disagree with it.
    """
    detail = _retry_detail(retry_after_s)
    status = Status(code=RESOURCE_EXHAUSTED, message=message, details=[detail])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def item_status(error: Exception, request_id: str = "") -> Status:
    """`error` as the google.rpc.Status of one failed batch item.

    Its code is `status_for(error)`; its message is the error's, or for an
    unexpected one "internal error (request id …)", logged with its traceback
    under the item's `request_id` as a whole RPC's would be; a refusal that
    says when to retry carries a `RetryInfo` detail, as a whole RPC's would.
    """
    code = status_for(error)
    if code is grpc.StatusCode.INTERNAL:
        log.error("batch item failed", request_id=request_id, exc_info=error)
        message = f"internal error (request id {request_id})"
    else:
        message = str(error)
    status = Status(code=code.value[0], message=message)
    if isinstance(error, RateLimitedError | OverloadedError):
        status.details.append(_retry_detail(error.retry_after_s))
    return status


async def abort_with_retry_info(
    context: grpc.aio.ServicerContext, error: RateLimitedError | OverloadedError
) -> NoReturn:
    """End the RPC with RESOURCE_EXHAUSTED, the error's message and a `RetryInfo` detail.

    Raises:
        grpc.aio.AbortError: always (that is how grpc.aio ends an RPC).
    """
    message = str(error)
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        trailing_metadata=retry_info_trailer(error.retry_after_s, message),
    )
    raise AssertionError("context.abort returned")  # pragma: no cover
