"""Identical in-flight work shares one call.

The first caller with a key starts the work as its own task; later callers
with the same key wait on that task. Each waiter is shielded from the others:
a caller that goes away (cancels) stops waiting, but the shared work carries
on for everyone else, and still finishes (and is cached) if all of them leave.

The shared work runs within its starter's time (`until`): a later caller
with more time to spare, whose shared work failed by running out of the
starter's time (`retry_on`), runs it again within its own, rather than
failing early for someone else's deadline (found from outside: a call with a
1 s deadline took a 20 s caller down with it).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    until: float  # its starter's deadline (`time.perf_counter()` seconds; inf: none)
    delivered: bool = False  # a caller has received the result


class Coalescer(Generic[T]):
    """Runs at most one `work()` per key at a time; concurrent callers share its result."""

    def __init__(self) -> None:
        self._in_flight: dict[str, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    async def run(
        self,
        key: str,
        work: Callable[[], Awaitable[T]],
        until: float = math.inf,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> tuple[T, bool]:
        """The result of the in-flight work for `key`, starting it (as this caller's
        `work`, within its deadline `until`) if there is none.

        Returns the result and whether this caller is the first to receive it: the
        starter, or, if the starter went away, the caller the result reached first
        (the one the work was done for, as far as anyone received it: a cost is
        saved only by each caller after it).

        Raises:
            Whatever the shared work raised, to every caller waiting on it; except
            `retry_on`, for a caller whose deadline is later than the work's starter's:
            that caller runs it again (see the module's note).
        """
        while True:
            flight = self._in_flight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._start(key, work, until)
            try:
                result = await asyncio.shield(flight.task)
            except retry_on:
                if leader or until <= flight.until:
                    raise
                continue
            first, flight.delivered = not flight.delivered, True
            return result, first

    def _start(self, key: str, work: Callable[[], Awaitable[T]], until: float) -> _Flight[T]:
        task = asyncio.create_task(self._run(work), name=f"coalesced:{key[:16]}")
        flight = _Flight(task, until)
        self._in_flight[key] = flight
        task.add_done_callback(lambda done: self._forget(key, flight))
        return flight

    @staticmethod
    async def _run(work: Callable[[], Awaitable[T]]) -> T:
        return await work()

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._in_flight.get(key) is flight:
            del self._in_flight[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved here, so a task nobody awaits logs no warning
