"""The server interceptor: a request id per RPC, errors mapped to statuses, metrics.

Handlers raise the exceptions of `service.errors`; this is the only place that
turns them into status codes (through `errors.status_for`). Anything
unexpected becomes INTERNAL and is logged with its traceback. A rate-limited
call also carries a `google.rpc.RetryInfo` detail saying when to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
import structlog

from service.errors import RateLimitedError, status_for
from service.metrics import Metrics
from service.ratelimit import abort_with_retry_info

log = structlog.get_logger(__name__)

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
# (cache status, model) of the RPC in progress, set by the servicer for metrics.
rpc_outcome_var: ContextVar[tuple[str, str]] = ContextVar("rpc_outcome", default=("none", ""))

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
ServerStream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class _Call:
    """Book-keeping for one RPC: its request id, timing, and metrics on the way out."""

    def __init__(self, method: str, request_id: str, metrics: Metrics | None) -> None:
        self.method = method
        self.rpc = method.rsplit("/", 1)[-1]
        self.request_id = request_id
        self.metrics = metrics
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
        if self.metrics is None:
            return
        cache_status, model = rpc_outcome_var.get()
        if code is not grpc.StatusCode.OK and cache_status == "none":
            cache_status = "error"
        seconds = time.perf_counter() - self.started
        self.metrics.observe_request(self.rpc, code.name, cache_status, model, seconds)

    async def fail(self, context: grpc.aio.ServicerContext, error: Exception) -> None:
        code = status_for(error)
        self.done(code)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("rpc failed", code=code.name, latency_ms=self.elapsed_ms())
            await context.abort(code, f"internal error (request id {self.request_id})")
        log.info("rpc rejected", code=code.name, reason=str(error), latency_ms=self.elapsed_ms())
        if isinstance(error, RateLimitedError):
            await abort_with_retry_info(context, error)
        await context.abort(code, str(error))


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds a request id to logs and responses, maps errors to statuses, counts RPCs."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        call = _Call(details.method, _request_id(details), self._metrics)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, call),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, call),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


@contextlib.asynccontextmanager
async def _handled(call: _Call, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Count the RPC's outcome, and turn an error raised inside into its status."""
    try:
        yield
    except grpc.aio.AbortError:
        call.done(_code_of(context))
        raise
    except asyncio.CancelledError:
        call.done(grpc.StatusCode.CANCELLED)
        raise
    except Exception as error:
        await call.fail(context, error)
    else:
        call.done(grpc.StatusCode.OK)


def _wrap_unary(behaviour: Unary, call: _Call) -> Unary:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call.bind()
        async with _handled(call, context):
            return await behaviour(request, context)

    return wrapped


def _wrap_stream(behaviour: ServerStream, call: _Call) -> ServerStream:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call.bind()
        async with _handled(call, context):
            async for response in behaviour(request, context):
                yield response

    return wrapped
