"""Rate limits: token buckets in memory and in a real Redis server, and the RetryInfo trailer.

Time is an injected clock everywhere; nothing here waits on the wall clock.
The same behaviour tests run against both backends.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import redis
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.ratelimit import (
    InMemoryRateLimiter,
    RateLimitedError,
    RateLimiter,
    RedisRateLimiter,
)
from service.transport.grpc.status import (
    STATUS_DETAILS_KEY,
    abort_with_retry_info,
    retry_info_trailer,
)

BACKENDS = ("memory", "redis")


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


# --- a real Redis server ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until_up(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def wait_until_up(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    with redis.Redis.from_url(url) as client:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


# --- one limiter per backend -----------------------------------------------------------

MakeLimiter = Callable[..., RateLimiter]


@pytest_asyncio.fixture(params=BACKENDS)
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    made: list[RateLimiter] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    prefix = f"test:{uuid.uuid4().hex}:"  # each test its own buckets

    def make(requests_per_minute: int, tokens_per_minute: int, clock: FakeClock) -> RateLimiter:
        limiter: RateLimiter
        if request.param == "memory":
            limiter = InMemoryRateLimiter(requests_per_minute, tokens_per_minute, clock)
        else:
            limiter = RedisRateLimiter(
                url, requests_per_minute, tokens_per_minute, key_prefix=prefix, clock=clock
            )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def test_requests_burst_to_the_limit_then_wait_for_the_refill(
    make_limiter: MakeLimiter,
) -> None:
    clock = FakeClock()
    limiter = make_limiter(60, 0, clock)  # one request per second, a burst of 60
    for _ in range(60):
        await limiter.acquire_request("acme")
    with pytest.raises(RateLimitedError) as raised:
        await limiter.acquire_request("acme")
    assert raised.value.retry_after_s == pytest.approx(1.0, abs=0.001)
    assert raised.value.limit == "requests"
    assert "tenant 'acme' is over its limit of 60 requests per minute" in str(raised.value)
    clock.advance(0.5)
    with pytest.raises(RateLimitedError) as raised:
        await limiter.acquire_request("acme")
    assert raised.value.retry_after_s == pytest.approx(0.5, abs=0.001)
    clock.advance(0.5)
    await limiter.acquire_request("acme")


async def test_a_refused_request_is_not_counted(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(1, 0, clock)
    await limiter.acquire_request("acme")
    for _ in range(5):
        with pytest.raises(RateLimitedError):
            await limiter.acquire_request("acme")
    clock.advance(60)
    await limiter.acquire_request("acme")


async def test_tenants_have_separate_buckets(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(1, 0, FakeClock())
    await limiter.acquire_request("acme")
    await limiter.acquire_request("globex")
    with pytest.raises(RateLimitedError):
        await limiter.acquire_request("acme")


async def test_an_idle_tenant_saves_up_one_minute_at_most(make_limiter: MakeLimiter) -> None:
    clock = FakeClock()
    limiter = make_limiter(2, 0, clock)
    clock.advance(3600)
    await limiter.acquire_request("acme")
    await limiter.acquire_request("acme")
    with pytest.raises(RateLimitedError):
        await limiter.acquire_request("acme")


async def test_zero_means_unlimited(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(0, 0, FakeClock())
    for _ in range(500):
        await limiter.acquire_request("acme")
        await limiter.check_tokens("acme")
        await limiter.spend_tokens("acme", 10_000)


async def test_tokens_are_checked_before_and_debited_after_the_call(
    make_limiter: MakeLimiter,
) -> None:
    clock = FakeClock()
    limiter = make_limiter(0, 600, clock)  # 10 tokens per second, a burst of 600
    await limiter.check_tokens("acme")
    await limiter.spend_tokens("acme", 500)
    await limiter.check_tokens("acme")  # 100 left: the next call may go
    await limiter.spend_tokens("acme", 700)  # an answer bigger than what was left: 600 in debt
    with pytest.raises(RateLimitedError) as raised:
        await limiter.check_tokens("acme")
    assert raised.value.limit == "tokens"
    assert raised.value.retry_after_s == pytest.approx(60.1, abs=0.001)  # to 1 token, at 10/s
    clock.advance(60.1)
    await limiter.check_tokens("acme")


async def test_checking_tokens_takes_none(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(0, 1, FakeClock())
    for _ in range(10):
        await limiter.check_tokens("acme")


async def test_cache_hits_spend_requests_but_not_tokens(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(100, 60, FakeClock())
    await limiter.spend_tokens("acme", 1_000)  # the token bucket is deep in debt
    for _ in range(100):
        await limiter.acquire_request("acme")  # what a hit asks for
    with pytest.raises(RateLimitedError):
        await limiter.check_tokens("acme")  # what a miss asks for as well


async def test_forgetting_idle_tenants_keeps_a_tenant_in_debt() -> None:
    clock = FakeClock()
    limiter = InMemoryRateLimiter(0, 60, clock)
    await limiter.spend_tokens("acme", 10_000)  # about 2.8 hours of debt
    for index in range(10_001):  # enough tenants to make the limiter forget the full ones
        await limiter.spend_tokens(f"tenant-{index}", 1)
    clock.advance(120)
    await limiter.spend_tokens("newcomer", 1)
    with pytest.raises(RateLimitedError):
        await limiter.check_tokens("acme")
    await limiter.check_tokens("tenant-7")


# --- Redis only ------------------------------------------------------------------------


async def test_replicas_share_their_buckets_through_redis(redis_url: str) -> None:
    clock = FakeClock()
    prefix = f"test:{uuid.uuid4().hex}:"
    first = RedisRateLimiter(redis_url, 2, 0, key_prefix=prefix, clock=clock)
    second = RedisRateLimiter(redis_url, 2, 0, key_prefix=prefix, clock=clock)
    try:
        await first.acquire_request("acme")
        await second.acquire_request("acme")
        with pytest.raises(RateLimitedError):
            await first.acquire_request("acme")
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_keys_expire_once_the_bucket_would_be_full(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(redis_url, 60, 0, key_prefix=prefix, clock=FakeClock())
    try:
        await limiter.acquire_request("acme")
    finally:
        await limiter.aclose()
    with redis.Redis.from_url(redis_url) as client:
        ttl_ms = client.pttl(f"{prefix}acme:requests")
    assert 1_000 < ttl_ms <= 2_000  # one request refills in 1 s, plus a 1 s margin


async def test_redis_server_time_is_used_without_a_clock(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url, 1, 0, key_prefix=f"test:{uuid.uuid4().hex}:")
    try:
        await limiter.acquire_request("acme")
        with pytest.raises(RateLimitedError) as raised:
            await limiter.acquire_request("acme")
    finally:
        await limiter.aclose()
    assert 0 < raised.value.retry_after_s <= 60


async def test_an_unreachable_redis_lets_requests_through_and_is_asked_once_a_while() -> None:
    """Found from outside: a Redis that hung added its timeout to every request, each
    with its own warning line. After a failure it is left alone for a while."""
    from structlog.testing import capture_logs

    url = f"redis://127.0.0.1:{free_port()}/0"
    limiter = RedisRateLimiter(url, 1, 1, timeout_s=0.2, clock=FakeClock())
    asked: list[object] = []
    script = limiter._script

    async def counted(*args: object, **kwargs: object) -> object:
        asked.append(args)
        return await script(*args, **kwargs)

    limiter._script = counted  # type: ignore[assignment]
    try:
        with capture_logs() as logs:
            for _ in range(3):
                await limiter.acquire_request("acme")
                await limiter.check_tokens("acme")
    finally:
        await limiter.aclose()
    assert len(asked) == 1
    assert len([e for e in logs if "rate limiter unavailable" in e["event"]]) == 1


# --- RetryInfo -------------------------------------------------------------------------


def test_retry_info_trailer_round_trips() -> None:
    ((key, value),) = retry_info_trailer(1.2345, "slow down")
    assert key == STATUS_DETAILS_KEY
    status = status_pb2.Status.FromString(value)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "slow down"
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 1235  # rounded up: never retry too early


async def limited(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await abort_with_retry_info(context, RateLimitedError("acme", "requests", 60, 2.5))


@pytest_asyncio.fixture
async def limited_channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(limited)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Limited", {"Call": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(0)


async def test_a_limited_rpc_tells_the_client_when_to_retry(
    limited_channel: grpc.aio.Channel,
) -> None:
    call = limited_channel.unary_unary("/test.Limited/Call")(b"")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in 2.50 s" in (raised.value.details() or "")
    status = await rpc_status.aio.from_call(call)  # what a client library does
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 2500
