"""Background upkeep of the cache: expired entries out, the vector index rebuilt."""

from __future__ import annotations

import structlog

from service.cache.semantic import SemanticCache
from service.periodic import Periodic

log = structlog.get_logger(__name__)


class Maintenance:
    """Every `interval_s`: delete expired entries, and let the store rebuild its
    index once `index_after_points` new points lack one. `start` and `aclose`
    bracket the loop; a failing round is a warning, and the next round runs."""

    def __init__(self, cache: SemanticCache, interval_s: float, index_after_points: int) -> None:
        self._cache = cache
        self._index_after_points = index_after_points
        self._loop = Periodic(interval_s, self.run_once)

    def start(self) -> None:
        """Run the loop in the background (once)."""
        self._loop.start()

    async def aclose(self) -> None:
        """Stop the loop, waiting for a round in progress to be cancelled."""
        await self._loop.aclose()

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
            log.info("rebuilding the vector index in a child process")
