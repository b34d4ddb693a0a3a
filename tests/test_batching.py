"""The micro-batcher: a lone item runs at once; items that wait are run together."""

from __future__ import annotations

import asyncio

import pytest

from service.batching.micro import MicroBatcher


async def test_a_lone_item_runs_at_once_and_waiting_items_share_the_next_batch() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await release.wait()  # hold the first batch while others queue up
        return [item * 10 for item in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=4)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert batches == [[1]], "the lone item did not wait for company"
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 8)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40, 50, 60, 70]
    assert batches == [[1], [2, 3, 4, 5], [6, 7]], "bounded by max_batch_size, in order"
    await batcher.close()


async def test_a_failing_batch_fails_its_callers_and_the_worker_carries_on() -> None:
    async def run(items: list[str]) -> list[str]:
        if "bad" in items:
            raise RuntimeError("store down")
        return items

    batcher: MicroBatcher[str, str] = MicroBatcher(run)
    with pytest.raises(RuntimeError, match="store down"):
        await batcher.submit("bad")
    assert await batcher.submit("good") == "good"
    await batcher.close()
