"""The errors a semcache client raises: one per gRPC status a caller acts on.

    SemcacheError          any failed call (`.code`, `.details`); also every other status
    ├── InvalidArgument    INVALID_ARGUMENT: the request must change (the details say how)
    ├── Unavailable        UNAVAILABLE: the service or its provider could not answer
    │                      (the service unreachable: already retried `retries` times;
    │                      its providers failing: retried by the service, not again)
    ├── ResourceExhausted  RESOURCE_EXHAUSTED: over a quota; `.retry_after_s` if the server said
    ├── PermissionDenied   PERMISSION_DENIED: the caller may not do this (e.g. admin-only)
    ├── NotFound           NOT_FOUND: no such entry or request id (SubmitFeedback)
    ├── Unauthenticated    UNAUTHENTICATED: missing or wrong API key
    └── DeadlineExceeded   DEADLINE_EXCEEDED: the call's timeout passed

These are unrelated to the server's own error tree: a client sees
only what crossed the wire. What the client can check by itself (a timeout,
an unknown `cache_policy`, an API key or tenant that gRPC metadata cannot
carry) raises `ValueError` before anything is sent.
"""

from __future__ import annotations

from typing import Any

import grpc

from semcache_client._rpc_status import retry_after_s


class SemcacheError(Exception):
    """A semcache call failed with gRPC status `code`; `details` is the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuilt from its fields, so it crosses a process boundary (multiprocessing)."""
        return type(self), (self.code, self.details), self.__dict__


class InvalidArgument(SemcacheError):
    """The service refused the request as sent; `details` says what to change."""


class Unavailable(SemcacheError):
    """The service, or the provider behind it, could not answer; retrying later may work."""


class ResourceExhausted(SemcacheError):
    """Over a rate limit or quota; wait `retry_after_s` (when the server says) and retry."""

    def __init__(
        self, code: grpc.StatusCode, details: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(code, details)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.details, self.retry_after_s), self.__dict__


class PermissionDenied(SemcacheError):
    """The caller is known but may not do this (another tenant's data, an admin call)."""


class NotFound(SemcacheError):
    """The call names something the service does not know (or another tenant's)."""


class Unauthenticated(SemcacheError):
    """The API key is missing or not accepted."""


class DeadlineExceeded(SemcacheError):
    """The call's deadline (`timeout_s`) passed before the answer came."""


_ERROR_BY_CODE: dict[grpc.StatusCode, type[SemcacheError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_for(code: grpc.StatusCode, details: str, trailing_metadata: Any = None) -> SemcacheError:
    """The client error for a status `code`, reading RetryInfo from `trailing_metadata`."""
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(code, details, retry_after_s(trailing_metadata))
    return _ERROR_BY_CODE.get(code, SemcacheError)(code, details)


def from_rpc_error(error: Any) -> SemcacheError:
    """The client error for a failed sync (`grpc.RpcError`) or async (`AioRpcError`) call."""
    return error_for(error.code(), error.details() or "", error.trailing_metadata())
