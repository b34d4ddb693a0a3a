"""Runs an `Embedder` on its own threads, batching whatever requests are waiting.

Each worker thread takes every text that has queued up (at most
`max_batch_size`, and at most what the embedder runs the model on at once:
`base.texts_per_run`), embeds them in one call, hands the vectors back to the
event loop, and goes straight on to what queued meanwhile. A lone request is
embedded at once; it never waits for company.

The int8 ONNX model runs one text at a time (its vectors must not depend on
batch mates), so its worker takes one text per call: a batch of 64 would hand
back its first vector only after the 64th run, and 64 callers would then all
come back at once while the model waited for new work (issue 13).

The threads pull their work themselves (issue 13): when a worker was a task on
the event loop handing batches to an executor, each batch's start waited for
the busy loop to come round to that task, while the model, the one thing that
bounds semantic hits per second, stood idle. Now the loop only enqueues a text
and, once per batch, sets the waiting futures.

A text may also be embedded on the event loop's own thread (`run_inline_when`):
when the batcher has nothing queued or running and the service says this is the
only call it is serving, there is nobody for the loop to serve meanwhile, so the
hand-off to a worker and the wake-up back are pure cost for a lone request (issue
13; `semcache bench ab --setting SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE=true`
measures it: less than the hand-off looks, as the machine's own wake-up after
idling falls on the model run either way). A call that arrives during that run
waits for it, at most one embedding; under concurrency the gate is shut and every
text goes to the workers. Off by default in the service (see the setting).

The vectors of the last `memo_size` distinct texts are kept, so a text asked
again (a popular paraphrase that is served from its neighbour and so never
stored under its own words, a conversation's context shared by its
follow-ups) costs no model run. The kept vectors are read-only.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable

import structlog

from service.embedding.base import Embedder, Vectors, texts_per_run

log = structlog.get_logger(__name__)

_Job = tuple[str, "asyncio.Future[Vectors]", asyncio.AbstractEventLoop]
_STOP = None  # one per worker thread: leave the loop


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
        shared); `on_embed` is told where each vector came from: "model" or "memo";
        `on_batch` each batch's size (on the event loop)."""
        if max_batch_size < 1 or workers < 1:
            raise ValueError("max_batch_size and workers must be >= 1")
        self.embedder = embedder
        per_run = texts_per_run(embedder)
        if per_run is not None:  # each run's vectors go back as soon as it ends
            max_batch_size = min(max_batch_size, per_run)
        self._memo: OrderedDict[str, Vectors] = OrderedDict()
        self._memo_size = memo_size
        self._on_embed = on_embed
        self._on_batch = on_batch
        self._max_batch_size = max_batch_size
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"embedder-{index}", daemon=True)
            for index in range(workers)
        ]
        self._started = False
        self._closed = False
        self._outstanding = 0  # texts handed to the workers and not yet answered
        self._inline_gate: Callable[[], bool] | None = None

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def run_inline_when(self, gate: Callable[[], bool] | None) -> None:
        """Embed on the caller's thread (the event loop's) when `gate()` says so and
        no text is queued or running; None: always on the workers."""
        self._inline_gate = gate

    async def embed(self, text: str) -> Vectors:
        """The embedding of `text`, shape `(dim,)`.

        Raises:
            Whatever the embedder raised for the batch this text was in;
            RuntimeError once the batcher is closed.
        """
        vector = self._memo.get(text)
        if vector is not None:
            self._memo.move_to_end(text)
            self._count("memo")
            return vector
        if self._may_run_inline():
            vector = self._embed_inline(text)
        else:
            vector = await self._submit(text)
        self._count("model")
        if self._memo_size:
            vector.flags.writeable = False  # shared by every later caller
            self._memo[text] = vector
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return vector

    def _may_run_inline(self) -> bool:
        gate = self._inline_gate
        return gate is not None and self._outstanding == 0 and not self._closed and gate()

    def _embed_inline(self, text: str) -> Vectors:
        """`text`'s vector, embedded here and now: nothing else is running the model."""
        vectors = self.embedder.embed([text])
        if self._on_batch is not None:
            self._on_batch(1)
        vector: Vectors = vectors[0]
        return vector

    def _count(self, source: str) -> None:
        if self._on_embed is not None:
            self._on_embed(source)

    def _submit(self, text: str) -> asyncio.Future[Vectors]:
        if self._closed:
            raise RuntimeError("the embedding batcher is closed")
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vectors] = loop.create_future()
        self._outstanding += 1
        self._jobs.put((text, future, loop))
        return future

    def _work(self) -> None:
        """A worker thread: take what is waiting, embed it, hand it back, repeat."""
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self._max_batch_size:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    self._jobs.put(_STOP)  # for this thread's next turn
                    break
                batch.append(job)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        texts = [text for text, _, _ in batch]
        try:
            vectors: Vectors | BaseException = self.embedder.embed(texts)
        except Exception as error:  # handed to every waiter; the thread carries on
            vectors = error
        by_loop: dict[asyncio.AbstractEventLoop, list[int]] = {}
        for index, (_, _, loop) in enumerate(batch):
            by_loop.setdefault(loop, []).append(index)
        for loop, indexes in by_loop.items():  # one loop, almost always: one wake-up
            try:
                loop.call_soon_threadsafe(self._deliver, batch, indexes, vectors)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.debug("embedding batch finished after its event loop closed")

    def _deliver(
        self, batch: list[_Job], indexes: list[int], vectors: Vectors | BaseException
    ) -> None:
        """On the event loop of the `indexes` jobs: answer each one still waiting."""
        self._outstanding -= len(indexes)
        for index in indexes:
            future = batch[index][1]
            if future.done():
                continue
            if isinstance(vectors, BaseException):
                future.set_exception(vectors)
            else:
                future.set_result(vectors[index])
        if self._on_batch is not None and not isinstance(vectors, BaseException):
            self._on_batch(len(indexes))

    async def close(self) -> None:
        """Stop the workers once they finish the batch in hand; texts still queued
        are refused (their callers get RuntimeError)."""
        if self._closed:
            return
        self._closed = True
        pending: list[_Job] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        self._outstanding -= len(pending)
        for _, future, _ in pending:
            if not future.done():
                future.set_exception(RuntimeError("the embedding batcher is closed"))
        for _ in self._threads:
            self._jobs.put(_STOP)
