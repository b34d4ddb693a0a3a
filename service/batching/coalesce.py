"""Identical in-flight work shares one call.

The first caller with a key starts the work as its own task; later callers
with the same key wait on that task. Each waiter is shielded from the others:
a caller that goes away (cancels) stops waiting, but the shared work carries
on for everyone else, and still finishes (and is cached) if all of them leave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Runs at most one `work()` per key at a time; concurrent callers share its result."""

    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of the in-flight work for `key`, starting it if there is none.

        Returns the result and whether this caller started the work (the leader).

        Raises:
            Whatever the shared work raised, to every caller waiting on it.
        """
        task = self._in_flight.get(key)
        leader = task is None
        if task is None:
            task = asyncio.create_task(self._run(work), name=f"coalesced:{key[:16]}")
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task), leader

    @staticmethod
    async def _run(work: Callable[[], Awaitable[T]]) -> T:
        return await work()

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a task nobody awaits logs no warning
