"""Runs an `Embedder` off the event loop, batching whatever requests are waiting.

When the model is free, every text that has queued up (at most
`max_batch_size`) is embedded in one call on a dedicated thread. A lone
request is embedded at once; it never waits for company.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.batching.micro import MicroBatcher
from service.embedding.base import Embedder, Vectors


class EmbeddingBatcher:
    """Async front of an `Embedder`: `await embed(text)` returns one unit vector."""

    def __init__(
        self,
        embedder: Embedder,
        max_batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._batcher: MicroBatcher[str, Vectors] = MicroBatcher(
            self._embed_batch,
            max_batch_size=max_batch_size,
            name="embedding-batcher",
            on_batch=on_batch,
        )

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
        return await self._batcher.submit(text)

    async def _embed_batch(self, texts: list[str]) -> list[Vectors]:
        loop = asyncio.get_running_loop()
        return list(await loop.run_in_executor(self._executor, self.embedder.embed, texts))

    async def close(self) -> None:
        """Stop the worker and release the embedding thread."""
        await self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
