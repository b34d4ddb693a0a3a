"""The asyncio client: `AsyncSemcacheClient`, on grpc.aio.

The same calls as `semcache_client.sync`, built by the same `_core`; this
module only sends and awaits (`asyncio.sleep` between attempts). The methods'
full documentation is on `SemcacheClient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc

from semcache_client import _core, _mapreduce
from semcache_client._core import ClientCore, StreamCall, StreamState, Unary
from semcache_client.types import (
    Answer,
    CacheStats,
    CompleteParams,
    EntryScope,
    FeedbackReceipt,
    FeedbackVerdict,
    InvalidateFilters,
    ItemFailure,
    MapOptions,
    RequestOptions,
)

T = TypeVar("T")
R = TypeVar("R")


class AsyncAnswerStream(StreamState, AsyncIterator[str]):
    """The text deltas of one streamed answer, for `async for`; see `AnswerStream`.

    Use it as `async with` (or call `aclose`) to cancel the call when leaving
    before the end.

    Raises (while iterating):
        SemcacheError: the stream failed; nothing partial was cached.
    """

    def __init__(self, call: StreamCall) -> None:
        super().__init__(call)
        self._deltas = self._read()

    async def _read(self) -> AsyncGenerator[str, None]:
        while True:
            call = self._open()
            try:
                async for event in call:
                    if (delta := self._accept(event)) is not None:
                        yield delta
                return
            except grpc.aio.AioRpcError as error:
                delay_s = self._backoff_s(error)
            finally:
                call.cancel()
            await asyncio.sleep(delay_s)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        return await anext(self._deltas)

    async def text(self) -> str:
        """Read the stream to its end and return the whole answer's text."""
        return "".join([delta async for delta in self._deltas])

    async def aclose(self) -> None:
        """Stop reading and cancel the call (the server then stores nothing)."""
        await self._deltas.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncSemcacheClient(ClientCore[AsyncAnswerStream]):
    """A semcache client for asyncio code; open one per process and share it.

    The arguments and methods of `SemcacheClient`, awaited; `stream` returns
    an async iterator. Create it inside the event loop that uses it (a
    grpc.aio channel belongs to one loop).

    Raises:
        ValueError: a bad argument (see `ClientCore`), e.g. an API key with a
            character gRPC metadata cannot carry.
    """

    def _open_channel(self, target: str, credentials: grpc.ChannelCredentials | None) -> Any:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=_core.CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(target, credentials, options=_core.CHANNEL_OPTIONS)

    def _answer_stream(self, call: StreamCall) -> AsyncAnswerStream:
        return AsyncAnswerStream(call)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel; calls still in flight are cancelled, later ones refused."""
        self._closed = True
        await self._channel.close()

    async def _unary(self, call: Unary[T], timeout_s: float | None) -> T:
        attempts = self._options.attempts(timeout_s)
        method = self._method(call)
        while True:
            try:
                return call.read(await method(call.request, timeout=attempts.timeout_s()))
            except grpc.aio.AioRpcError as error:
                await asyncio.sleep(attempts.backoff_s(error))

    async def complete(
        self,
        prompt: str | None = None,
        *,
        timeout_s: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> Answer:
        """One answer, from the cache or the provider: `SemcacheClient.complete`, awaited.

        Raises:
            SemcacheError: (InvalidArgument, Unavailable, DeadlineExceeded...) as the sync one.
            ValueError: `cache_policy` names no policy.
        """
        return await self.complete_with(CompleteParams(prompt, **options), timeout_s=timeout_s)

    async def complete_with(
        self, params: CompleteParams, *, timeout_s: float | None = None
    ) -> Answer:
        """`complete` for a prepared request.

        Raises:
            SemcacheError, ValueError: as `complete`.
        """
        return await self._unary(_core.complete_call(params), timeout_s)

    async def batch_complete(
        self,
        requests: Sequence[CompleteParams],
        max_concurrency: int | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[Answer | ItemFailure]:
        """Many completions in one call, in order: `SemcacheClient.batch_complete`, awaited.

        Raises:
            SemcacheError: the whole call failed (e.g. InvalidArgument: too many items).
        """
        return await self._unary(_core.batch_call(requests, max_concurrency), timeout_s)

    async def map_reduce(
        self,
        items: Iterable[T],
        map_prompt: Callable[[T], str],
        reduce: Callable[[list[Answer]], R],
        **options: Unpack[MapOptions],
    ) -> R:
        """`reduce` over the answers to `map_prompt(item)`: `SemcacheClient.map_reduce`.

        Raises:
            SemcacheError: a batch call failed, or (unless `skip_failures`) an item did.
            ValueError: `batch_size` is below 1.
        """
        concurrency, timeout_s = options.get("max_concurrency"), options.get("timeout_s")
        results: list[Answer | ItemFailure] = []
        for first_index, chunk in _mapreduce.batches(items, map_prompt, options):
            batch = await self.batch_complete(chunk, concurrency, timeout_s=timeout_s)
            results += _mapreduce.renumber(batch, first_index)
        return reduce(_mapreduce.answers(results, options.get("skip_failures", False)))

    async def stats(
        self,
        namespace: str | None = None,
        *,
        all_tenants: bool = False,
        timeout_s: float | None = None,
    ) -> CacheStats:
        """Cache counters of the caller's tenant: `SemcacheClient.stats`, awaited.

        Raises:
            PermissionDenied: `all_tenants` without admin rights.
        """
        return await self._unary(_core.stats_call(namespace, all_tenants), timeout_s)

    async def invalidate(
        self, *, timeout_s: float | None = None, **filters: Unpack[InvalidateFilters]
    ) -> int:
        """Delete cached entries matching every filter: `SemcacheClient.invalidate`, awaited.

        Raises:
            InvalidArgument: no filter and not `all`.
            PermissionDenied: `tenant` or `all_tenants` without admin rights.
        """
        return await self._unary(_core.invalidate_call(filters), timeout_s)

    async def put_entries(
        self,
        entries: Sequence[tuple[str, str]],
        *,
        timeout_s: float | None = None,
        **scope: Unpack[EntryScope],
    ) -> list[str | ItemFailure]:
        """Seed curated (question, answer) pairs: `SemcacheClient.put_entries`, awaited.

        Raises:
            SemcacheError: the whole call failed (e.g. InvalidArgument: no entries).
        """
        return await self._unary(_core.put_entries_call(entries, scope), timeout_s)

    async def delete_entry(self, entry_id: str, *, timeout_s: float | None = None) -> bool:
        """Delete one cache entry: `SemcacheClient.delete_entry`, awaited.

        Raises:
            InvalidArgument: `entry_id` is not an entry id.
        """
        return await self._unary(_core.delete_entry_call(entry_id), timeout_s)

    async def submit_feedback(
        self,
        *,
        verdict: FeedbackVerdict,
        entry_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> FeedbackReceipt:
        """A verdict on an answer: `SemcacheClient.submit_feedback`, awaited.

        Raises:
            InvalidArgument: an id is malformed.
            NotFound: no such entry or request (or another tenant's entry).
            ValueError: `verdict` is not "correct" or "wrong", or no id is given.
        """
        return await self._unary(_core.feedback_call(entry_id, request_id, verdict), timeout_s)
