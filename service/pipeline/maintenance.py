"""Background upkeep of the cache: expired entries out, the vector index rebuilt."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from service.cache.semantic import SemanticCache

log = structlog.get_logger(__name__)


class Maintenance:
    """Every `interval_s`: delete expired entries, and let the store rebuild its
    index once `index_after_points` new points lack one. `start` and `aclose`
    bracket the loop; a failing round is a warning, and the next round runs."""

    def __init__(self, cache: SemanticCache, interval_s: float, index_after_points: int) -> None:
        self._cache = cache
        self._interval_s = interval_s
        self._index_after_points = index_after_points
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the loop in the background (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run_forever())

    async def aclose(self) -> None:
        """Stop the loop, waiting for a round in progress to be cancelled."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self) -> None:
        """One round of upkeep."""
        try:
            purged = await self._cache.purge_expired()
            indexing = await self._cache.maintain(self._index_after_points)
        except Exception as error:
            log.warning("cache upkeep failed", error=repr(error))
            return
        if purged:
            log.info("purged expired cache entries", entries=purged)
        if indexing:
            log.info("rebuilding the vector index; the embedded store answers nothing until done")

    async def _run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.run_once()
