"""How an OpenAI-compatible endpoint's failures become the service's errors.

    UpstreamError                     (service.errors)
    ├── RetryableUpstreamError        429, 5xx, connection lost: worth another try;
    │                                 carries the provider's Retry-After, if any
    ├── UpstreamTimeoutError          no answer in time: worth another try within the deadline
    ├── ProviderSetupError            401, 403, 404: the provider will not take semcache's
    │                                 key or does not serve the model: the operator's to fix;
    │                                 fails over at once, never blames the caller
    └── UpstreamRejectedError         any other 4xx: the request itself is wrong; never retried

408 and 409 are retried (the provider timed out reading, or a conflict), as
the `openai` SDK itself would. A 401's or 403's own text is never passed on:
the provider's may quote part of semcache's key.

The resilience layer (`service.llm.resilience`) decides what to retry from
these types alone; it never looks at HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import openai

from service.errors import UpstreamError, UpstreamRejectedError, UpstreamTimeoutError


class RetryableUpstreamError(UpstreamError):
    """A failure that may pass on retry: HTTP 429 or 5xx, or a lost connection.

    `retry_after_s` is how long the provider asked us to wait (None when it
    did not say); `status` is the HTTP status, None for a connection error.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class ProviderSetupError(UpstreamError):
    """The provider refused semcache's credentials (401, 403) or does not serve the
    model at that address (404): nothing the caller sent, nothing a retry fixes."""


_RETRYABLE_4XX = frozenset({408, 409, 429})


def translate_openai_error(
    error: openai.OpenAIError, provider: str, *, hide: Sequence[str] = ()
) -> UpstreamError:
    """The service's error for an `openai` client error; `provider` names the endpoint.

    The message reaches callers: each string of `hide` (the provider's URL, host
    and port) is replaced by "<provider address>" wherever the client's or the
    provider's own text quotes it.
    """
    if isinstance(error, openai.APITimeoutError):
        return UpstreamTimeoutError(f"{provider} did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return RetryableUpstreamError(f"{provider} is unreachable: {_hidden(str(error), hide)}")
    if isinstance(error, openai.APIStatusError):
        return _status_error(error, provider, hide)
    return UpstreamError(f"{provider} failed: {_hidden(str(error), hide)}")


def _hidden(text: str, addresses: Sequence[str]) -> str:
    for address in addresses:  # longest first, so a URL goes before its host
        text = text.replace(address, "<provider address>")
    return text


def _status_error(
    error: openai.APIStatusError, provider: str, hide: Sequence[str]
) -> UpstreamError:
    status = error.status_code
    if status in (401, 403):
        return ProviderSetupError(
            f"{provider} refused semcache's credentials (HTTP {status}); the operator must"
            " check the provider's API key in the catalogue"
        )
    detail = f"{provider} answered HTTP {status}: {_hidden(error.message, hide)}"
    if status == 404:
        return ProviderSetupError(f"{detail} (check the catalogue's model name and base_url)")
    if status in _RETRYABLE_4XX or status >= 500:
        retry_after_s = retry_after_from_headers(error.response.headers)
        return RetryableUpstreamError(detail, status=status, retry_after_s=retry_after_s)
    return UpstreamRejectedError(detail)


def retry_after_from_headers(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI's) or `Retry-After` (seconds or an
    HTTP date); None when neither is present and valid."""
    milliseconds = _finite(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return max(milliseconds / 1000, 0.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _finite(raw)
    if seconds is not None:
        return max(seconds, 0.0)
    return _seconds_until(raw)


def _finite(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
