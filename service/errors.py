"""The service's error tree, and the gRPC status each error maps to at the door.

    SemcacheError                     INTERNAL (also any error not in this tree)
    ├── InvalidRequestError           INVALID_ARGUMENT: the message says what to change
    │   └── UnknownModelError         INVALID_ARGUMENT (HTTP 404): no such model in the catalogue
    ├── AuthenticationError           UNAUTHENTICATED: no API key, or an unknown one
    ├── PermissionDeniedError         PERMISSION_DENIED: the key's role or tenant does not allow it
    ├── RateLimitedError              RESOURCE_EXHAUSTED, with a RetryInfo detail
    ├── OverloadedError               RESOURCE_EXHAUSTED, with a RetryInfo detail: the server
    │                                 is at its bound on RPCs in flight
    ├── UpstreamError                 UNAVAILABLE: the provider failed or is unreachable
    │   ├── UpstreamTimeoutError      DEADLINE_EXCEEDED
    │   ├── UpstreamBusyError         RESOURCE_EXHAUSTED: the provider's queue is full
    │   └── UpstreamRejectedError     INVALID_ARGUMENT: the provider refused the request (4xx)
    └── CacheUnavailableError         never reaches a caller: the cache fails open
        └── StoreNotWritableError     UNAVAILABLE when an invalidation cannot be written
                                      (disk full); a skipped store otherwise

    StartupError                      never reaches a caller: `semcache serve` prints
                                      it as one line and exits non-zero
    └── StoreDamagedError             the store lacks entries it held (SEMCACHE_ON_STORE_DAMAGE)

Nothing here knows a transport: the gRPC door's table is
`service.transport.grpc.status`, the HTTP door's `service.transport.http.errors`.
"""

from __future__ import annotations

from typing import Literal


class SemcacheError(Exception):
    """Base of every error the service raises on purpose."""


class InvalidRequestError(SemcacheError):
    """The request cannot be served as sent; the message says what to change."""


class UnknownModelError(InvalidRequestError):
    """The request names a model the catalogue does not list (the HTTP door answers 404)."""


class NotFoundError(SemcacheError):
    """The request names something (an entry, a request id) this service does not know."""


class AuthenticationError(SemcacheError):
    """The caller sent no API key, a malformed one, or one the service does not know."""


class PermissionDeniedError(SemcacheError):
    """The caller's key is valid but its role or tenant does not allow the action."""


class RateLimitedError(SemcacheError):
    """A tenant is over its requests- or tokens-per-minute limit; retry after `retry_after_s`."""

    def __init__(
        self,
        tenant: str,
        limit: Literal["requests", "tokens"],
        per_minute: int,
        retry_after_s: float,
    ) -> None:
        self.tenant = tenant
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"tenant {tenant!r} is over its limit of {per_minute} {limit} per minute;"
            f" retry in {retry_after_s:.2f} s"
        )


class OverloadedError(SemcacheError):
    """The server already has its most RPCs in flight; retry after `retry_after_s`."""

    def __init__(self, max_in_flight: int, retry_after_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the server is overloaded: {max_in_flight} calls are already in flight"
            f" (SEMCACHE_MAX_CONCURRENT_RPCS); retry in {retry_after_s:.2f} s"
        )


class UpstreamError(SemcacheError):
    """The upstream provider failed, was unreachable, or answered with an error."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream provider did not answer within the deadline."""


class UpstreamBusyError(UpstreamError):
    """The provider's concurrency limit is reached and its waiting queue is full."""


class UpstreamRejectedError(UpstreamError):
    """The provider rejected the request itself (a 4xx other than 429)."""


def upstream_already_retried(error: BaseException) -> bool:
    """Whether `error` ends a call the service already retried and failed over itself
    (the providers' failures and timeouts): a client retrying it multiplies upstream
    calls (one SDK call with two retries became 18 upstream calls, found from outside),
    so both doors tell clients not to (`x-should-retry: false`). A busy provider's
    queue and a provider's refusal of the request itself are not retried by the service."""
    return isinstance(error, UpstreamError) and not isinstance(
        error, UpstreamBusyError | UpstreamRejectedError
    )


class CacheUnavailableError(SemcacheError):
    """The embedder or the vector store failed; the gateway treats it as a miss."""


class StoreNotWritableError(CacheUnavailableError):
    """The store takes no writes now: the disk is (nearly) full, or the store is not open."""


class StartupError(Exception):
    """The service cannot start as configured.

    The message is one line that says what is wrong and what to change;
    `semcache serve` prints it (no traceback) and exits with status 1. Raise a
    subclass (or this) for any start-up failure an operator can fix.
    """


class StoreDamagedError(StartupError):
    """The store opened with entries missing, and SEMCACHE_ON_STORE_DAMAGE=refuse."""
