"""The service's error tree, and the gRPC status each error maps to.

    SemcacheError                     INTERNAL (also any error not in this tree)
    ├── InvalidRequestError           INVALID_ARGUMENT: the message says what to change
    ├── UpstreamError                 UNAVAILABLE: the provider failed or is unreachable
    │   ├── UpstreamTimeoutError      DEADLINE_EXCEEDED
    │   └── UpstreamRejectedError     INVALID_ARGUMENT: the provider refused the request (4xx)
    └── CacheUnavailableError         never reaches a caller: the cache fails open

The mapping lives in `STATUS_BY_ERROR`; the error interceptor
(`service.interceptors`) is the only code that turns these into statuses.
"""

from __future__ import annotations

import grpc


class SemcacheError(Exception):
    """Base of every error the service raises on purpose."""


class InvalidRequestError(SemcacheError):
    """The request cannot be served as sent; the message says what to change."""


class UpstreamError(SemcacheError):
    """The upstream provider failed, was unreachable, or answered with an error."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream provider did not answer within the deadline."""


class UpstreamRejectedError(UpstreamError):
    """The provider rejected the request itself (a 4xx other than 429)."""


class CacheUnavailableError(SemcacheError):
    """The embedder or the vector store failed; the gateway treats it as a miss."""


STATUS_BY_ERROR: tuple[tuple[type[SemcacheError], grpc.StatusCode], ...] = (
    # most specific first
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (UpstreamTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UpstreamRejectedError, grpc.StatusCode.INVALID_ARGUMENT),
    (UpstreamError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for `error`; INTERNAL for anything unexpected."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL
