"""The micro-batcher (a lone item runs at once; items that wait are run together), and
stream deltas joined while the reader is busy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from service.batching.deltas import join_waiting_text
from service.batching.micro import MicroBatcher
from service.errors import UpstreamError


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


async def test_inline_when_idle_runs_a_lone_item_in_the_callers_task() -> None:
    ran_in: list[asyncio.Task[object] | None] = []
    sizes: list[int] = []

    async def run(items: list[int]) -> list[int]:
        ran_in.append(asyncio.current_task())
        return [item + 1 for item in items]

    inline: MicroBatcher[int, int] = MicroBatcher(run, inline_when_idle=True, on_batch=sizes.append)
    handed: MicroBatcher[int, int] = MicroBatcher(run)
    caller = asyncio.current_task()
    assert await inline.submit(1) == 2 and ran_in[-1] is caller
    assert await handed.submit(1) == 2 and ran_in[-1] is not caller, "a worker ran it"
    assert sizes == [1] and inline.idle
    windowed: MicroBatcher[int, int] = MicroBatcher(run, inline_when_idle=True, max_wait_s=0.001)
    assert await windowed.submit(1) == 2 and ran_in[-1] is not caller, "the window holds"
    for batcher in (inline, handed, windowed):
        await batcher.close()


async def test_an_inline_batch_takes_the_workers_slot_and_others_wait_together() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await release.wait()
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=8, inline_when_idle=True)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    assert batches == [[1]] and not batcher.idle
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert batches == [[1]], "one worker: nothing ran beside the inline batch"
    release.set()
    assert await first == 1 and [await task for task in rest] == [2, 3, 4]
    assert batches == [[1], [2, 3, 4]]
    assert await batcher.submit(5) == 5 and batches[-1] == [5] and batcher.idle
    await batcher.close()


async def test_an_inline_failure_reaches_its_caller_and_the_batcher_stays_usable() -> None:
    async def run(items: list[str]) -> list[str]:
        if "bad" in items:
            raise RuntimeError("store down")
        return items

    batcher: MicroBatcher[str, str] = MicroBatcher(run, inline_when_idle=True)
    with pytest.raises(RuntimeError, match="store down"):
        await batcher.submit("bad")
    assert batcher.idle and await batcher.submit("good") == "good"
    await batcher.close()


# --- text deltas joined while the reader is busy ---------------------------------


async def test_waiting_text_deltas_are_joined_and_other_items_keep_their_place() -> None:
    async def source() -> AsyncGenerator[str | int, None]:
        for item in ("a", "b", "c", 1, "d", "e"):
            yield item

    assert [item async for item in join_waiting_text(source())] == ["abc", 1, "de"]


async def test_slow_deltas_go_out_one_by_one_as_they_arrive() -> None:
    async def source() -> AsyncGenerator[str, None]:
        for word in ("one ", "two ", "three"):
            await asyncio.sleep(0.01)
            yield word

    assert [item async for item in join_waiting_text(source())] == ["one ", "two ", "three"]


async def test_a_source_error_comes_after_the_text_before_it() -> None:
    async def source() -> AsyncGenerator[str, None]:
        yield "partial "
        yield "answer"
        raise UpstreamError("the stream broke")

    seen: list[str] = []
    with pytest.raises(UpstreamError, match="broke"):
        async for item in join_waiting_text(source()):
            seen.append(item)
    assert seen == ["partial answer"]


async def test_closing_the_reader_early_closes_the_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncGenerator[str, None]:
        try:
            while True:
                yield "tick "
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    events = join_waiting_text(source())
    assert (await anext(events)).startswith("tick")
    await events.aclose()
    assert closed.is_set()
