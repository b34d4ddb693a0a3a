"""Runs an `Embedder` off the event loop, batching whatever requests are waiting.

One worker task owns the model. When it is free it takes every text that has
queued up (at most `max_batch_size`) and embeds them in one call on a
dedicated thread. A lone request is embedded at once; it never waits for company.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.embedding.base import Embedder, Vectors

_Job = tuple[str, "asyncio.Future[Vectors]"]


class EmbeddingBatcher:
    """Async front of an `Embedder`: `await embed(text)` returns one unit vector."""

    def __init__(
        self,
        embedder: Embedder,
        max_batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self._on_batch = on_batch
        self._max_batch_size = max_batch_size
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._worker: asyncio.Task[None] | None = None
        self.batches_total = 0
        self.texts_total = 0

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dim(self) -> int:
        return self.embedder.dim

    async def embed(self, text: str) -> Vectors:
        """The embedding of `text`, shape `(dim,)`.

        Raises:
            Whatever the embedder raised for the batch this text was in.
        """
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="embedding-batcher")
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((text, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._embed_batch([job for job in batch if not job[1].cancelled()])

    async def _embed_batch(self, batch: list[_Job]) -> None:
        if not batch:
            return
        texts = [text for text, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(self._executor, self.embedder.embed, texts)
        except Exception as error:  # handed to every waiter; the worker carries on
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches_total += 1
        self.texts_total += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)

    async def close(self) -> None:
        """Stop the worker and release the embedding thread."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=False, cancel_futures=True)
