"""Start and stop the HTTP door: an aiohttp server in the same event loop as gRPC.

aiohttp runs on the loop the gRPC server already runs on (grpc.aio), so both
doors share one pipeline, one cache and one set of metrics with no thread
hand-offs. Routes:

    POST /v1/chat/completions      OpenAI chat completions (unary and `stream: true`)
    GET  /v1/models                the catalogue's models
    GET  /v1/models/{model}        one of them
    GET  /live, /live.json         the live page and its numbers
    POST /v1/semcache/entries      seed curated answers (PutEntries)
    DELETE /v1/semcache/entries/{entry_id}   one cached entry (DeleteEntry)
    POST /v1/semcache/feedback     a verdict on an answer (SubmitFeedback)

With the gRPC port's TLS files set, the door speaks HTTPS with the same
certificate. The chat and `/v1/semcache/` routes count against the bound on calls in flight
(`service.overload`) the gRPC door counts against too; past it they answer 503
with Retry-After.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import structlog
from aiohttp import web

from service.app import App
from service.auth import KeyRing, check_open_mode_bind
from service.config import Settings
from service.errors import StartupError
from service.overload import InFlight
from service.startup import bind_problem, one_line
from service.transport.http.chat import RPC_UNARY, chat_completions, list_models, retrieve_model
from service.transport.http.door import DOOR, MAX_BODY_BYTES, Door, door_middleware
from service.transport.http.entries import (
    RPC_DELETE_ENTRY,
    RPC_PUT_ENTRIES,
    delete_entry,
    put_entries,
)
from service.transport.http.feedback import RPC_FEEDBACK, submit_feedback
from service.transport.http.live import live_json, live_page
from service.transport.http.malformed import quiet_malformed_requests
from service.transport.tls import tls_from

log = structlog.get_logger(__name__)

DEFAULT_GRACE_S = 5.0


# The routes the bound on calls in flight counts, by route name, with the metrics
# label a refused call is counted under. The model list and the live page, cheap
# reads an operator needs most when the server is busy, are never refused.
BOUNDED_ROUTES = {
    "chat_completions": RPC_UNARY,
    "put_entries": RPC_PUT_ENTRIES,
    "delete_entry": RPC_DELETE_ENTRY,
    "submit_feedback": RPC_FEEDBACK,
}


def build_http_app(
    app: App, keyring: KeyRing | None, in_flight: InFlight | None = None
) -> web.Application:
    """The aiohttp application of the HTTP door over `app` (see the module docstring).

    `in_flight` bounds the calls of `BOUNDED_ROUTES` (None: no bound).
    """
    web_app = web.Application(middlewares=[door_middleware], client_max_size=MAX_BODY_BYTES)
    web_app[DOOR] = Door(app, keyring, in_flight, BOUNDED_ROUTES)
    router = web_app.router
    router.add_post("/v1/chat/completions", chat_completions, name="chat_completions")
    router.add_get("/v1/models", list_models)
    router.add_get("/v1/models/{model}", retrieve_model)
    router.add_get("/live", live_page)
    router.add_get("/live.json", live_json)
    router.add_post("/v1/semcache/entries", put_entries, name="put_entries")
    router.add_delete("/v1/semcache/entries/{entry_id}", delete_entry, name="delete_entry")
    router.add_post("/v1/semcache/feedback", submit_feedback, name="submit_feedback")
    return web_app


@dataclass
class RunningHttpServer:
    """A running HTTP door: the port it listens on, whether it speaks TLS, and how to stop it."""

    port: int
    host: str
    _runner: web.AppRunner
    tls: bool = False

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this door, e.g. `http://127.0.0.1:8080/v1` (`https` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/v1"

    async def aclose(self) -> None:
        """Stop taking connections, let requests in flight finish (up to the grace
        period given at start), then close the rest."""
        await self._runner.cleanup()

    def cancel_in_flight(self) -> None:
        """End every request still being handled, now (found from outside: a second
        SIGTERM cancelled the gRPC calls, and the HTTP ones ran to their end)."""
        self._runner.app[DOOR].cancel_running()


async def start_http_server(
    app: App,
    host: str,
    port: int,
    keyring: KeyRing | None,
    grace_s: float = DEFAULT_GRACE_S,
    in_flight: InFlight | None = None,
    tls: ssl.SSLContext | None = None,
) -> RunningHttpServer:
    """Serve the HTTP door of `app` on host:port (port 0 picks a free one).

    `keyring` is the gRPC port's (None: open mode, allowed on loopback only);
    `in_flight` the bound on calls in flight, shared with the gRPC door (None:
    no bound); `tls` makes it HTTPS (None: plain HTTP).

    Raises:
        StartupError: open mode on a non-loopback host, or the port cannot be
            bound; the message says what to change.
    """
    if keyring is None:
        try:
            check_open_mode_bind(host)
        except ValueError as error:
            message = one_line(error).replace("SEMCACHE_GRPC_HOST", "SEMCACHE_HTTP_HOST")
            raise StartupError(message) from error
    web_app = build_http_app(app, keyring, in_flight)
    quiet_malformed_requests()
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_port=False)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        problem = bind_problem(host, port, "SEMCACHE_HTTP_PORT", "SEMCACHE_HTTP_HOST")
        raise StartupError(f"cannot listen for HTTP on {host}:{port}: {problem}") from error
    running = RunningHttpServer(_bound_port(runner, port), host, runner, tls is not None)
    log.info("HTTP door serving", base_url=running.base_url, api_keys=keyring is not None)
    return running


async def start_http_from_settings(
    app: App,
    settings: Settings,
    keyring: KeyRing | None,
    in_flight: InFlight | None = None,
    tls: ssl.SSLContext | None = None,
) -> RunningHttpServer | None:
    """The HTTP door the settings ask for: None when SEMCACHE_HTTP_PORT is unset.

    `in_flight` is the gate shared with the gRPC door; None builds one of its own
    from SEMCACHE_MAX_CONCURRENT_RPCS. With SEMCACHE_TLS_CERT_FILE and
    SEMCACHE_TLS_KEY_FILE set, the door speaks HTTPS with them, as the gRPC port
    does: with `tls`, the context the gRPC door's `Security` loaded from them,
    else one loaded here.

    Raises:
        StartupError: see `start_http_server` and `tls_from`.
    """
    if settings.http_port is None:
        return None
    if in_flight is None:
        in_flight = InFlight(settings.max_concurrent_rpcs, app.metrics)
    tls = tls or tls_from(settings)
    return await start_http_server(
        app,
        settings.effective_http_host,
        settings.http_port,
        keyring,
        settings.grace_period_s,
        in_flight,
        tls,
    )


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked
