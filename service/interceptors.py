"""The server interceptor: a request id per RPC, and errors mapped to gRPC statuses.

Handlers raise the exceptions of `service.errors`; this is the only place that
turns them into status codes (through `errors.status_for`). Anything
unexpected becomes INTERNAL and is logged with its traceback.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
import structlog

from service.errors import status_for

log = structlog.get_logger(__name__)

request_id_var: ContextVar[str] = ContextVar("request_id", default="")

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
ServerStream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


async def _abort(context: grpc.aio.ServicerContext, error: Exception, started: float) -> None:
    code = status_for(error)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("rpc failed", code=code.name, latency_ms=elapsed_ms)
        message = f"internal error (request id {request_id_var.get()})"
    else:
        log.info("rpc rejected", code=code.name, reason=str(error), latency_ms=elapsed_ms)
        message = str(error)
    await context.abort(code, message)


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds a request id to logs and responses, and maps errors to statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        request_id = _request_id(details)
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _bind(method: str, request_id: str) -> float:
    request_id_var.set(request_id)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
    return time.perf_counter()


def _wrap_unary(behaviour: Unary, method: str, request_id: str) -> Unary:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = _bind(method, request_id)
        try:
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, started)

    return wrapped


def _wrap_stream(behaviour: ServerStream, method: str, request_id: str) -> ServerStream:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = _bind(method, request_id)
        try:
            async for response in behaviour(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, started)

    return wrapped
