"""Start and stop the gRPC server: health, reflection, signals. Nothing else."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.app import App
from service.auth import (
    OPEN_MODE_WARNING,
    AuthInterceptor,
    KeyRing,
    check_open_mode_bind,
    load_keys,
    load_server_credentials,
)
from service.config import Settings
from service.interceptors import ServiceInterceptor
from service.metrics import start_metrics_server
from service.servicer import BatchLimits, SemanticCacheServicer

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SemanticCacheService"].full_name


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, then let in-flight RPCs finish for up to `grace_s`."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


@dataclass(frozen=True)
class Security:
    """Who may call, and over what: API keys (None = open mode) and TLS (None = plaintext)."""

    keyring: KeyRing | None = None
    credentials: grpc.ServerCredentials | None = None


def security_from(settings: Settings) -> Security:
    """Load the keys file and TLS files the settings name.

    Raises:
        ValueError: open mode on a non-loopback address, or a bad keys file.
        OSError: a TLS file cannot be read.
    """
    if settings.api_keys_file is None:
        check_open_mode_bind(settings.grpc_host)
        log.warning(OPEN_MODE_WARNING)
        keyring = None
    else:
        keyring = load_keys(settings.api_keys_file)
    credentials = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        credentials = load_server_credentials(settings.tls_cert_file, settings.tls_key_file)
    return Security(keyring, credentials)


async def start_server(
    app: App,
    host: str,
    port: int,
    batch_limits: BatchLimits | None = None,
    security: Security | None = None,
) -> RunningServer:
    """Serve `app` on host:port (port 0 picks a free one) and mark it SERVING.

    Raises:
        RuntimeError: the port could not be bound.
    """
    security = security or Security()
    interceptors = [ServiceInterceptor(app.metrics), AuthInterceptor(security.keyring)]
    server = grpc.aio.server(interceptors=interceptors)
    servicer = SemanticCacheServicer(app.pipeline, app.admin, batch_limits)
    pb_grpc.add_SemanticCacheServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    if security.credentials is not None:
        bound = server.add_secure_port(address, security.credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"could not bind the gRPC port {host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, health_servicer)


async def serve_until_signalled(app: App, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully and close `app`."""
    limits = BatchLimits(settings.batch_max_items, settings.batch_max_concurrency)
    security = security_from(settings)
    running = await start_server(app, settings.grpc_host, settings.grpc_port, limits, security)
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server = start_metrics_server(
            app.metrics, settings.metrics_host, settings.metrics_port
        )
        log.info("metrics at /metrics", port=metrics_server.port)
    app.maintenance.start()
    log.info(
        "semcache serving",
        address=f"{settings.grpc_host}:{running.port}",
        tls=security.credentials is not None,
        api_keys=security.keyring is not None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", grace_s=settings.grace_period_s)
    await running.stop(settings.grace_period_s)
    await app.aclose()
    if metrics_server is not None:
        await metrics_server.aclose()
    log.info("stopped")
