"""Per-tenant rate limits: requests per minute and upstream tokens per minute.

Each limit is a token bucket per tenant holding at most one minute's worth
(the burst) and refilled continuously at limit/60 per second; 0 turns a limit
off. Buckets are refilled lazily, when next touched, so idle tenants cost
nothing.

How the gateway uses a `RateLimiter`:

1. `acquire_request(tenant)` on every completion, hit or miss: cache hits
   count against requests per minute, never against tokens.
2. `check_tokens(tenant)` before a miss goes upstream: the tenant's token
   bucket must hold at least one token. How many tokens the call will use is
   only known after the answer, so nothing is reserved here.
3. `spend_tokens(tenant, tokens)` after the upstream call with the usage it
   reported (also for a failed or cancelled stream, for what was used). This
   never refuses, since the tokens are already spent, and may leave the
   bucket below zero: the tenant then waits until the debt is refilled. Over
   any long window the tenant's average stays within its limit, at the price
   that one large answer can overdraw the bucket by up to that answer's size.

A refusal raises `RateLimitedError` carrying `retry_after_s`; each door says
when to retry in its own terms (gRPC: a `google.rpc.RetryInfo` detail, see
`service.transport.grpc.status`; HTTP: `Retry-After`).

Two backends: `InMemoryRateLimiter` (one process; the default) and
`RedisRateLimiter` (buckets shared by every replica, updated atomically by a
Lua script). A Redis outage lets requests through with a warning: like the
cache, the limiter fails open rather than failing RPCs. The redis package is
imported only when a `RedisRateLimiter` is made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from service.errors import RateLimitedError

log = structlog.get_logger(__name__)

Limit = Literal["requests", "tokens"]
_MAX_IDLE_BUCKETS = 10_000
# Float refills can land a hair short of a whole token exactly when the retry
# delay said it would be there; this much is forgiven (same value in the Lua).
_EPSILON = 1e-6
# After Redis fails, requests go through without asking it for this long.
REDIS_RETRY_AFTER_S = 5.0


class RateLimiter(Protocol):
    """Per-tenant request and token limits (see the module docstring for the call order)."""

    async def acquire_request(self, tenant: str) -> None:
        """Take one request from the tenant's bucket. Raises: RateLimitedError."""

    async def check_tokens(self, tenant: str) -> None:
        """Refuse if the tenant's token bucket is empty. Raises: RateLimitedError."""

    async def spend_tokens(self, tenant: str, tokens: int) -> None:
        """Debit the tokens an upstream call used; never refuses."""

    async def aclose(self) -> None:
        """Release connections."""


@dataclass
class _Bucket:
    level: float
    updated_s: float


class _Buckets:
    """One kind of bucket for every tenant, in memory."""

    def __init__(self, limit: Limit, per_minute: int, clock: Callable[[], float]) -> None:
        self._limit: Limit = limit
        self._per_minute = per_minute
        self._rate_per_s = per_minute / 60
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant: str, cost: float, debit: bool) -> None:
        """Take `cost` (debit) or only look for it.

        Raises:
            RateLimitedError: the bucket holds less than `cost`.
        """
        bucket = self._refilled(tenant)
        if bucket.level + _EPSILON < cost:
            wait_s = (cost - bucket.level) / self._rate_per_s
            raise RateLimitedError(tenant, self._limit, self._per_minute, wait_s)
        if debit:
            bucket.level -= cost

    def spend(self, tenant: str, cost: float) -> None:
        self._refilled(tenant).level -= cost

    def _refilled(self, tenant: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            self._forget_full_buckets(now)
            bucket = self._buckets[tenant] = _Bucket(float(self._per_minute), now)
        elapsed_s = max(0.0, now - bucket.updated_s)
        bucket.level = min(float(self._per_minute), bucket.level + elapsed_s * self._rate_per_s)
        bucket.updated_s = now
        return bucket

    def _forget_full_buckets(self, now: float) -> None:
        # A full bucket is the same as no bucket; dropping them bounds memory
        # when many tenants come and go.
        if len(self._buckets) < _MAX_IDLE_BUCKETS:
            return
        self._buckets = {
            tenant: bucket
            for tenant, bucket in self._buckets.items()
            if bucket.level + (now - bucket.updated_s) * self._rate_per_s < self._per_minute
        }


class InMemoryRateLimiter:
    """Token buckets in this process: right for one replica, and for tests.

    `clock` returns seconds on a monotonic scale (injected by tests).
    """

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        requests = _Buckets("requests", requests_per_minute, clock)
        tokens = _Buckets("tokens", tokens_per_minute, clock)
        self._requests = requests if requests_per_minute else None
        self._tokens = tokens if tokens_per_minute else None

    async def acquire_request(self, tenant: str) -> None:
        """Take one request from the tenant's bucket.

        Raises:
            RateLimitedError: the tenant made its requests-per-minute already.
        """
        if self._requests is not None:
            self._requests.take(tenant, 1, debit=True)

    async def check_tokens(self, tenant: str) -> None:
        """Refuse a new upstream call while the tenant's token bucket is empty or in debt.

        Raises:
            RateLimitedError: the bucket holds less than one token.
        """
        if self._tokens is not None:
            self._tokens.take(tenant, 1, debit=False)

    async def spend_tokens(self, tenant: str, tokens: int) -> None:
        """Debit the tokens an upstream call used (the bucket may go below zero)."""
        if self._tokens is not None and tokens > 0:
            self._tokens.spend(tenant, tokens)

    async def aclose(self) -> None:
        """Nothing to release."""


# KEYS[1] bucket; ARGV: capacity, refill per second, cost, mode, now (s; < 0 = Redis TIME).
# mode "take": debit cost if the bucket holds it; "check": only look for cost;
# "spend": debit cost unconditionally. Returns the milliseconds to wait (0 = allowed).
# A missing key is a full bucket; each key expires once it would have refilled.
_BUCKET_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local mode = ARGV[4]
local now = tonumber(ARGV[5])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'level', 'updated')
local level = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
if now > updated then
  level = math.min(capacity, level + (now - updated) * rate)
  updated = now
