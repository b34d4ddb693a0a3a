"""The blocking client: `SemcacheClient`, on grpc's sync stubs.

A thin twin of `service.client.aio`: request building, response conversion,
the retry decision and map-reduce's bookkeeping are shared (`_convert`,
`_call`, `_mapreduce`); only the waiting differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
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


class AnswerStream(Iterator[str]):
    """The text deltas of one streamed answer; `answer` is the whole Answer once it ends.

    Iterate it with `for`; afterwards `answer` holds the final metadata
    (`content` is the whole text). Use it as `with` (or call `close`) to
    cancel the call when leaving before the end.

    Raises (while iterating):
        SemcacheError: the stream failed; nothing partial was cached.
    """

    def __init__(self, events: Generator[pb.StreamCompleteResponse, None, None]) -> None:
        self.answer: Answer | None = None
        self._events = events
        self._deltas = self._read()

    def _read(self) -> Generator[str, None, None]:
        try:
            for event in self._events:
                item = _convert.stream_event(event)
                if isinstance(item, Answer):
                    self.answer = item
                else:
                    yield item
        finally:
            self._events.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str:
        return next(self._deltas)

    def text(self) -> str:
        """Read the stream to its end and return the whole answer's text."""
        return "".join(self._deltas)

    def close(self) -> None:
        """Stop reading and cancel the call (the server then stores nothing)."""
        self._deltas.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SemcacheClient:
    """A blocking semcache client; the same calls as `AsyncSemcacheClient`, minus `await`.

    Every call has a deadline (`timeout_s`, overridable per call) that covers
    its retries: UNAVAILABLE is retried up to `retries` times with exponential
    backoff and jitter, and never past the deadline. `tenant` is sent as
    `x-tenant-id`, `api_key` as `authorization: Bearer …`. Without
    `credentials` the channel is plaintext (a sidecar on localhost).
    Thread-safe: share one per process.

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
            grpc.insecure_channel(target)
            if credentials is None
            else grpc.secure_channel(target, credentials)
        )
        self._stub = pb_grpc.SemanticCacheServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls still in flight are cancelled."""
        self._channel.close()

    def _unary(
        self, method: Callable[..., Response], request: Any, timeout_s: float | None
    ) -> Response:
        deadline = self._options.deadline(timeout_s)
        attempt = 0
        while True:
            try:
                return method(
                    request, timeout=deadline.remaining_s(), metadata=self._options.metadata
                )
            except grpc.RpcError as error:
                delay_s = self._options.retry.delay_s(error.code(), attempt, deadline)
                if delay_s is None:
                    raise from_rpc_error(error) from error
            time.sleep(delay_s)
            attempt += 1

    def complete(
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
        return self.complete_with(params, timeout_s=timeout_s)

    def complete_with(self, params: CompleteParams, *, timeout_s: float | None = None) -> Answer:
        """`complete` for a prepared request, including the fields `complete` does not take."""
        request = _convert.complete_request(params)
        return _convert.answer(self._unary(self._stub.Complete, request, timeout_s))

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
    ) -> AnswerStream:
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
    ) -> AnswerStream:
        """`stream` for a prepared request."""
        request = _convert.complete_request(params)
        return AnswerStream(self._events(request, self._options.deadline(timeout_s)))

    def _events(
        self, request: pb.CompleteRequest, deadline: Deadline
    ) -> Generator[pb.StreamCompleteResponse, None, None]:
        attempt = 0
        while True:
            call = self._stub.StreamComplete(
                request, timeout=deadline.remaining_s(), metadata=self._options.metadata
            )
            received = False
            try:
                for event in call:
                    received = True
                    yield event
                return
            except grpc.RpcError as error:
                retry = self._options.retry
                delay_s = None if received else retry.delay_s(error.code(), attempt, deadline)
                if delay_s is None:
                    raise from_rpc_error(error) from error
            finally:
                call.cancel()
            time.sleep(delay_s)
            attempt += 1

    def batch_complete(
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
        response = self._unary(self._stub.BatchComplete, request, timeout_s)
        return _convert.batch_results(response)

    def map_reduce(
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
            batch = self.batch_complete(chunk, max_concurrency, timeout_s=timeout_s)
            results += _mapreduce.renumber(batch, first_index)
        return reduce(_mapreduce.answers(results, skip_failures))

    def stats(
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
        return _convert.stats(self._unary(self._stub.GetCacheStats, request, timeout_s))

    def invalidate(
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
        response = self._unary(self._stub.InvalidateCache, request, timeout_s)
        return int(response.deleted_entries)
