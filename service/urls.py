"""The one check of an http(s) URL the service will call (providers, Qdrant)."""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_PORT = 65535


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL with a host and a usable port; None when it is.

    Checked where a setting or the catalogue is read, so a typo stops the service
    with one line instead of failing every call later (found from outside: `notaurl`,
    `ftp://…` and port 99999 started, and each call then failed, the last as "a body
    that is not JSON").
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "it names no host"
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= MAX_PORT:
        return f"its port must be a number from 1 to {MAX_PORT}"
    return None