end
local wait_ms = 0
if mode == 'spend' then
  level = level - cost
elseif level + 1e-6 < cost then
  wait_ms = math.max(1, math.ceil((cost - level) / rate * 1000))
elseif mode == 'take' then
  level = level - cost
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'updated', tostring(updated))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - level) / rate * 1000) + 1000)
return wait_ms
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every replica; each update is one atomic script.

    Time comes from the Redis server (`TIME`), so replicas with skewed clocks
    agree; tests inject `clock` (seconds) instead. Keys are
    `<key_prefix><tenant>:requests` and `...:tokens`, and expire once full.
    """

    def __init__(
        self,
        redis_url: str,
        requests_per_minute: int,
        tokens_per_minute: int,
        *,
        key_prefix: str = "semcache:ratelimit:",
        timeout_s: float = 0.5,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._redis_error = RedisError
        self._script = self._redis.register_script(_BUCKET_SCRIPT)
        self._per_minute: dict[Limit, int] = {
            "requests": requests_per_minute,
            "tokens": tokens_per_minute,
        }
        self._prefix = key_prefix
        self._clock = clock
        self._down_until = -math.inf  # monotonic seconds: Redis is not asked before then

    async def acquire_request(self, tenant: str) -> None:
        """Take one request from the tenant's shared bucket.

        Raises:
            RateLimitedError: the tenant made its requests-per-minute already.
        """
        await self._run(tenant, "requests", 1, "take")

    async def check_tokens(self, tenant: str) -> None:
        """Refuse a new upstream call while the tenant's token bucket is empty or in debt.

        Raises:
            RateLimitedError: the bucket holds less than one token.
        """
        await self._run(tenant, "tokens", 1, "check")

    async def spend_tokens(self, tenant: str, tokens: int) -> None:
        """Debit the tokens an upstream call used (the bucket may go below zero)."""
        if tokens > 0:
            await self._run(tenant, "tokens", tokens, "spend")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def _run(self, tenant: str, limit: Limit, cost: int, mode: str) -> None:
        per_minute = self._per_minute[limit]
        if not per_minute:
            return
        if time.monotonic() < self._down_until:
            return  # Redis failed a moment ago: let requests through without waiting on it
        now_s = self._clock() if self._clock is not None else -1.0
        args = (per_minute, per_minute / 60, cost, mode, now_s)
        try:
            wait_ms = int(await self._script(keys=[f"{self._prefix}{tenant}:{limit}"], args=args))
        except self._redis_error as error:
            # Found from outside: a Redis that hung added its 0.5 s timeout to every
            # request, and each logged its own line. Now one line per back-off.
            self._down_until = time.monotonic() + REDIS_RETRY_AFTER_S
            log.warning(
                "rate limiter unavailable; allowing requests without it for a while",
                retry_after_s=REDIS_RETRY_AFTER_S,
                error=str(error),
            )
            return
        if wait_ms > 0:
            raise RateLimitedError(tenant, limit, per_minute, wait_ms / 1000)
