"""TLS for both doors, from the one certificate and key the settings name.

Python's `ssl` loads the pair for the HTTP door, and checks it for the gRPC port
before gRPC sees it: gRPC's core refuses a key that does not match its
certificate only when the port is added, with nothing better to say than that
the address could not be bound.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from service.config import Settings
from service.errors import StartupError


def tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server TLS context from a PEM certificate chain and its private key.

    Raises:
        StartupError: a file cannot be read, is not PEM, or the key does not match
            the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or error
        raise StartupError(
            f"cannot serve TLS with SEMCACHE_TLS_CERT_FILE={cert_file} and"
            f" SEMCACHE_TLS_KEY_FILE={key_file} ({reason}): give a PEM certificate chain"
            " and its private key"
        ) from error
    return context


def tls_from(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context `SEMCACHE_TLS_CERT_FILE` and `SEMCACHE_TLS_KEY_FILE`
    name; None (plaintext) unless both are set.

    Raises:
        StartupError: see `tls_context`.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return tls_context(settings.tls_cert_file, settings.tls_key_file)
