"""A tenant's request and token limits as the pipeline meets them: refusals are counted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from service.errors import RateLimitedError
from service.metrics import Metrics
from service.ratelimit import RateLimiter

_Check = Callable[[str], Awaitable[None]]


class Quota:
    """`RateLimiter` calls for one request's life, each refusal recorded in the metrics."""

    def __init__(self, limiter: RateLimiter, metrics: Metrics) -> None:
        self._limiter = limiter
        self._metrics = metrics

    async def admit(self, tenant: str) -> None:
        """Count a request against the tenant's request limit (hits included).

        Raises:
            RateLimitedError: the tenant is over its requests per minute.
        """
        await self._refusals_counted(tenant, self._limiter.acquire_request)

    async def check_tokens(self, tenant: str) -> None:
        """Before a call goes upstream: the tenant must have tokens left.

        Raises:
            RateLimitedError: the tenant is over its tokens per minute.
        """
        await self._refusals_counted(tenant, self._limiter.check_tokens)

    async def spend_tokens(self, tenant: str, tokens: int) -> None:
        """After an upstream call: what it used (never refuses)."""
        await self._limiter.spend_tokens(tenant, tokens)

    async def _refusals_counted(self, tenant: str, check: _Check) -> None:
        try:
            await check(tenant)
        except RateLimitedError as error:
            self._metrics.record_rate_limited(tenant, error.limit)
            raise
