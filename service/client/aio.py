"""The asyncio client: `AsyncSemcacheClient`, on grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.client import _convert, _mapreduce
from service.client._call import CallOptions, Deadline
from service.client.errors import from_rpc_error
from service.client.types import (
    Answer,
    CachePolicy,
    CacheStats,
    CompleteParams,
    ItemFailure,
    Message,
)

T = TypeVar("T")
R = TypeVar("R")
Response = TypeVar("Response")


class AsyncAnswerStream(AsyncIterator[str]):
    """The text deltas of one streamed answer; `answer` is the whole Answer once it ends.

    Iterate it with `async for`; afterwards `answer` holds the final metadata
    (`content` is the whole text). Use it as `async with` (or call `aclose`)
    to cancel the call when leaving before the end.

    Raises (while iterating):
        SemcacheError: the stream failed; nothing partial was cached.
    """

    def __init__(self, events: AsyncGenerator[pb.StreamCompleteResponse, None]) -> None:
        self.answer: Answer | None = None
        self._events = events
        self._deltas = self._read()

    async def _read(self) -> AsyncGenerator[str, None]:
        try:
            async for event in self._events:
                item = _convert.stream_event(event)
                if isinstance(item, Answer):
                    self.answer = item
                else:
                    yield item
        finally:
            await self._events.aclose()

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


class AsyncSemcacheClient:
    """A semcache client for asyncio code; open one per process and share it.

    Every call has a deadline (`timeout_s`, overridable per call) that covers
    its retries: UNAVAILABLE is retried up to `retries` times with exponential
    backoff and jitter, and never past the deadline. `tenant` is sent as
    `x-tenant-id`, `api_key` as `authorization: Bearer …`. Without
    `credentials` the channel is plaintext (a sidecar on localhost).
    Create it inside the event loop that uses it (grpc.aio channels belong to
    one loop).

    Raises:
        ValueError: `timeout_s` is not positive or `retries` is negative.
    """

    def __init__(
        self,
        target: str,
        *,
        tenant: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._options = CallOptions.build(tenant, api_key, timeout_s, retries)
        self._channel = (
            grpc.aio.insecure_channel(target)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials)
        )
        self._stub = pb_grpc.SemanticCacheServiceStub(self._channel)

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
        """Close the channel; calls still in flight are cancelled."""
        await self._channel.close()

    async def _unary(
        self,
        method: Callable[..., Awaitable[Response]],
        request: Any,
        timeout_s: float | None,
    ) -> Response:
        deadline = self._options.deadline(timeout_s)
        attempt = 0
        while True:
            try:
                return await method(
                    request, timeout=deadline.remaining_s(), metadata=self._options.metadata
                )
            except grpc.aio.AioRpcError as error:
                delay_s = self._options.retry.delay_s(error.code(), attempt, deadline)
                if delay_s is None:
                    raise from_rpc_error(error) from error
            await asyncio.sleep(delay_s)
            attempt += 1

    async def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Message | tuple[str, str]] | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        namespace: str | None = None,
        cache_policy: CachePolicy | str = CachePolicy.DEFAULT,
        ttl_s: int | None = None,
        similarity_min: float | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        """One answer, from the cache or the provider (see `CompleteParams` for the fields).

        Raises:
            InvalidArgument: the request is malformed (e.g. an empty prompt).
            Unavailable: the service or its provider failed, after the retries.
            DeadlineExceeded: no answer within `timeout_s`.
            SemcacheError: any other failure.
            ValueError: `cache_policy` names no policy.
        """
        params = CompleteParams(
            prompt=prompt,
            messages=messages,
            model=model,
            temperature=temperature,
            max_tokens=max_tokens,
            namespace=namespace,
            cache_policy=cache_policy,
            ttl_s=ttl_s,
            similarity_min=similarity_min,
        )
        return await self.complete_with(params, timeout_s=timeout_s)

    async def complete_with(
        self, params: CompleteParams, *, timeout_s: float | None = None
    ) -> Answer:
        """`complete` for a prepared request, including the fields `complete` does not take."""
        request = _convert.complete_request(params)
        return _convert.answer(await self._unary(self._stub.Complete, request, timeout_s))

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Message | tuple[str, str]] | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        namespace: str | None = None,
        cache_policy: CachePolicy | str = CachePolicy.DEFAULT,
        ttl_s: int | None = None,
        similarity_min: float | None = None,
        timeout_s: float | None = None,
    ) -> AsyncAnswerStream:
        """The answer as a stream of text deltas; `.answer` has the metadata at the end.

        The call starts on the first iteration. UNAVAILABLE is retried only
        before the first message arrives, so no delta is ever repeated.
        Errors are raised while iterating, as for `complete`.
        """
        params = CompleteParams(
            prompt=prompt,
            messages=messages,
            model=model,
            temperature=temperature,
            max_tokens=max_tokens,
            namespace=namespace,
            cache_policy=cache_policy,
            ttl_s=ttl_s,
            similarity_min=similarity_min,
        )
        return self.stream_with(params, timeout_s=timeout_s)

    def stream_with(
        self, params: CompleteParams, *, timeout_s: float | None = None
    ) -> AsyncAnswerStream:
        """`stream` for a prepared request."""
        request = _convert.complete_request(params)
        return AsyncAnswerStream(self._events(request, self._options.deadline(timeout_s)))

    async def _events(
        self, request: pb.CompleteRequest, deadline: Deadline
    ) -> AsyncGenerator[pb.StreamCompleteResponse, None]:
        attempt = 0
        while True:
            call = self._stub.StreamComplete(
                request, timeout=deadline.remaining_s(), metadata=self._options.metadata
            )
            received = False
            try:
                async for event in call:
                    received = True
                    yield event
                return
            except grpc.aio.AioRpcError as error:
                retry = self._options.retry
                delay_s = None if received else retry.delay_s(error.code(), attempt, deadline)
                if delay_s is None:
                    raise from_rpc_error(error) from error
            finally:
                call.cancel()
            await asyncio.sleep(delay_s)
            attempt += 1

    async def batch_complete(
        self,
        requests: Sequence[CompleteParams],
        max_concurrency: int | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[Answer | ItemFailure]:
        """Many completions in one call: one Answer or ItemFailure per request, in order.

        One failing item does not fail the others; the service runs at most
        `max_concurrency` items at once (None: its default).

        Raises:
            SemcacheError: the whole call failed (e.g. InvalidArgument: too many items).
        """
        request = _convert.batch_request(requests, max_concurrency)
        response = await self._unary(self._stub.BatchComplete, request, timeout_s)
        return _convert.batch_results(response)

    async def map_reduce(
        self,
        items: Iterable[T],
        map_prompt: Callable[[T], str],
        reduce: Callable[[list[Answer]], R],
        *,
        template: CompleteParams | None = None,
        max_concurrency: int | None = None,
        batch_size: int = _mapreduce.DEFAULT_BATCH_SIZE,
        skip_failures: bool = False,
        timeout_s: float | None = None,
    ) -> R:
        """Ask `map_prompt(item)` for every item concurrently, then `reduce` the answers.

        Each prompt is sent with `template`'s other fields (model, namespace,
        sampling...), `batch_size` items per BatchComplete call, each call with
        its own `timeout_s`. `reduce` gets the answers in the items' order.

        Raises:
            SemcacheError: a batch call failed, or (unless `skip_failures`,
                which drops failed items) the first item that failed.
        """
        requests = _mapreduce.map_requests(items, map_prompt, template)
        results: list[Answer | ItemFailure] = []
        for first_index, chunk in _mapreduce.chunks(requests, batch_size):
            batch = await self.batch_complete(chunk, max_concurrency, timeout_s=timeout_s)
            results += _mapreduce.renumber(batch, first_index)
        return reduce(_mapreduce.answers(results, skip_failures))

    async def stats(
        self,
        namespace: str | None = None,
        *,
        all_tenants: bool = False,
        timeout_s: float | None = None,
    ) -> CacheStats:
        """Cache counters of the caller's tenant (`namespace`: count only its entries).

        Raises:
            PermissionDenied: `all_tenants` without admin rights.
        """
        request = pb.GetCacheStatsRequest(namespace=namespace or "", all_tenants=all_tenants)
        return _convert.stats(await self._unary(self._stub.GetCacheStats, request, timeout_s))

    async def invalidate(
        self,
        *,
        namespace: str | None = None,
        model: str | None = None,
        older_than_s: int | None = None,
        all: bool = False,
        tenant: str | None = None,
        all_tenants: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        """Delete cached entries matching every filter given; returns how many went.

        `all=True` (and no filter) deletes every entry of the tenant; `tenant`
        and `all_tenants` act on other tenants (admin only).

        Raises:
            InvalidArgument: no filter and not `all`.
            PermissionDenied: `tenant` or `all_tenants` without admin rights.
        """
        request = _convert.invalidate_request(
            namespace, model, older_than_s, all, tenant, all_tenants
        )
        response = await self._unary(self._stub.InvalidateCache, request, timeout_s)
        return int(response.deleted_entries)
