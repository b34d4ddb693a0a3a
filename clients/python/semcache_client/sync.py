"""The blocking client: `SemcacheClient`, on grpc's sync channel.

Requests, responses, options and retry decisions come from `_core`; this
module only sends and waits (`time.sleep` between attempts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
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


class AnswerStream(StreamState, Iterator[str]):
    """The text deltas of one streamed answer; `answer` is the whole Answer once it ends.

    Iterate it with `for`; afterwards `answer` holds the final metadata
    (`content` is the whole text). Use it as `with` (or call `close`) to
    cancel the call when leaving before the end. The call starts on the
    first iteration.

    Raises (while iterating):
        SemcacheError: the stream failed; nothing partial was cached.
    """

    def __init__(self, call: StreamCall) -> None:
        super().__init__(call)
        self._deltas = self._read()

    def _read(self) -> Generator[str, None, None]:
        while True:
            call = self._open()
            try:
                for event in call:
                    if (delta := self._accept(event)) is not None:
                        yield delta
                return
            except grpc.RpcError as error:
                delay_s = self._backoff_s(error)
            finally:
                call.cancel()
            time.sleep(delay_s)

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


class SemcacheClient(ClientCore[AnswerStream]):
    """A blocking semcache client; thread-safe: share one per process.

    `SemcacheClient(target, *, tenant=None, api_key=None, timeout_s=30.0,
    retries=2, credentials=None)`: see `ClientCore` for what each does.
    `AsyncSemcacheClient` has the same methods, awaited.

    Raises:
        ValueError: a bad argument (see `ClientCore`), e.g. an API key with a
            character gRPC metadata cannot carry.
    """

    def _open_channel(self, target: str, credentials: grpc.ChannelCredentials | None) -> Any:
        if credentials is None:
            return grpc.insecure_channel(target, options=_core.CHANNEL_OPTIONS)
        return grpc.secure_channel(target, credentials, options=_core.CHANNEL_OPTIONS)

    def _answer_stream(self, call: StreamCall) -> AnswerStream:
        return AnswerStream(call)

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
        """Close the channel; calls still in flight are cancelled, later ones refused."""
        self._closed = True
        self._channel.close()

    def _unary(self, call: Unary[T], timeout_s: float | None) -> T:
        attempts = self._options.attempts(timeout_s)
        method = self._method(call)
        while True:
            try:
                return call.read(method(call.request, timeout=attempts.timeout_s()))
            except grpc.RpcError as error:
                time.sleep(attempts.backoff_s(error))

    def complete(
        self,
        prompt: str | None = None,
        *,
        timeout_s: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> Answer:
        """One answer, from the cache or the provider (`RequestOptions` lists the options).

        Raises:
            InvalidArgument: the request is malformed (e.g. an empty prompt).
            Unavailable: the service or its provider failed, after the retries.
            DeadlineExceeded: no answer within `timeout_s`.
            SemcacheError: any other failure.
            ValueError: `cache_policy` names no policy.
        """
        return self.complete_with(CompleteParams(prompt, **options), timeout_s=timeout_s)

    def complete_with(self, params: CompleteParams, *, timeout_s: float | None = None) -> Answer:
        """`complete` for a prepared request.

        Raises:
            SemcacheError, ValueError: as `complete`.
        """
        return self._unary(_core.complete_call(params), timeout_s)

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
        return self._unary(_core.batch_call(requests, max_concurrency), timeout_s)

    def map_reduce(
        self,
        items: Iterable[T],
        map_prompt: Callable[[T], str],
        reduce: Callable[[list[Answer]], R],
        **options: Unpack[MapOptions],
    ) -> R:
        """Ask `map_prompt(item)` for every item concurrently, then `reduce` the answers.

        The prompts go `batch_size` at a time in BatchComplete calls, with the
        other fields of `template` (`MapOptions` lists the options); `reduce`
        gets the answers in the items' order.

        Raises:
            SemcacheError: a batch call failed, or (unless `skip_failures`,
                which drops failed items) the first item that failed.
            ValueError: `batch_size` is below 1.
        """
        concurrency, timeout_s = options.get("max_concurrency"), options.get("timeout_s")
        results: list[Answer | ItemFailure] = []
        for first_index, chunk in _mapreduce.batches(items, map_prompt, options):
            batch = self.batch_complete(chunk, concurrency, timeout_s=timeout_s)
            results += _mapreduce.renumber(batch, first_index)
        return reduce(_mapreduce.answers(results, options.get("skip_failures", False)))

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
        return self._unary(_core.stats_call(namespace, all_tenants), timeout_s)

    def invalidate(
        self, *, timeout_s: float | None = None, **filters: Unpack[InvalidateFilters]
    ) -> int:
        """Delete cached entries matching every filter given; returns how many went.

        `InvalidateFilters` lists the filters; `all=True` (and no filter)
        deletes every entry of the tenant.

        Raises:
            InvalidArgument: no filter and not `all`.
            PermissionDenied: `tenant` or `all_tenants` without admin rights.
        """
        return self._unary(_core.invalidate_call(filters), timeout_s)

    def put_entries(
        self,
        entries: Sequence[tuple[str, str]],
        *,
        timeout_s: float | None = None,
        **scope: Unpack[EntryScope],
    ) -> list[str | ItemFailure]:
        """Seed curated (question, answer) pairs: an entry id or ItemFailure per pair, in order.

        `EntryScope` lists the scope the answers stand for; one bad pair does not
        stop the others.

        Raises:
            SemcacheError: the whole call failed (e.g. InvalidArgument: no entries).
        """
        return self._unary(_core.put_entries_call(entries, scope), timeout_s)

    def delete_entry(self, entry_id: str, *, timeout_s: float | None = None) -> bool:
        """Delete the cache entry `entry_id` (an Answer's `entry_id`); True if it was there.

        Another tenant's entry is reported as missing (False) unless the key is an admin's.

        Raises:
            InvalidArgument: `entry_id` is not an entry id.
        """
        return self._unary(_core.delete_entry_call(entry_id), timeout_s)

    def submit_feedback(
        self,
        *,
        verdict: FeedbackVerdict,
        entry_id: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> FeedbackReceipt:
        """Tell the cache whether an answer was right ("correct") or not ("wrong").

        Name the answer by its Answer's `request_id` (best: it says what the answer
        was served at; it must have come from the same replica) or `entry_id`. A
        "wrong" on a semantic hit stops that entry from answering that
        neighbourhood at once.

        Raises:
            InvalidArgument: an id is malformed.
            NotFound: no such entry or request (or another tenant's entry).
            ValueError: `verdict` is not "correct" or "wrong", or no id is given.
        """
        return self._unary(_core.feedback_call(entry_id, request_id, verdict), timeout_s)
