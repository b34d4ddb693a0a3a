"""What every HTTP request goes through: a request id, the caller, errors, logs and metrics.

The HTTP twin of the gRPC interceptors. `door_middleware` gives each request
a request id (the caller's `x-request-id` when it sends a sane one), binds it
to structlog, turns an error a handler raises into an OpenAI-shaped error
body through `errors.http_error_for`, and counts the request in the same
Prometheus series as gRPC (`semcache_requests_total`, `..._duration_seconds`)
under an `rpc` label of its own (`http_chat_completions`, ...). Unexpected
errors are 500s that name the request id, logged with their traceback. A call
of a bounded route (chat, `/v1/semcache/`) holds a slot of the bound on calls
in flight that the gRPC door counts against too (`service.overload`), once its
caller is known: past the bound it is a 503 with Retry-After.

Callers authenticate as on the gRPC port: `Authorization: Bearer <key>` (or
`x-api-key`) from the same keys file, the tenant taken from the key; with no
keys file (open mode, loopback only) `x-tenant-id` names the tenant and every
caller is an admin.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import ClientConnectionError, web
from aiohttp.http_exceptions import HttpProcessingError

from service.app import App
from service.auth import KeyRing, Principal, principal_for
from service.overload import InFlight
from service.transport.http.errors import (
    INTERNAL,
    BadBodyEncodingError,
    error_body,
    http_error_for,
    retry_headers,
)
from service.transport.http.replies import REQUEST_ID_HEADER
from service.validation import usable_request_id

log = structlog.get_logger(__name__)

BODY_TIMEOUT_S = 30.0  # a request's whole body, read before a bounded call takes a slot
# Bodies up to this size are read (the server's `client_max_size`); larger ones are
# refused with 413 before parsing.
MAX_BODY_BYTES = 4 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HttpCall:
    """Book-keeping for one HTTP request: its id, caller, timing and outcome.

    `rpc` is the metrics label (None: not counted); a handler sets `cache` and
    `model` once it knows how the request was served.
    """

    request_id: str
    rpc: str | None = None
    cache: str = "none"
    model: str = ""
    code: str = "OK"
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)


@dataclass(frozen=True)
class Door:
    """What the handlers share: the service's parts and who may call.

    `in_flight` bounds the calls of the routes named in `bounded` (route name ->
    the metrics label a refused call is counted under); None: no bound.
    """

    app: App
    keyring: KeyRing | None
    in_flight: InFlight | None = None
    bounded: Mapping[str, str] = field(default_factory=dict)
    # The handlers running now, for a second shutdown signal to cancel.
    running: set[asyncio.Task[object]] = field(default_factory=set)

    def cancel_running(self) -> None:
        """Cancel every request still being handled (a second shutdown signal)."""
        for task in list(self.running):
            task.cancel()

    def principal(self, request: web.Request) -> Principal:
        """The caller of `request` (worked out once a request: the middleware may have).

        Raises:
            AuthenticationError: keys are configured and the request has no known key.
        """
        call: HttpCall | None = request.get(CALL)
        if call is not None and call.principal is not None:
            return call.principal
        principal = principal_for(self.keyring, list(request.headers.items()))
        if call is not None:
            call.principal = principal
        return principal


DOOR = web.AppKey("semcache_door", Door)
CALL = web.RequestKey("semcache_call", HttpCall)


def request_id_of(request: web.Request) -> str:
    """The caller's `x-request-id` when it can be one (`usable_request_id`), else a new one."""
    incoming = request.headers.get("x-request-id", "")
    if usable_request_id(incoming):
        return incoming
    return uuid.uuid4().hex


