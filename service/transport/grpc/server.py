"""Start and stop the gRPC door: health, reflection, interceptors, TLS. Nothing else.

Start-up failures an operator can fix (a busy port, open mode on a public
address, a bad keys or TLS file) are `StartupError`s with a one-line message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.app import App
from service.auth import OPEN_MODE_WARNING, KeyRing, check_open_mode_bind, load_keys
from service.config import Settings
from service.errors import StartupError
from service.overload import DEFAULT_MAX_IN_FLIGHT, InFlight
from service.startup import bind_problem, one_line
from service.transport.grpc.auth import Authenticator, load_server_credentials
from service.transport.grpc.core_log import quiet_ended_calls
from service.transport.grpc.interceptors import BACKLOG_SERVER_OPTIONS, ServiceInterceptor
from service.transport.grpc.servicer import BatchLimits, SemanticCacheServicer
from service.transport.tls import tls_from

log = structlog.get_logger(__name__)

# gRPC sets SO_REUSEPORT by default: a second server on a busy port would bind
# it too, and the kernel would split the calls between two caches.
SERVER_OPTIONS = (("grpc.so_reuseport", 0), *BACKLOG_SERVER_OPTIONS)

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

    async def cancel_in_flight(self) -> None:
        """End every RPC still running, now."""
        await self.server.stop(0)


@dataclass(frozen=True)
class Security:
    """Who may call, and over what: API keys (None = open mode) and TLS (None = plaintext):
    the gRPC port's `credentials`, and the same pair as the HTTP door's `tls` context."""

    keyring: KeyRing | None = None
    credentials: grpc.ServerCredentials | None = None
    tls: ssl.SSLContext | None = None


def security_from(settings: Settings) -> Security:
    """Load the keys file and TLS files the settings name.

    Raises:
        StartupError: open mode on a non-loopback address, a bad keys file, or
            an unreadable TLS file.
    """
    try:
        keyring = _keyring(settings)
        credentials = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            credentials = load_server_credentials(settings.tls_cert_file, settings.tls_key_file)
        tls = tls_from(settings)  # Python's ssl names a key that does not match; gRPC cannot
    except ValueError as error:
        raise StartupError(one_line(error)) from error
    if keyring is None:
        log.warning(OPEN_MODE_WARNING)
    return Security(keyring, credentials, tls)


def _keyring(settings: Settings) -> KeyRing | None:
    if settings.api_keys_file is None:
        check_open_mode_bind(settings.grpc_host)
        return None
    try:
        return load_keys(settings.api_keys_file)
    except ValueError as error:
        raise ValueError(
            f"{error}; fix the file (`semcache keys add` writes valid entries)"
            " or point SEMCACHE_API_KEYS_FILE at another"
        ) from error


async def start_server(
    app: App,
    host: str,
    port: int,
    batch_limits: BatchLimits | None = None,
    security: Security | None = None,
    max_concurrent_rpcs: int | InFlight = DEFAULT_MAX_IN_FLIGHT,
) -> RunningServer:
    """Serve `app` on host:port (port 0 picks a free one) and mark it SERVING.

    Past `max_concurrent_rpcs` cache-service calls in flight, a new call is
    refused with RESOURCE_EXHAUSTED and a retry hint (`service.overload`); an
    `InFlight` gate given here is shared with whoever else holds it (the HTTP door).

    Raises:
        StartupError: the port could not be bound (in use, or not an address
            of this machine); the message says which and what to change.
    """
    quiet_ended_calls()
    security = security or Security()
    authenticator = Authenticator(security.keyring)
    interceptors = [ServiceInterceptor(app.metrics, max_concurrent_rpcs, authenticator)]
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    servicer = SemanticCacheServicer(app.pipeline, app.admin, batch_limits)
    pb_grpc.add_SemanticCacheServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound = _add_port(server, host, port, security.credentials)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, health_servicer)


def _add_port(
    server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None
) -> int:
    address = f"{host}:{port}"
    try:
        if credentials is not None:
            bound = int(server.add_secure_port(address, credentials))
        else:
            bound = int(server.add_insecure_port(address))
    except RuntimeError:  # gRPC says only that binding failed, not why
        bound = 0
    if bound == 0:
        problem = bind_problem(host, port, "SEMCACHE_GRPC_PORT", "SEMCACHE_GRPC_HOST")
        raise StartupError(f"cannot listen for gRPC on {address}: {problem}")
    return bound
