"""A gRPC health probe for containers: `semcache health`.

Asks `grpc.health.v1.Health/Check` on the local server and exits 0 when it
answers SERVING, 1 otherwise (not serving, unreachable, or too slow). It is
the Docker HEALTHCHECK; Kubernetes probes the same service natively with
`grpc:` probes. The port comes from `SEMCACHE_GRPC_PORT` through `Settings`,
like the server's own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.errors import StartupError
from service.startup import load_settings

DEFAULT_TIMEOUT_S = 3.0


def check(target: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the server at `target` reports `service` ("" = the whole server) SERVING."""
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(request, timeout=timeout_s)
        except grpc.RpcError as error:
            print(f"unhealthy: {target}: {error.code().name}: {error.details()}", file=sys.stderr)
            return False
    serving = bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    if not serving:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"unhealthy: {target}: {status}", file=sys.stderr)
    return serving


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options, for `semcache health`."""
    parser.add_argument(
        "--target", help="host:port to probe; default 127.0.0.1:$SEMCACHE_GRPC_PORT"
    )
    parser.add_argument("--service", default="", help="health service name; default: the server")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)


def run(args: argparse.Namespace) -> int:
    """Exit status 0 if the server is SERVING, else 1 (also when the settings that
    name its port are invalid: one line on stderr says which)."""
    target = args.target
    if target is None:
        try:
            target = f"127.0.0.1:{load_settings().grpc_port}"
        except StartupError as error:
            print(f"unhealthy: {error}", file=sys.stderr)
            return 1
    return 0 if check(target, args.service, args.timeout_s) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`semcache health`'s options parsed from `argv`, then `run`."""
    parser = argparse.ArgumentParser(prog="semcache health", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