@web.middleware
async def door_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, structlog binding, error mapping and metrics around every handler."""
    call = HttpCall(request_id_of(request))
    request[CALL] = call
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=call.request_id, rpc=f"{request.method} {request.path}"
    )
    running = request.app[DOOR].running
    task = asyncio.current_task()
    if task is not None:
        running.add(task)
    try:
        response = await _admitted(request, call, handler)
    except asyncio.CancelledError:
        call.code = "CANCELLED"
        raise
    except web.HTTPException as error:
        response = _http_exception(error, call)
    except ClientGoneError as error:  # not the service's failure: counted, logged as such
        call.code = "CANCELLED"
        log.info("client went away before its request was read", reason=str(error))
        response = web.Response(status=499)
    except Exception as error:  # every error becomes an answer; unknown ones a 500
        response = failure(error, call)
    finally:
        running.discard(task)
        _count(request, call)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = call.request_id
    return response


async def _admitted(request: web.Request, call: HttpCall, handler: Handler) -> web.StreamResponse:
    """`handler`'s response, holding a slot of the bound on calls in flight while it
    runs (a stream's whole body) when its route is bounded. The caller is
    authenticated first, as on the gRPC port: a call without a known key is told
    so, not told to come back later.

    Raises:
        AuthenticationError: keys are configured and the request has no known key.
        OverloadedError: the bound's calls are all in flight (a 503 with Retry-After).
    """
    door = request.app[DOOR]
    route = request.match_info.route.name
    rpc = door.bounded.get(route) if route is not None else None
    if rpc is not None:
        call.rpc = rpc  # a refused call is counted under its route (a handler may refine it)
    if door.in_flight is None or rpc is None:
        await _read_body(request)
        return await handler(request)
    door.principal(request)
    await _read_body(request)  # before the slot: a slow upload must not hold one
    door.in_flight.enter(rpc)
    try:
        return await handler(request)
    finally:
        door.in_flight.leave()


async def _read_body(request: web.Request) -> None:
    """Read (and keep: `request.read()` returns it again) the whole body within
    `BODY_TIMEOUT_S`.

    Raises:
        HTTPRequestTimeout: the body did not arrive in time (a 408).
        HTTPRequestEntityTooLarge: the body is larger than the server takes (a 413).
        ClientGoneError: the client closed the connection before sending it all.
    """
    if not request.body_exists:
        return
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None  # `_REFUSALS` says what to change
    except (ConnectionResetError, ClientConnectionError) as error:
        raise ClientGoneError(str(error)) from None
    except (HttpProcessingError, web.RequestPayloadError):  # found from outside: a 500
        encoding = request.headers.get("Content-Encoding", "")
        raise BadBodyEncodingError(
            f"the request body does not decompress as its Content-Encoding {encoding!r}"
            " says; send it compressed as named there, or uncompressed without the header"
            if encoding
            else "the request body is malformed (its chunked transfer encoding or length)"
        ) from None


class ClientGoneError(Exception):
    """The client went away before its request was read: nobody to answer."""


def failure(error: BaseException, call: HttpCall) -> web.Response:
    """The OpenAI-shaped error response for `error`, logged as the gRPC door logs."""
    answer = http_error_for(error)
    call.code, call.cache, call.model = answer.metric_code, "none", ""
    if answer is INTERNAL:
        log.error("request failed", exc_info=error, status=500, latency_ms=call.elapsed_ms())
    else:
        log.info(
            "request rejected",
            status=answer.status,
            reason=str(error),
            latency_ms=call.elapsed_ms(),
        )
    return web.json_response(
        error_body(error, answer, call.request_id),
        status=answer.status,
        headers=retry_headers(error),
    )


def _http_exception(error: web.HTTPException, call: HttpCall) -> web.Response:
    """aiohttp's own refusals (no such route, wrong method, body too large or too slow)
    in OpenAI's shape, each with a `code` and a message saying what to change."""
    call.code = "NOT_FOUND" if error.status == 404 else "INVALID_ARGUMENT"
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    code, message = _REFUSALS.get(error.status, (None, error.reason))
    if error.status == 405:
        message = f"{error.reason}: this route takes {error.headers.get('Allow', '')}"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
    return web.json_response(body, status=error.status, headers=headers)


_REFUSALS: dict[int, tuple[str | None, str]] = {
    404: ("not_found", "no such route; the door serves /v1/chat/completions, /v1/models and"
          " /v1/semcache/... (see the README)"),
    405: ("method_not_allowed", ""),
    408: ("request_timeout", f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"),
    413: ("request_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes"),
}  # fmt: skip


def _count(request: web.Request, call: HttpCall) -> None:
    if call.rpc is None:
        return
    seconds = time.perf_counter() - call.started
    metrics = request.app[DOOR].app.metrics
    metrics.observe_request(call.rpc, call.code, call.cache, call.model, seconds)
