"""The checks of the addresses the service and its commands call: an http(s) URL
(providers, Qdrant) and a gRPC `host:port` (`--target`, SEMCACHE_TARGET)."""

from __future__ import annotations

import argparse
import math
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


def shown_url(url: str) -> str:
    """`url` as it may be logged or printed: a password in it, and the value of every
    query parameter, replaced by `***` (found from outside: an unreachable
    `http://user:pw@host` was echoed whole, and `?api_key=...` would have been).
    Userinfo with a second `@` (an unescaped one in the password) is hidden whole."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that does not parse>"
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo and "@" not in userinfo:
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}")
    elif at and "@" in userinfo:
        parts = parts._replace(netloc=f"***@{host}")
    if parts.query:
        hidden = "&".join(f"{field.partition('=')[0]}=***" for field in parts.query.split("&"))
        parts = parts._replace(query=hidden)
    return parts.geturl()


def target_problem(target: str) -> str | None:
    """Why `target` is not a gRPC `host:port` (or `[v6]:port`) to call; None when it is.

    gRPC itself takes a port above 65535 modulo 65536 (found from outside:
    `--target localhost:99999` called port 34463, whatever listens there).
    Other gRPC target forms (`dns:///…`, `unix:…`) are passed as they are.
    """
    if "/" in target or target.startswith(("unix:", "ipv4:", "ipv6:", "dns:")):
        return None
    host, colon, port = target.rpartition(":")
    if not colon or not host or host == "[]":
        return "give it as HOST:PORT"
    if not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
        return f"its port must be a number from 1 to {MAX_PORT}"
    return None


def target_argument(value: str) -> str:
    """`--target`, checked (`target_problem`), for argparse.

    Raises:
        argparse.ArgumentTypeError: it is not a target to call.
    """
    problem = target_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{value!r}: {problem}, e.g. localhost:50051")
    return value


def seconds_argument(value: str) -> float:
    """`--timeout-s`: a finite number of seconds above 0, for argparse.

    Raises:
        argparse.ArgumentTypeError: it is not one.
    """
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of seconds above 0")
    return seconds
