"""What lets a call through to a provider, and when: retry backoff, circuit breaker,
concurrency limit.

Each is a small object with no I/O of its own, so `service.llm.resilience`
composes them and tests drive them with a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from service.errors import UpstreamBusyError, UpstreamTimeoutError

Clock = Callable[[], float]
"""Monotonic seconds, e.g. `time.monotonic`; injectable so tests control time."""

BreakerState = Literal["closed", "open", "half_open"]


class QueueTimeoutError(UpstreamTimeoutError):
    """The caller's deadline ran out while waiting for a free slot at a provider."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring the provider's Retry-After.

    Retry `n` (0-based) waits a uniform random time in
    `[0, min(max_delay_s, base_delay_s * 2**n)]`, but never less than the
    provider's Retry-After. `max_attempts` counts the first try, per model.

    Raises:
        ValueError: `max_attempts < 1` or a negative delay.
    """

    max_attempts: int = 3
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("retry delays must be >= 0")

    def delay_s(
        self, retry: int, retry_after_s: float | None, uniform: Callable[[], float]
    ) -> float:
        """Seconds to wait before retry `retry`; `uniform` draws from [0, 1)."""
        ceiling_s = min(self.max_delay_s, self.base_delay_s * 2.0**retry)
        return max(ceiling_s * uniform(), retry_after_s or 0.0)


class CircuitBreaker:
    """Stops calls to a provider that keeps failing, so callers fail over at once.

    Closed: every call goes through; `failure_threshold` consecutive failures
    open it. Open: every call is refused for `cooldown_s`. Half-open (after
    the cool-down): exactly one trial call goes through; its success closes
    the breaker, its failure opens it for another cool-down.
    """

    def __init__(self, failure_threshold: int, cooldown_s: float, clock: Clock = time.monotonic):
        if failure_threshold < 1 or cooldown_s < 0:
            raise ValueError("a breaker needs failure_threshold >= 1 and cooldown_s >= 0")
        self._failure_threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._last_cause: BaseException | None = None

    @property
    def state(self) -> BreakerState:
        """`closed`, `open`, or `half_open` once the cool-down has passed."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._cooldown_s:
            return "half_open"
        return "open"

    def open_for_s(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when not open)."""
        if self._opened_at is None:
            return 0.0
        return max(self._opened_at + self._cooldown_s - self._clock(), 0.0)

    def try_acquire(self) -> bool:
        """Whether a call may go now; in half-open, True for the one trial only.

        A True answer must be followed by exactly one `record_success`,
        `record_failure` or `release`.
        """
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        """The provider answered: close the breaker and forget past failures."""
        self._last_cause = None
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self, cause: BaseException | None = None) -> None:
        """The provider failed: count it, and (re)open when the threshold is reached
        or a half-open trial failed.

        `cause` is the error the call failed with. Calls that fail with the very
        same error object (the members of one grouped upstream request) are one
        failure of the provider, and count once.
        """
        trial_failed = self._trial_in_flight
        self._trial_in_flight = False
        counted = cause is None or cause is not self._last_cause
        self._last_cause = cause
        if counted:
            self._failures += 1
        if trial_failed or (counted and self._failures >= self._failure_threshold):
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call proved nothing either way (cancelled, or never sent)."""
        self._trial_in_flight = False


class ConcurrencyLimit:
    """At most `max_concurrency` calls in flight and `max_queue` waiting for a slot.

    A call beyond both is refused at once with `UpstreamBusyError` instead of
    joining an ever longer queue; time spent waiting counts against the
    caller's deadline.
    """

    def __init__(self, name: str, max_concurrency: int, max_queue: int) -> None:
        self._name = name
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_queue = max_queue
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Calls now waiting for a slot."""
        return self._waiting

    def slot(self, timeout_s: float) -> _Slot:
        """`async with` it to hold one slot for the body, waiting at most `timeout_s`.

        A plain object rather than a generator-based context manager, and a free slot
        taken without setting a timer: every upstream call holds one (about 20 us a
        call before, measured on 2 cores; issue 13).

        Raises (on entering):
            UpstreamBusyError: every slot is taken and the queue is full.
            QueueTimeoutError: no slot came free within `timeout_s`.
        """
        return _Slot(self, timeout_s)

    def release(self) -> None:
        """Give back a slot taken by entering `slot`."""
        self._slots.release()

    async def acquire(self, timeout_s: float) -> None:
        """Take a slot (see `slot`)."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: taken at once, never suspends
            return
        if self._waiting >= self._max_queue:
            raise UpstreamBusyError(
                f"upstream provider {self._name} is busy: every slot is taken and "
                f"{self._waiting} calls are already waiting; retry later"
            )
        self._waiting += 1
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._slots.acquire()
        except TimeoutError:
            raise QueueTimeoutError(
                f"the deadline ran out after {timeout_s:.3f}s waiting for a free slot at "
                f"upstream provider {self._name}"
            ) from None
        finally:
            self._waiting -= 1


class _Slot:
    """One `ConcurrencyLimit.slot`: taken on entering, given back on leaving."""

    __slots__ = ("_limit", "_timeout_s")

    def __init__(self, limit: ConcurrencyLimit, timeout_s: float) -> None:
        self._limit = limit
        self._timeout_s = timeout_s

    async def __aenter__(self) -> None:
        await self._limit.acquire(self._timeout_s)

    async def __aexit__(self, *exc_info: object) -> None:
        self._limit.release()
