"""A micro-batcher: whatever is waiting when the worker is free goes in one batch.

One worker task runs batches one after another. A lone item is run at once,
never held back waiting for company; under load, items that arrive while a
batch runs are taken together next time (at most `max_batch_size`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """`await submit(item)` returns `run_batch([... item ...])`'s answer for that item."""

    def __init__(
        self,
        run_batch: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch_size: int = 64,
        name: str = "micro-batcher",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._name = name
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        """The answer for `item`.

        Raises:
            Whatever `run_batch` raised for the batch this item was in.
        """
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=self._name)
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._answer([job for job in batch if not job[1].cancelled()])

    async def _answer(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
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
        """Stop the worker (waiting callers, if any, are cancelled with it)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
