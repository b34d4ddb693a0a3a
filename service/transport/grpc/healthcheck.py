"""A gRPC health probe for containers: `semcache health`.

Asks `grpc.health.v1.Health/Check` on the local server and exits 0 when it
answers SERVING, 1 otherwise (not serving, unreachable, or too slow). It is
the Docker HEALTHCHECK; Kubernetes probes the same service natively with
`grpc:` probes. The port comes from `SEMCACHE_GRPC_PORT` through `Settings`,
like the server's own.

A server with TLS (`SEMCACHE_TLS_CERT_FILE`) is probed over TLS: trusting
`--tls-ca`, by default the server's own certificate (enough for a self-signed
one), and checking it against `--tls-server-name`, by default the target's host.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.errors import StartupError
from service.startup import load_settings
from service.urls import seconds_argument, target_argument

DEFAULT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Trust:
    """How to reach a TLS server: the PEM roots to trust, and the name its
    certificate must carry when the target's host is another (None: that host)."""

    roots: bytes
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Client TLS credentials trusting `roots` (the client commands' `--tls-ca` too)."""
        return grpc.ssl_channel_credentials(root_certificates=self.roots)

    def channel(self, target: str) -> grpc.Channel:
        options = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(target, self.credentials(), options=options)


def check(
    target: str,
    service: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    trust: Trust | None = None,
) -> bool:
    """True when the server at `target` reports `service` ("" = the whole server)
    SERVING; over TLS when `trust` is given."""
    request = health_pb2.HealthCheckRequest(service=service)
    opened = grpc.insecure_channel(target) if trust is None else trust.channel(target)
    with opened as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(request, timeout=timeout_s)
        except grpc.RpcError as error:
            print(f"unhealthy: {target}: {_reason(error, service)}", file=sys.stderr)
            return False
    serving = bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    if not serving:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"unhealthy: {target}: {status}", file=sys.stderr)
    return serving


def read_pem_roots(path: Path) -> bytes:
    """The PEM certificates in `path`, to trust.

    Raises:
        ValueError: it cannot be read, or holds no PEM (found from outside: gRPC then
            printed its own log lines and "Failed to create security handshaker").
    """
    try:
        roots = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the TLS roots {path}: {error.strerror}") from error
    if b"-----BEGIN CERTIFICATE-----" not in roots:
        raise ValueError(f"the TLS roots {path} hold no PEM certificate")
    return roots


def _reason(error: grpc.RpcError, service: str) -> str:
    """Why the probe failed; a NOT_FOUND comes with no details (found from outside:
    `--service nope` printed "NOT_FOUND: " and nothing else)."""
    code, details = error.code(), error.details()
    if code is grpc.StatusCode.NOT_FOUND and not details:
        details = f"the server reports no health for service {service!r}"
    return f"{code.name}: {details}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options, for `semcache health`."""
    parser.add_argument(
        "--target",
        type=target_argument,
        help="host:port to probe; default 127.0.0.1:$SEMCACHE_GRPC_PORT",
    )
    parser.add_argument("--service", default="", help="health service name; default: the server")
    parser.add_argument("--timeout-s", type=seconds_argument, default=DEFAULT_TIMEOUT_S)
    parser.add_argument(
        "--tls-ca",
        type=Path,
        help="PEM roots to trust: probe over TLS; default with SEMCACHE_TLS_CERT_FILE set:"
        " that certificate",
    )
    parser.add_argument(
        "--tls-server-name", help="the name the server's certificate carries; default: the host"
    )


def run(args: argparse.Namespace) -> int:
    """Exit status 0 if the server is SERVING, else 1 (also when the settings that
    name its port are invalid: one line on stderr says which)."""
    target, roots = args.target, args.tls_ca
    if target is None or roots is None:
        try:
            settings = load_settings()
        except StartupError as error:
            print(f"unhealthy: {error}", file=sys.stderr)
            return 1
        target = target or f"127.0.0.1:{settings.grpc_port}"
        roots = roots or settings.tls_cert_file
    trust = None
    if roots is not None:
        try:
            trust = Trust(read_pem_roots(roots), args.tls_server_name)
        except ValueError as error:
            print(f"unhealthy: {error}", file=sys.stderr)
            return 1
    return 0 if check(target, args.service, args.timeout_s, trust) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`semcache health`'s options parsed from `argv`, then `run`."""
    parser = argparse.ArgumentParser(prog="semcache health", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
