"""Malformed HTTP (a control character in a header, a header or URL over aiohttp's
limits) as one log line, not a traceback per request.

aiohttp answers such a request itself, with a plain-text 400, before any route runs,
and logs it on `aiohttp.server` with the parser's whole traceback: found from
outside, one multi-line traceback per request, with no request id, so anyone who
can reach the port could flood the log. `quiet_malformed_requests()` installs a
filter there that drops those records and logs one warning line instead, at most
once every `LOG_INTERVAL_S`, with how many there were since; any other record of
that logger is left as it is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import structlog
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger(__name__)

LOG_INTERVAL_S = 10.0
SERVER_LOGGER = "aiohttp.server"


class MalformedRequestFilter(logging.Filter):
    """Drops aiohttp's records of malformed requests, logging a line now and then."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._unlogged = 0
        self._logged_at = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        self._unlogged += 1
        now = self._clock()
        if now - self._logged_at >= LOG_INTERVAL_S:
            log.warning(
                "malformed HTTP requests refused with a 400 before any route",
                refused=self._unlogged,
                reason=_without_values(str(error.message or error)),
            )
            self._logged_at, self._unlogged = now, 0
        return False


def quiet_malformed_requests() -> None:
    """Install the filter on aiohttp's server logger (once per process)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())


def _without_values(message: str) -> str:
    """aiohttp's reason without the bytes it quotes: they may be a whole header line
    (found from outside: `Invalid header value char: b'Authorization: Bearer <key>\\x7f'`
    logged an API key whole)."""
    return message.split(":", 1)[0].strip()[:100]
