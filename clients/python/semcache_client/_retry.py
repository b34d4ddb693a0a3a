"""Deadlines and retry decisions, made once for both clients.

A call gets one deadline (`timeout_s` from now) covering every attempt. Only
UNAVAILABLE is retried, after an exponential backoff with jitter, and only
while the wait and a useful attempt still fit before the deadline; not when
the service says it has already retried its providers (`x-should-retry:
false`: the service could not be reached, not the provider behind it). A client
asks `Attempts` how long each attempt may take and, after a failure, how long
to wait; then it waits its own way (`time.sleep` or `asyncio.sleep`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc

from semcache_client.errors import from_rpc_error

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
# The trailer the service sends with an UNAVAILABLE it reached after retrying and
# failing over between its providers itself: retrying that call would only repeat them.
NO_RETRY_TRAILER = ("x-should-retry", "false")

# An attempt with less time than this left would only turn UNAVAILABLE into
# DEADLINE_EXCEEDED, and hide the real cause from the caller.
MIN_ATTEMPT_S = 0.05


class Deadline:
    """The moment a call must be over by, on the monotonic clock."""

    def __init__(self, timeout_s: float) -> None:
        self._expires_at = time.monotonic() + timeout_s

    def remaining_s(self) -> float:
        return max(0.0, self._expires_at - time.monotonic())


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more attempts after the first, waiting `initial_backoff_s` × 2ⁿ (capped)."""

    retries: int = 2
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (0-based): half fixed, half random."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def delay_s(self, code: grpc.StatusCode, attempt: int, deadline: Deadline) -> float | None:
        """Seconds to wait before retrying after `code`, or None to give up now."""
        if code not in RETRYABLE_CODES or attempt >= self.retries:
            return None
        delay_s = self.backoff_s(attempt)
        if delay_s + MIN_ATTEMPT_S >= deadline.remaining_s():
            return None
        return delay_s


class Attempts:
    """The attempts of one call: the time each may take, and whether a failure is retried."""

    def __init__(self, policy: RetryPolicy, deadline: Deadline) -> None:
        self._policy = policy
        self._deadline = deadline
        self._failed = 0

    def timeout_s(self) -> float:
        """The time the next attempt may take: what is left of the call's deadline."""
        return self._deadline.remaining_s()

    def backoff_s(self, error: grpc.RpcError, *, retryable: bool = True) -> float:
        """Seconds to wait before the next attempt, after `error` failed this one.

        `retryable=False` gives up whatever the status (a stream that already
        delivered a message is never retried, so no delta is ever repeated).

        Raises:
            SemcacheError: (the subclass for its status) when the call gives up.
        """
        code = error.code()
        retryable = retryable and not _server_said_no_retry(error)
        delay_s = self._policy.delay_s(code, self._failed, self._deadline) if retryable else None
        if delay_s is None:
            raise from_rpc_error(error) from error
        self._failed += 1
        return delay_s


def _server_said_no_retry(error: grpc.RpcError) -> bool:
    """Whether the service marked `error` as not worth retrying (`NO_RETRY_TRAILER`)."""
    trailing = getattr(error, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    return any(tuple(item) == NO_RETRY_TRAILER for item in metadata or ())
