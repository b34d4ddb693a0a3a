"""When each entry was last served, for least-recently-used eviction.

A hit must not wait for a store write, and one write per hit would cost more
than the hit itself: hit times are collected and written together, at most
`HIT_WRITE_INTERVAL_S` late, in one store operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from service.cache.store import LookupStore

log = structlog.get_logger(__name__)

HIT_WRITE_INTERVAL_S = 0.5  # hit times are written together, at most this late


class HitTimes:
    """Collects served entries' ids and writes their hit time in one batch."""

    def __init__(
        self,
        store: LookupStore,
        clock: Callable[[], float],
        interval_s: float = HIT_WRITE_INTERVAL_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval_s = interval_s
        self._pending: set[str] = set()
        self._writer: asyncio.Task[None] | None = None

    def note(self, point_id: str) -> None:
        """Record a hit on `point_id`; it is written within `interval_s`."""
        self._pending.add(point_id)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_soon())

    async def flush(self) -> None:
        """Write every pending hit time now (eviction must see the latest hits).

        A failing write is a warning: the hits are lost, the cache goes on.
        """
        if not self._pending:
            return
        point_ids, self._pending = list(self._pending), set()
        try:
            await self._store.touch(point_ids, self._clock())
        except Exception as error:
            log.warning("cache hit times not recorded", entries=len(point_ids), error=repr(error))

    async def aclose(self) -> None:
        """Stop the timer and write what is pending."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.flush()

    async def _write_soon(self) -> None:
        await asyncio.sleep(self._interval_s)
        await self.flush()
