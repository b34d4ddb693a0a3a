"""Serve until told to stop: both doors, the metrics port and the upkeep loop.

`semcache serve` builds the app, then calls `serve_until_signalled`. On SIGTERM
or SIGINT it drains: gRPC health reports NOT_SERVING (to open Watch streams; the
port stops taking new calls, checks included),
and calls in flight on either door get up to `grace_period_s` to finish; a
second signal ends the drain at once. The caller closes the app afterwards.

Only what the settings ask for is imported: the HTTP door (aiohttp's server)
when SEMCACHE_HTTP_PORT is set (tests/test_serve_imports.py checks this).
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import structlog

from service.app import App
from service.config import Settings
from service.errors import StartupError
from service.key_reload import KeysFileWatcher
from service.metrics import MetricsServer, start_metrics_server
from service.overload import InFlight
from service.startup import bind_problem
from service.transport.grpc.server import RunningServer, Security, security_from, start_server
from service.transport.grpc.servicer import BatchLimits

if TYPE_CHECKING:
    from service.transport.http.server import RunningHttpServer

log = structlog.get_logger(__name__)


async def serve_until_signalled(
    app: App, settings: Settings, security: Security | None = None
) -> None:
    """Serve `app` on the configured doors until SIGTERM or SIGINT, then drain.

    Raises:
        StartupError: a port cannot be bound, or `security` was not given and
            the keys or TLS files are bad.
    """
    security = security or security_from(settings)
    # Taken before the doors open (found from outside: a SIGTERM right after "serving"
    # killed the process undrained in 10 of 16 starts, the handlers not yet in place).
    signals = _signal_queue()
    try:
        running, http, metrics_server = await _open_doors(app, settings, security)
    except StartupError:
        _default_signals()
        raise
    app.maintenance.start()
    keys = _watch_keys(security, settings)
    log.info(
        "semcache serving",
        address=f"{settings.grpc_host}:{running.port}",
        http=http.base_url if http is not None else None,
        tls=security.credentials is not None,
        api_keys=security.keyring is not None,
    )
    await signals.get()
    log.info("shutting down", grace_s=settings.grace_period_s, in_flight="draining")
    await _drain(running, http, settings.grace_period_s, signals)
    if keys is not None:
        await keys.aclose()
    if metrics_server is not None:
        await metrics_server.aclose()


def _watch_keys(security: Security, settings: Settings) -> KeysFileWatcher | None:
    """Read the keys file again on SIGHUP and whenever it changes (see `key_reload`);
    without one (open mode), a SIGHUP only says there is nothing to reload."""
    loop = asyncio.get_running_loop()
    if security.keyring is None or settings.api_keys_file is None:
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.info("SIGHUP: no API keys file to reload (open mode)")
        )
        return None
    watcher = KeysFileWatcher(security.keyring, settings.api_keys_file)
    loop.add_signal_handler(signal.SIGHUP, watcher.reload)
    watcher.start()
    return watcher


async def _start_http(
    app: App, settings: Settings, security: Security, in_flight: InFlight
) -> RunningHttpServer | None:
    """The HTTP door, when SEMCACHE_HTTP_PORT is set; its aiohttp server is imported only then.

    Raises:
        StartupError: the port cannot be bound.
    """
    if settings.http_port is None:
        return None
    from service.transport.http.server import start_http_from_settings

    return await start_http_from_settings(app, settings, security.keyring, in_flight, security.tls)


def _start_metrics(app: App, settings: Settings) -> MetricsServer | None:
    if settings.metrics_port is None:
        return None
    try:
        server = start_metrics_server(app.metrics, settings.metrics_host, settings.metrics_port)
    except OSError as error:
        address = f"{settings.metrics_host}:{settings.metrics_port}"
        problem = bind_problem(
            settings.metrics_host,
            settings.metrics_port,
            "SEMCACHE_METRICS_PORT",
            "SEMCACHE_METRICS_HOST",
        )
        raise StartupError(f"cannot serve metrics on {address}: {problem}") from error
    log.info("metrics at /metrics", port=server.port)
    return server


async def _open_doors(
    app: App, settings: Settings, security: Security
) -> tuple[RunningServer, RunningHttpServer | None, MetricsServer | None]:
    """The gRPC door, the HTTP door and the metrics port, as configured.

    Raises:
        StartupError: a port cannot be bound (what was opened is closed again).
    """
    limits = BatchLimits(settings.batch_max_items, settings.batch_max_concurrency)
    in_flight = InFlight(settings.max_concurrent_rpcs, app.metrics)  # one bound, both doors
    if settings.embedding_inline_when_alone:  # alone: this call is the only one in flight
        app.cache.embedder.run_inline_when(lambda: in_flight.count <= 1)
    running = await start_server(
        app, settings.grpc_host, settings.grpc_port, limits, security, in_flight
    )
    try:
        http = await _start_http(app, settings, security, in_flight)
        return running, http, _start_metrics(app, settings)
    except StartupError:
        await running.stop(0)
        raise


def _default_signals() -> None:
    """SIGTERM and SIGINT back to their default actions (start-up failed)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


def _signal_queue() -> asyncio.Queue[int]:
    """SIGTERM and SIGINT, as they arrive, instead of their default actions."""
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    return signals


async def _drain(
    running: RunningServer,
    http: RunningHttpServer | None,
    grace_s: float,
    signals: asyncio.Queue[int],
) -> None:
    """Stop both doors within `grace_s`, cut short by the next signal."""
    stops = [running.stop(grace_s)] + ([http.aclose()] if http is not None else [])
    draining = asyncio.ensure_future(asyncio.gather(*stops))
    hurry = asyncio.ensure_future(signals.get())
    await asyncio.wait((draining, hurry), return_when=asyncio.FIRST_COMPLETED)
    if not draining.done():
        log.warning("second signal: cancelling the calls still in flight")
        if http is not None:
            http.cancel_in_flight()
        await running.cancel_in_flight()
    hurry.cancel()
    await draining
