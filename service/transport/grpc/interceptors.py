"""The server interceptor: a request id per RPC, errors mapped to statuses, metrics,
and the bound on RPCs in flight.

Handlers raise the exceptions of `service.errors`; this is the only place that
turns them into status codes (through `status.status_for`). Anything
unexpected becomes INTERNAL and is logged with its traceback. A rate-limited
or overloaded call also carries a `google.rpc.RetryInfo` detail saying when to
retry.

Request bytes that are not the method's protobuf message (a truncated varint,
invalid UTF-8 in a string field) reach the handler as `Undecodable` and end
INVALID_ARGUMENT, instead of gRPC's UNKNOWN "Unexpected DecodeError".

Overload: gRPC accepts every call its transport receives and queues the ones
the event loop has not picked up yet; a call queued for 30 s is cancelled with
no message (`grpc.server_max_unrequested_time_in_server`). Under a burst the
loop is busy with the calls it already runs, so the queue grows and calls die
silently. `ServiceInterceptor(max_in_flight=…)` keeps the work bounded: past the
bound (`service.overload.InFlight`, shared with the HTTP door), a call of the
cache service is refused at once with RESOURCE_EXHAUSTED and a RetryInfo,
logged and counted. Health and reflection are never refused.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from service.auth import Principal, current_principal
from service.errors import (
    AuthenticationError,
    InvalidRequestError,
    OverloadedError,
    RateLimitedError,
    upstream_already_retried,
)
from service.metrics import Metrics
from service.overload import DEFAULT_MAX_IN_FLIGHT, InFlight
from service.transport.grpc.auth import PROBE_METHOD_PREFIXES, Authenticator
from service.transport.grpc.status import NO_RETRY_TRAILER, abort_with_retry_info, status_for
from service.validation import usable_request_id

log = structlog.get_logger(__name__)

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
# (cache status, model) of the RPC in progress, set by the servicer for metrics.
rpc_outcome_var: ContextVar[tuple[str, str]] = ContextVar("rpc_outcome", default=("none", ""))

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
ServerStream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any]

# gRPC core holds the calls the event loop has not picked up yet. Past 1,000 of
# them it drops new ones at random (all of them past 3,000), and it drops any
# that waited 30 s: each as a bare CANCELLED the service never sees. The loop
# picks up one call per turn, so a burst waits there. These options let a call
# wait (its own deadline still applies) until the interceptor can serve it or
# refuse it explicitly; only past this many waiting calls does gRPC drop any.
PENDING_CALLS_MAX = 20_000
PENDING_WAIT_MAX_S = 300
BACKLOG_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.server.max_pending_requests", PENDING_CALLS_MAX),
    ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_MAX),
    ("grpc.server_max_unrequested_time_in_server", PENDING_WAIT_MAX_S),
)


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "x-request-id" and isinstance(value, str) and usable_request_id(value):
            return value
    # 128 random bits as 32 hex digits, like uuid4().hex at a fifth of its cost
    return os.urandom(16).hex()


@dataclass(frozen=True)
class Undecodable:
    """Request bytes that did not parse as the method's message (`message` says why)."""

    message_type: str
    reason: str

    def error(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"the request is not a valid {self.message_type} message ({self.reason}); send the"
            " message serialized by a client generated from protos/semcache/v1/semcache.proto"
        )


def tolerant(deserialize: Deserializer | None) -> Deserializer | None:
    """`deserialize`, returning `Undecodable` instead of raising on malformed bytes."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as error:
            # "Error parsing message with type 'x': String field had bad UTF-8" -> the reason
            reason = str(error).rsplit("': ", 1)[-1] or type(error).__name__
            return Undecodable(message_type, reason)

    return parse


class _Call:
    """Book-keeping for one RPC: its request id, timing, and metrics on the way out."""

    def __init__(
        self,
        method: str,
        request_id: str,
        metrics: Metrics | None,
        gate: InFlight | None,
        caller: Principal | AuthenticationError | None = None,
        rpc: str | None = None,
    ) -> None:
        self.method = method
        self.caller = caller
        self.rpc = method.rsplit("/", 1)[-1] if rpc is None else rpc
        self.request_id = request_id
        self.metrics = metrics
        self.gate = gate
        self.started = time.perf_counter()

    def bind(self) -> None:
        self.started = time.perf_counter()
        request_id_var.set(self.request_id)
        rpc_outcome_var.set(("none", ""))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=self.request_id, rpc=self.method)

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)

    def done(self, code: grpc.StatusCode) -> None:
        """Count the finished RPC; its cache label is what the servicer noted, else "none"
        (a refused or failed RPC is no lookup: lookups are counted by the cache itself)."""
        if self.metrics is None:
            return
        cache_status, model = rpc_outcome_var.get()
        seconds = time.perf_counter() - self.started
        self.metrics.observe_request(self.rpc, code.name, cache_status, model, seconds)

    async def fail(self, context: grpc.aio.ServicerContext, error: Exception) -> None:
        code = status_for(error)
        self.done(code)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("rpc failed", code=code.name, latency_ms=self.elapsed_ms())
            await context.abort(code, f"internal error (request id {self.request_id})")
        log.info("rpc rejected", code=code.name, reason=str(error), latency_ms=self.elapsed_ms())
        if isinstance(error, RateLimitedError | OverloadedError):
            await abort_with_retry_info(context, error)
        if upstream_already_retried(error):
            await context.abort(code, str(error), trailing_metadata=NO_RETRY_TRAILER)
        await context.abort(code, str(error))


@dataclass(frozen=True)
class _Method:
    """What the interceptor works out once per method rather than per call."""

    handler: grpc.RpcMethodHandler
    rpc: str
    gate: InFlight | None
    deserializer: Deserializer | None


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds a request id to logs and responses, authenticates the caller (binding
    `current_principal`), maps errors to statuses, counts RPCs, and refuses calls
    past `max_in_flight` RPCs in flight (health and reflection aside).

    With no `authenticator` nobody is authenticated and handlers that need a
    caller fail closed (`require_principal`).
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        max_in_flight: int | InFlight = DEFAULT_MAX_IN_FLIGHT,
        authenticator: Authenticator | None = None,
    ) -> None:
        """`max_in_flight` is the bound, or the gate (shared with the HTTP door) to use."""
        self._metrics = metrics
        if isinstance(max_in_flight, int):
            max_in_flight = InFlight(max_in_flight, metrics)
        self._in_flight = max_in_flight
        self._authenticator = authenticator
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = self._method(details.method, handler)
        caller = None
        if self._authenticator is not None:
            metadata = details.invocation_metadata or ()
            caller = self._authenticator.caller(details.method, metadata)
        call = _Call(
            details.method, _request_id(details), self._metrics, method.gate, caller, method.rpc
        )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, call),
                request_deserializer=method.deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, call),
                request_deserializer=method.deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _method(self, name: str, handler: grpc.RpcMethodHandler) -> _Method:
        """The per-method part of wrapping `handler`, memoised while the server
        hands out the same handler for `name` (it does: handlers are registered once)."""
        method = self._methods.get(name)
        if method is None or method.handler is not handler:
            gate = None if name.startswith(PROBE_METHOD_PREFIXES) else self._in_flight
            deserializer = tolerant(handler.request_deserializer)
            method = _Method(handler, name.rsplit("/", 1)[-1], gate, deserializer)
            self._methods[name] = method
        return method


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _admit(call: _Call, request: Any) -> InFlight | None:
    """Bind the caller and take an in-flight slot for the RPC's body (the gate to
    leave afterwards, if any); refuse an unknown caller first, then undecodable bytes.

    Raises:
        AuthenticationError: keys are configured and the call has no known key.
        InvalidRequestError: the request bytes were not the method's message.
        OverloadedError: the server is at its bound on RPCs in flight.
    """
    caller = call.caller
    if caller is not None:
        if isinstance(caller, AuthenticationError):
            raise caller
        current_principal.set(caller)
    if isinstance(request, Undecodable):
        raise request.error()
    gate = call.gate
    if gate is not None:
        gate.enter(call.rpc)
    return gate


async def _settle(call: _Call, context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """Count an RPC that ended by `error` and re-raise it, or turn an error of the
    service into its status (`_Call.fail`, which aborts the RPC).

    Plain inline try/except rather than context managers: this wraps every RPC,
    and generator-based context managers cost more than the rest of it (issue 13).
    """
    if isinstance(error, grpc.aio.AbortError):
        call.done(_code_of(context))
    elif isinstance(error, asyncio.CancelledError):
        call.done(_cancelled_code(context))
    elif isinstance(error, Exception):
        await call.fail(context, error)
        return
    raise error


def _cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why gRPC cancelled the handler: the caller's deadline passed (the caller sees
    DEADLINE_EXCEEDED, and so must the dashboard), or the caller went away."""
    remaining_s = context.time_remaining()
    if remaining_s is not None and remaining_s <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _wrap_unary(behaviour: Unary, call: _Call) -> Unary:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call.bind()
        try:
            gate = _admit(call, request)
            try:
                response = await behaviour(request, context)
            finally:
                if gate is not None:
                    gate.leave()
        except BaseException as error:
            await _settle(call, context, error)
            return None
        call.done(grpc.StatusCode.OK)
        return response

    return wrapped


def _wrap_stream(behaviour: ServerStream, call: _Call) -> ServerStream:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call.bind()
        try:
            gate = _admit(call, request)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                if gate is not None:
                    gate.leave()
        except BaseException as error:
            await _settle(call, context, error)
            return
        call.done(grpc.StatusCode.OK)

    return wrapped
