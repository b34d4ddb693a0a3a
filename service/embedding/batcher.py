"""Runs an `Embedder` off the event loop, batching whatever requests are waiting.

When the model is free, every text that has queued up (at most
`max_batch_size`) is embedded in one call on a dedicated thread. A lone
request is embedded at once; it never waits for company.

The vectors of the last `memo_size` distinct texts are kept, so a text asked
again (a popular paraphrase that is served from its neighbour and so never
stored under its own words, a conversation's context shared by its
follow-ups) costs no model run. The kept vectors are read-only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
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
        memo_size: int = 0,
        on_embed: Callable[[str], None] | None = None,
        workers: int = 1,
    ) -> None:
        """`workers` batches may run at once, each on its own thread (the model is
        shared); `on_embed` is told where each vector came from: "model" or "memo"."""
        self.embedder = embedder
        self._memo: OrderedDict[str, Vectors] = OrderedDict()
        self._memo_size = memo_size
        self._on_embed = on_embed
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedder")
        self._batcher: MicroBatcher[str, Vectors] = MicroBatcher(
            self._embed_batch,
            max_batch_size=max_batch_size,
            workers=workers,
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
        vector = self._memo.get(text)
        if vector is not None:
            self._memo.move_to_end(text)
            self._count("memo")
            return vector
        vector = await self._batcher.submit(text)
        self._count("model")
        if self._memo_size:
            vector.flags.writeable = False  # shared by every later caller
            self._memo[text] = vector
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return vector

    def _count(self, source: str) -> None:
        if self._on_embed is not None:
            self._on_embed(source)

    async def _embed_batch(self, texts: list[str]) -> list[Vectors]:
        loop = asyncio.get_running_loop()
        return list(await loop.run_in_executor(self._executor, self.embedder.embed, texts))

    async def close(self) -> None:
        """Stop the worker and release the embedding thread."""
        await self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
