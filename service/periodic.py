"""Work repeated in the background at a fixed interval, until closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Periodic:
    """Runs `work` every `interval_s` (first after one interval), from `start` until
    `aclose`; `work` decides what a failure means (an exception ends the loop)."""

    def __init__(self, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        self._interval_s = interval_s
        self._work = work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run in the background (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run_forever())

    async def aclose(self) -> None:
        """Stop, waiting for a round in progress to be cancelled."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._work()
