"""Hit times reach the store together, late by at most the interval, and never fail a hit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.cache.hit_times import HitTimes


class _Touches:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.fail = fail
        self.written = asyncio.Event()

    async def touch(self, point_ids: Sequence[str], now: float) -> None:
        if self.fail:
            raise OSError("disk gone")
        self.calls.append((sorted(point_ids), now))
        self.written.set()


async def test_hits_noted_together_are_written_in_one_call() -> None:
    store = _Touches()
    times = HitTimes(store, clock=lambda: 42.0, interval_s=3600)  # type: ignore[arg-type]
    for point_id in ("b", "a", "b"):
        times.note(point_id)
    assert store.calls == []  # nothing written while the hit is served
    await times.aclose()
    assert store.calls == [(["a", "b"], 42.0)]


async def test_the_timer_writes_without_being_asked() -> None:
    store = _Touches()
    times = HitTimes(store, clock=lambda: 1.0, interval_s=0.01)  # type: ignore[arg-type]
    times.note("a")
    async with asyncio.timeout(10):
        await store.written.wait()
    assert store.calls == [(["a"], 1.0)]
    await times.aclose()
    assert len(store.calls) == 1


async def test_a_failing_write_is_not_the_callers_problem() -> None:
    times = HitTimes(_Touches(fail=True), clock=lambda: 1.0, interval_s=3600)  # type: ignore[arg-type]
    times.note("a")
    await times.flush()  # logged, not raised
    await times.aclose()
