"""The one core of both clients: their options, every call as data, a stream's state.

A unary call is a `Unary`: which RPC, the request, and how to read the
response. `ClientCore` holds what the two clients share (constructor,
channel, stub, `stream`); `SemcacheClient` and `AsyncSemcacheClient` add
only the sending and the waiting, each its own way, and so do their answer
streams on `StreamState`. Nothing here blocks or awaits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, Unpack

import grpc

from semcache_client import _convert
from semcache_client._proto.semcache.v1 import semcache_pb2 as pb
from semcache_client._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_client._retry import Attempts, Deadline, RetryPolicy
from semcache_client.types import (
    Answer,
    CacheStats,
    CompleteParams,
    EntryScope,
    FeedbackReceipt,
    FeedbackVerdict,
    InvalidateFilters,
    ItemFailure,
    RequestOptions,
)

T = TypeVar("T")

TENANT_KEY = "x-tenant-id"
# Answers of any realistic size, a BatchComplete's many together included: gRPC's
# default (4 MiB) failed a batch of 24 long answers after the service had made them.
MAX_RECEIVE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),)
AUTHORIZATION_KEY = "authorization"

Metadata = tuple[tuple[str, str], ...]
UnaryRpc = Literal[
    "Complete",
    "BatchComplete",
    "GetCacheStats",
    "InvalidateCache",
    "DeleteEntry",
    "PutEntries",
    "SubmitFeedback",
]


def metadata_value(name: str, value: str) -> str:
    """`value`, checked to be something gRPC can send as a metadata value.

    gRPC refuses any character outside printable ASCII (space to `~`) in a
    text metadata value, and reports it only as INTERNAL "Invalid metadata"
    once a call is made. The value itself is not repeated: it may be a secret.

    Raises:
        ValueError: `value` holds such a character; the message names `name`,
            the character and its position.
    """
    for position, char in enumerate(value):
        if not " " <= char <= "~":
            raise ValueError(
                f"{name} has {char!r} (U+{ord(char):04X}) at position {position}, which gRPC"
                " metadata cannot carry: use printable ASCII only (a key copied from a web page"
                " or a document may hold an ellipsis, a smart quote or a non-breaking space)"
            )
    return value


def call_metadata(tenant: str | None, api_key: str | None) -> Metadata:
    """The metadata sent with every call: the tenant and the bearer key, when set.

    Raises:
        ValueError: `tenant` or `api_key` holds a character gRPC metadata cannot carry.
    """
    metadata: list[tuple[str, str]] = []
    if tenant is not None:
        metadata.append((TENANT_KEY, metadata_value("tenant", tenant)))
    if api_key == "":
        raise ValueError(
            "api_key is empty: pass the key, or None when the service has no keys (an unset"
            ' environment variable read with a default of "" gives this)'
        )
    if api_key is not None:
        metadata.append((AUTHORIZATION_KEY, f"Bearer {metadata_value('api_key', api_key)}"))
    return tuple(metadata)


@dataclass(frozen=True)
class CallOptions:
    """What every call of one client shares: metadata, default timeout, retry policy."""

    metadata: Metadata
    timeout_s: float
    retry: RetryPolicy

    @classmethod
    def build(
        cls, tenant: str | None, api_key: str | None, timeout_s: float, retries: int
    ) -> CallOptions:
        """Validated options for a client's constructor arguments.

        Raises:
            ValueError: `timeout_s` is not positive, `retries` is negative, or
                `tenant` or `api_key` holds a character gRPC metadata cannot carry.
        """
        check_timeout(timeout_s)
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        return cls(call_metadata(tenant, api_key), timeout_s, RetryPolicy(retries))

    def attempts(self, timeout_s: float | None) -> Attempts:
        """The attempts of one call, `timeout_s` (else the client's default) from now.

        Raises:
            ValueError: `timeout_s` is given and not a positive number.
        """
        if timeout_s is None:
            return Attempts(self.retry, Deadline(self.timeout_s))
        return Attempts(self.retry, Deadline(check_timeout(timeout_s)))


def check_timeout(timeout_s: object) -> float:
    """`timeout_s` as a positive number of seconds.

    Raises:
        ValueError: it is not a number, or not positive (NaN included).
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    return float(timeout_s)


@dataclass(frozen=True)
class Unary(Generic[T]):
    """One unary call as data: the stub method `rpc`, its request, and `read` for its response."""

    rpc: UnaryRpc
    request: Any
    read: Callable[[Any], T]


def complete_call(params: CompleteParams) -> Unary[Answer]:
    """Complete, for `params`.

    Raises:
        ValueError: `params.cache_policy` names no policy.
    """
    return Unary("Complete", _convert.complete_request(params), _convert.answer)


def batch_call(
    requests: Sequence[CompleteParams], max_concurrency: int | None
) -> Unary[list[Answer | ItemFailure]]:
    """BatchComplete, for `requests` in order.

    Raises:
        ValueError: a request's `cache_policy` names no policy.
    """
    request = _convert.batch_request(requests, max_concurrency)
    return Unary("BatchComplete", request, _convert.batch_results)


def stats_call(namespace: str | None, all_tenants: bool) -> Unary[CacheStats]:
    """GetCacheStats, for the caller's tenant (one namespace, or every tenant)."""
    return Unary("GetCacheStats", _convert.stats_request(namespace, all_tenants), _convert.stats)


def invalidate_call(filters: InvalidateFilters) -> Unary[int]:
    """InvalidateCache, for the entries matching every filter given."""
    request = _convert.invalidate_request(filters)
    return Unary("InvalidateCache", request, _convert.deleted_entries)


def put_entries_call(
    entries: Sequence[tuple[str, str]], scope: EntryScope
) -> Unary[list[str | ItemFailure]]:
    """PutEntries, for (question, answer) pairs in `scope`."""
    request = _convert.put_entries_request(entries, scope)
    return Unary("PutEntries", request, _convert.put_results)


def delete_entry_call(entry_id: str) -> Unary[bool]:
    """DeleteEntry, for the entry an Answer's `entry_id` names."""
    request = pb.DeleteEntryRequest(entry_id=entry_id)
    return Unary("DeleteEntry", request, _convert.entry_deleted)


def feedback_call(
    entry_id: str | None, request_id: str | None, verdict: FeedbackVerdict
) -> Unary[FeedbackReceipt]:
    """SubmitFeedback, for the answer an Answer's `entry_id` or `request_id` names.

    Raises:
        ValueError: `verdict` is not "correct" or "wrong", or neither id is given.
    """
    request = _convert.feedback_request(entry_id, request_id, verdict)
    return Unary("SubmitFeedback", request, _convert.feedback_receipt)


@dataclass(frozen=True)
class StreamCall:
    """One StreamComplete call, not started: `start(timeout=…)` opens one attempt."""

    start: Callable[..., Any]
    attempts: Attempts


class StreamState:
    """What a stream of either client knows: the final `answer`, and whether it may retry.

    The call is retried (on UNAVAILABLE, within its deadline) only until the
    first message arrives, so no delta is ever repeated.
    """

    def __init__(self, call: StreamCall) -> None:
        self.answer: Answer | None = None
        self._call = call
        self._received = False

    def _open(self) -> Any:
        """Start one attempt, with what is left of the deadline."""
        return self._call.start(timeout=self._call.attempts.timeout_s())

    def _accept(self, event: pb.StreamCompleteResponse) -> str | None:
        """The text delta in `event`, or None for the final message (kept as `answer`)."""
        self._received = True
        item = _convert.stream_event(event)
        if isinstance(item, Answer):
            self.answer = item
            return None
        return item

    def _backoff_s(self, error: grpc.RpcError) -> float:
        """Seconds to wait before retrying after `error`.

        Raises:
            SemcacheError: the stream gives up (a message already came, or retries ran out).
        """
        return self._call.attempts.backoff_s(error, retryable=not self._received)


S = TypeVar("S", bound=StreamState)


class ClientCore(Generic[S]):
    """What both clients are built on: their arguments, channel, stub and calls.

    `stream` is the same for both (it starts nothing, so there is nothing to
    wait for): it returns the client's stream class `S`, which does the waiting.

    Every call has a deadline (`timeout_s`, overridable per call) that covers
    its retries: UNAVAILABLE is retried up to `retries` times with exponential
    backoff and jitter, and never past the deadline. `tenant` is sent as
    `x-tenant-id`, `api_key` as `authorization: Bearer …`. Without
    `credentials` the channel is plaintext (a sidecar on localhost).

    Raises:
        ValueError: `timeout_s` is not positive, `retries` is negative, or
            `tenant` or `api_key` holds a character gRPC metadata cannot carry
            (printable ASCII only).
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
        self._channel = self._open_channel(target, credentials)
        self._stub = pb_grpc.SemanticCacheServiceStub(self._channel)
        self._closed = False

    def _check_open(self) -> None:
        """Raises:
        ValueError: the client was closed (gRPC's own complaint names no client)."""
        if self._closed:
            raise ValueError(
                f"this {type(self).__name__} is closed: make a new one, or make calls"
                " inside its `with` block"
            )

    def _open_channel(self, target: str, credentials: grpc.ChannelCredentials | None) -> Any:
        raise NotImplementedError

    def _method(self, call: Unary[Any]) -> Callable[..., Any]:
        """The stub method of `call`, with this client's metadata bound.

        Raises:
            ValueError: the client is closed.
        """
        self._check_open()
        return functools.partial(getattr(self._stub, call.rpc), metadata=self._options.metadata)

    def _answer_stream(self, call: StreamCall) -> S:
        raise NotImplementedError

    def stream(
        self,
        prompt: str | None = None,
        *,
        timeout_s: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> S:
        """The answer as a stream of text deltas; `.answer` has the metadata at the end.

        The call starts on the first iteration (`for`, or `async for` on the
        async client). UNAVAILABLE is retried only before the first message
        arrives, so no delta is ever repeated.

        Raises:
            SemcacheError: (while iterating) as `complete`.
            ValueError: `cache_policy` names no policy.
        """
        return self.stream_with(CompleteParams(prompt, **options), timeout_s=timeout_s)

    def stream_with(self, params: CompleteParams, *, timeout_s: float | None = None) -> S:
        """`stream` for a prepared request; its deadline starts now.

        Raises:
            ValueError: `params.cache_policy` names no policy, or the client is closed.
        """
        self._check_open()
        request = _convert.complete_request(params)
        start = functools.partial(
            self._stub.StreamComplete, request, metadata=self._options.metadata
        )
        return self._answer_stream(StreamCall(start, self._options.attempts(timeout_s)))
