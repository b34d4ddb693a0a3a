"""Deadlines and retries, shared by the sync and the async client.

A call gets one deadline (`timeout_s` from now) covering every attempt. Only
UNAVAILABLE is retried, after an exponential backoff with jitter, and only
while the wait and a useful attempt still fit before the deadline. The two
clients run the same loop; they differ in how they sleep.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc

from service.client._convert import Metadata, call_metadata

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})

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


@dataclass(frozen=True)
class CallOptions:
    """What every call of one client shares: metadata, default timeout, retry policy."""

    metadata: Metadata
    timeout_s: float
    retry: RetryPolicy

    @classmethod
    def build(
        cls, tenant: str | None, api_key: str | None, timeout_s: float, retries: int
    ) -> CallOptions:
        """Validated options for a client's constructor arguments.

        Raises:
            ValueError: `timeout_s` is not positive, `retries` is negative, or
                `tenant` or `api_key` cannot be sent as gRPC metadata.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        return cls(call_metadata(tenant, api_key), timeout_s, RetryPolicy(retries))

    def deadline(self, timeout_s: float | None) -> Deadline:
        """The deadline of one call: `timeout_s` if given, else the client's default."""
        return Deadline(self.timeout_s if timeout_s is None else timeout_s)
