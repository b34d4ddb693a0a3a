"""The gRPC door's side of authentication: TLS credentials, and who is calling.

The key checks themselves are transport-free (`service.auth`); the interceptor
(`interceptors.py`) asks `Authenticator` for each RPC's caller and raises its
`AuthenticationError` inside the handler, so the one error table turns it into
UNAUTHENTICATED like any other error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from service.auth import KeyRing, Principal, principal_for
from service.errors import AuthenticationError

# Health checks and reflection: they need no key (load balancers, grpcurl) and
# are never refused under overload (probes must not fail).
PROBE_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class Authenticator:
    """Finds each RPC's caller: a key from `keyring`, or in open mode (None) `x-tenant-id`."""

    def __init__(
        self, keyring: KeyRing | None, exempt_prefixes: tuple[str, ...] = PROBE_METHOD_PREFIXES
    ) -> None:
        self._keyring = keyring
        self._exempt = exempt_prefixes

    def caller(
        self, method: str, metadata: Sequence[tuple[str, str | bytes]]
    ) -> Principal | AuthenticationError | None:
        """The caller of `method`, the reason it is refused, or None (health, reflection)."""
        if method.startswith(self._exempt):
            return None
        try:
            return principal_for(self._keyring, metadata)
        except AuthenticationError as error:
            return error


def load_server_credentials(cert_file: Path, key_file: Path) -> grpc.ServerCredentials:
    """TLS credentials for the gRPC port from a PEM certificate chain and its private key.

    Raises:
        ValueError: a file is missing, unreadable, or not PEM.
    """
    pems = []
    files = (
        ("private key", key_file, "SEMCACHE_TLS_KEY_FILE"),
        ("certificate", cert_file, "SEMCACHE_TLS_CERT_FILE"),
    )
    for what, path, setting in files:  # each error names its setting (found from outside)
        try:
            pem = path.read_bytes()
        except OSError as error:
            raise ValueError(
                f"cannot read the TLS {what} {path}: {error.strerror}; check {setting}"
            ) from error
        if b"-----BEGIN" not in pem:
            raise ValueError(f"TLS {what} {path} is not PEM; check {setting}")
        pems.append(pem)
    return grpc.ssl_server_credentials([(pems[0], pems[1])])
