"""A micro-batcher: whatever is waiting when a worker is free goes in one batch.

Worker tasks (one by default) run batches. A lone item is run at once by a
free worker, never held back waiting for company, unless a collection window
(`max_wait_s`) is set; under load, items that arrive while every worker is
busy are taken together by the next free one (at most `max_batch_size`).

With `inline_when_idle`, an item submitted while nothing is queued or running is
run as a batch of one in the caller's own task: no hand-off to a worker and back,
two turns of the event loop saved (about 0.15 ms of a semantic hit's search,
measured on 2 cores, issue 13). It takes a worker's slot while it runs, so at most
`workers` batches run at once either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

_Job = tuple[In, "asyncio.Future[Out]"]


class MicroBatcher(Generic[In, Out]):
    """`await submit(item)` returns `run_batch([... item ...])`'s answer for that item.

    Args:
        run_batch: answers a batch, one result per item, in order.
        max_batch_size: most items in one batch.
        workers: batches that may run at once.
        max_wait_s: after taking its first item, how long a worker waits for
            more before it runs a batch that is not full (0: never waits).
        on_batch: called with each answered batch's size.
        inline_when_idle: run a lone item in the caller's task when idle (see the
            module's note); ignored with a collection window.
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch_size: int = 64,
        workers: int = 1,
        max_wait_s: float = 0.0,
        name: str = "micro-batcher",
        on_batch: Callable[[int], None] | None = None,
        inline_when_idle: bool = False,
    ) -> None:
        if max_batch_size < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and workers must be >= 1, max_wait_s >= 0")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._name = name
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job[In, Out]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None] | None] = [None] * workers
        self._busy = 0
        self._slots = asyncio.Semaphore(workers)  # one per batch running
        self._inline = inline_when_idle and max_wait_s == 0

    @property
    def idle(self) -> bool:
        """Nothing is queued and no batch is running."""
        return self._queue.empty() and self._busy == 0

    async def submit(self, item: In) -> Out:
        """The answer for `item`.

        Raises:
            Whatever `run_batch` raised for the batch this item was in.
        """
        if self._inline and self.idle:
            return await self._run_alone(item)
        self._start_workers()
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    def _start_workers(self) -> None:
        for index, worker in enumerate(self._workers):
            if worker is None or worker.done():
                self._workers[index] = asyncio.create_task(self._run(), name=self._name)

    async def _run_alone(self, item: In) -> Out:
        self._busy += 1
        try:
            async with self._slots:  # free at once: when idle, no worker holds one
                (result,) = await self._run_batch([item])
        finally:
            self._busy -= 1
        if self._on_batch is not None:
            self._on_batch(1)
        return result

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self._busy += 1  # from here the batcher is not idle, so no item runs inline
            try:
                async with self._slots:
                    await self._fill(batch)
                    await self._answer([job for job in batch if not job[1].cancelled()])
            finally:
                self._busy -= 1

    async def _fill(self, batch: list[_Job[In, Out]]) -> None:
        """Add what is waiting (and, within the window, what arrives) up to the size bound."""
        self._drain_into(batch)
        if self._max_wait_s <= 0 or len(batch) >= self._max_batch_size:
            return
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while len(batch) < self._max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return
            self._drain_into(batch)

    def _drain_into(self, batch: list[_Job[In, Out]]) -> None:
        while len(batch) < self._max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _answer(self, batch: list[_Job[In, Out]]) -> None:
        if not batch:
            return
        try:
            results = await self._run_batch([item for item, _ in batch])
        except Exception as error:  # handed to every waiter; the worker carries on
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop the workers (waiting callers, if any, are cancelled with them)."""
        running = [worker for worker in self._workers if worker is not None]
        for worker in running:
            worker.cancel()
        for worker in running:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
