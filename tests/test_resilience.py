"""Retries, fallbacks, circuit breakers and queue bounds, over real HTTP against the simulator.

Time is a fake clock: backoff sleeps advance it instead of waiting, so the
tests check the delays chosen, never how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest

from semcache_simulator import FaultConfig, SimulatorConfig, UpstreamSimulator
from semcache_simulator.faults import FaultPlanner
from service.domain import ChatMessage, SamplingParams, Usage
from service.errors import (
    InvalidRequestError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from service.llm.admission import CircuitBreaker, ConcurrencyLimit, RetryPolicy
from service.llm.catalogue import Catalogue, parse_catalogue
from service.llm.http_errors import retry_after_from_headers
from service.llm.openai_compat import OpenAICompatProvider
from service.llm.provider import Provider, ProviderAnswer, ProviderCall
from service.llm.resilience import (
    ResilienceOptions,
    ResilientProvider,
    UpstreamBusyError,
)

SMALL, MEDIUM, LARGE = "gpt-4o-mini", "claude-3-5-haiku", "gpt-4o"
QUESTION = "What is the capital of France?"


class FakeClock:
    """Monotonic time that only moves when a backoff sleeps or a test advances it."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.sleeps_s: list[float] = []

    def now(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.sleeps_s.append(delay_s)
        self.now_s += delay_s
        await asyncio.sleep(0)


def _document(
    base_url: str,
    *,
    max_concurrency: int = 8,
    max_queue: int = 8,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Two providers on one simulator: openai (small, large) and anthropic (medium)."""

    def provider(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "base_url": base_url,
            "max_concurrency": max_concurrency,
            "max_queue": max_queue,
            "timeout_s": 5,
        }

    def model(name: str, provider: str, tier: str, fallbacks: list[str]) -> dict[str, Any]:
        entry = {
            "name": name,
            "provider": provider,
            "tier": tier,
            "input_usd_per_mtok": 1.0,
            "output_usd_per_mtok": 2.0,
            "context_window_tokens": 100_000,
            "fallbacks": fallbacks,
        }
        return {**entry, **(overrides or {}).get(name, {})}

    return {
        "providers": [provider("openai"), provider("anthropic")],
        "models": [
            model(SMALL, "openai", "small", [MEDIUM]),
            model(MEDIUM, "anthropic", "medium", []),
            model(LARGE, "openai", "large", [MEDIUM]),
        ],
    }


def _catalogue(base_url: str, **kwargs: Any) -> Catalogue:
    return parse_catalogue(_document(base_url, **kwargs), env={}, source="test catalogue")


def _clients(catalogue: Catalogue) -> dict[str, Provider]:
    clients: dict[str, Provider] = {}
    for name, spec in catalogue.providers.items():
        assert spec.base_url is not None
        clients[name] = OpenAICompatProvider(spec.base_url, "k", spec.timeout_s, name=name)
    return clients


@asynccontextmanager
async def _gateway(
    sim: UpstreamSimulator,
    clock: FakeClock,
    *,
    retry_attempts: int = 3,
    breaker_failures: int = 5,
    **catalogue_kwargs: Any,
) -> AsyncIterator[ResilientProvider]:
    catalogue = _catalogue(sim.base_url, **catalogue_kwargs)
    options = ResilienceOptions(
        retry=RetryPolicy(max_attempts=retry_attempts, base_delay_s=0.1, max_delay_s=1.0),
        breaker_failures=breaker_failures,
        breaker_cooldown_s=30.0,
    )
    provider = ResilientProvider(
        catalogue, _clients(catalogue), options, clock=clock.now, sleep=clock.sleep
    )
    try:
        yield provider
    finally:
        await provider.close()


@asynccontextmanager
async def _simulator(
    faults: dict[str, FaultConfig] | None = None, seed: int = 0, api_key: str | None = None
) -> AsyncIterator[UpstreamSimulator]:
    config = SimulatorConfig(
        ttft_ms=0, ms_per_token=0, faults=faults or {}, seed=seed, api_key=api_key
    )
    async with UpstreamSimulator(config) as sim:
        yield sim


def _seed_with_outcomes(model: str, fault: FaultConfig, outcomes: list[str]) -> int:
    """A simulator seed whose first requests to `model` meet exactly `outcomes`."""
    for seed in range(1000):
        planner = FaultPlanner(SimulatorConfig(faults={model: fault}, seed=seed))
        if [planner.plan(model).outcome for _ in outcomes] == outcomes:
            return seed
    raise AssertionError(f"no seed in 0..999 gives {outcomes}")


def _call(model: str, text: str = QUESTION, timeout_s: float = 10.0) -> ProviderCall:
    return ProviderCall(model, (ChatMessage("user", text),), SamplingParams(), timeout_s)


async def _collect(stream: AsyncIterator[str | ProviderAnswer]) -> tuple[list[str], Any]:
    deltas: list[str] = []
    final: ProviderAnswer | None = None
    async for item in stream:
        if isinstance(item, ProviderAnswer):
            final = item
        else:
            deltas.append(item)
    return deltas, final


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never came true")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- retries ---------------------------------------------------------------------------


async def test_a_server_error_is_retried_and_the_retry_answers(clock: FakeClock) -> None:
    fault = FaultConfig(error_rate=0.5)
    seed = _seed_with_outcomes(SMALL, fault, ["server_error", "answer"])
    async with _simulator({SMALL: fault}, seed) as sim, _gateway(sim, clock) as provider:
        answer = await provider.complete(_call(SMALL))

    assert isinstance(answer, ProviderAnswer)
    assert (answer.model, answer.attempts, answer.fallback_from) == (SMALL, 2, None)
    assert answer.content
    assert sim.request_count(SMALL) == 2
    assert len(clock.sleeps_s) == 1
    assert 0 <= clock.sleeps_s[0] <= 0.1  # full jitter under the first backoff step


async def test_a_429_waits_at_least_its_retry_after(clock: FakeClock) -> None:
    fault = FaultConfig(rate_limit_rate=0.5, retry_after_s=2.5)
    seed = _seed_with_outcomes(SMALL, fault, ["rate_limited", "answer"])
    async with _simulator({SMALL: fault}, seed) as sim, _gateway(sim, clock) as provider:
        answer = await provider.complete(_call(SMALL))

    assert (answer.model, answer.attempts) == (SMALL, 2)
    assert clock.sleeps_s == [pytest.approx(2.5)]


async def test_a_retry_after_beyond_the_deadline_fails_over_instead_of_waiting(
    clock: FakeClock,
) -> None:
    fault = FaultConfig(rate_limit_rate=1.0, retry_after_s=30)
    async with _simulator({LARGE: fault}) as sim, _gateway(sim, clock) as provider:
        answer = await provider.complete(_call(LARGE, timeout_s=5.0))

    assert (answer.model, answer.fallback_from, answer.attempts) == (MEDIUM, LARGE, 2)
    assert clock.sleeps_s == []


async def test_a_rejected_request_is_neither_retried_nor_failed_over(clock: FakeClock) -> None:
    async with _simulator() as sim, _gateway(sim, clock) as provider:
        # A request the provider refuses as such: HTTP 400.
        call = replace(_call(SMALL), sampling=SamplingParams(max_tokens=-1))
        with pytest.raises(UpstreamRejectedError, match="400"):
            await provider.complete(call)

    assert clock.sleeps_s == []  # not retried; and a fallback would have raised otherwise


async def test_a_model_the_provider_does_not_serve_fails_over_and_blames_no_caller(
    clock: FakeClock,
) -> None:
    """Found from outside: a 404 (the catalogue's model unknown at that address) was
    INVALID_ARGUMENT, the caller's fault, and never tried on the fallback."""
    async with _simulator() as sim:
        catalogue = _catalogue(sim.base_url)
        unserved = replace(catalogue.models[SMALL], name="gpt-5")
        broken = Catalogue(catalogue.providers, {**catalogue.models, "gpt-5": unserved})
        resilient = ResilientProvider(broken, _clients(broken), clock=clock.now, sleep=clock.sleep)
        answer = await resilient.complete(_call("gpt-5"))
        await resilient.close()

    assert (answer.model, answer.fallback_from, answer.attempts) == (MEDIUM, "gpt-5", 2)
    assert clock.sleeps_s == []


async def test_a_refused_key_fails_over_without_quoting_the_provider(clock: FakeClock) -> None:
    """Found from outside: a provider's 401 was INVALID_ARGUMENT, the caller's fault,
    with the provider's text passed on; OpenAI's quotes the key's last characters."""
    async with _simulator(api_key="sk-the-right-key") as sim:
        catalogue = _catalogue(sim.base_url)
        clients: dict[str, Provider] = {
            name: OpenAICompatProvider(str(spec.base_url), "sk-gateway-9f3a", 10.0, name=name)
            for name, spec in catalogue.providers.items()
        }
        resilient = ResilientProvider(catalogue, clients, clock=clock.now, sleep=clock.sleep)
        with pytest.raises(UpstreamError) as caught:
            await resilient.complete(_call(SMALL))
        await resilient.close()

    message = str(caught.value)
    assert not isinstance(caught.value, UpstreamRejectedError)
    assert "credentials" in message and "9f3a" not in message
    assert SMALL in message and MEDIUM in message  # failed over, each tried once
    assert clock.sleeps_s == []


async def test_a_provider_timeout_is_retried_then_failed_over(clock: FakeClock) -> None:
    slow = FaultConfig(spike_rate=1.0, spike_ms=300)
    async with _simulator({LARGE: slow}) as sim:
        catalogue = _catalogue(sim.base_url)
        impatient = replace(catalogue.providers["openai"], timeout_s=0.05)
        catalogue = Catalogue({**catalogue.providers, "openai": impatient}, catalogue.models)
        options = ResilienceOptions(retry=RetryPolicy(max_attempts=2))
        provider = ResilientProvider(
            catalogue, _clients(catalogue), options, clock=clock.now, sleep=clock.sleep
        )
        answer = await provider.complete(_call(LARGE))
        await provider.close()

    assert (answer.model, answer.attempts) == (MEDIUM, 3)
    assert sim.request_count(LARGE) == 2


# --- fallbacks -------------------------------------------------------------------------


async def test_a_model_that_always_fails_falls_back_to_another_provider(
    clock: FakeClock,
) -> None:
    async with (
        _simulator({LARGE: FaultConfig(error_rate=1.0)}) as sim,
        _gateway(sim, clock) as provider,
    ):
        answer = await provider.complete(_call(LARGE))

    assert (answer.model, answer.fallback_from, answer.attempts) == (MEDIUM, LARGE, 4)
    assert answer.usage.completion_tokens > 0
    assert (sim.request_count(LARGE), sim.request_count(MEDIUM)) == (3, 1)


async def test_a_prompt_too_long_for_the_model_goes_to_a_fallback_that_fits(
    clock: FakeClock,
) -> None:
    small_window = {SMALL: {"context_window_tokens": 50}}
    long_question = "Please tell me about the history of Paris. " * 10  # ~110 tokens
    async with _simulator() as sim, _gateway(sim, clock, overrides=small_window) as provider:
        answer = await provider.complete(_call(SMALL, long_question))
        short = await provider.complete(_call(SMALL))

    assert (answer.model, answer.fallback_from, answer.attempts) == (MEDIUM, SMALL, 1)
    assert short.model == SMALL
    assert sim.request_count(SMALL) == 1


async def test_a_prompt_that_fits_no_model_is_an_invalid_request(clock: FakeClock) -> None:
    tiny = {SMALL: {"context_window_tokens": 5}, MEDIUM: {"context_window_tokens": 5}}
    async with _simulator() as sim, _gateway(sim, clock, overrides=tiny) as provider:
        with pytest.raises(InvalidRequestError, match="context window"):
            await provider.complete(_call(SMALL, "a fairly long question " * 10))

    assert sim.request_count() == 0


# --- circuit breaker -------------------------------------------------------------------


async def test_an_open_breaker_skips_the_provider_without_a_request(clock: FakeClock) -> None:
    async with (
        _simulator({SMALL: FaultConfig(error_rate=1.0)}) as sim,
        _gateway(sim, clock, breaker_failures=2) as provider,
    ):
        first = await provider.complete(_call(SMALL))
        assert provider.breaker_states() == {"openai": "closed", "anthropic": "closed"}
        await provider.complete(_call(SMALL))
        assert provider.breaker_states() == {"openai": "open", "anthropic": "closed"}
        third = await provider.complete(_call(SMALL))

    assert (first.model, first.attempts) == (MEDIUM, 4)
    assert (third.model, third.attempts, third.fallback_from) == (MEDIUM, 1, SMALL)
    assert sim.request_count(SMALL) == 4  # 3 tries, 1 that opened it; none by the third


async def test_one_calls_retries_count_once_on_the_breaker(clock: FakeClock) -> None:
    """Found from outside: one prompt whose calls always failed (the connection cut)
    counted its three attempts as three failures, opening the provider's breaker for
    every other caller for the cool-down. A breaker judges the provider across calls."""
    async with (
        _simulator({SMALL: FaultConfig(error_rate=1.0)}) as sim,
        _gateway(sim, clock, breaker_failures=2, retry_attempts=3) as provider,
    ):
        answer = await provider.complete(_call(SMALL))
        assert sim.request_count(SMALL) == 3
        assert provider.breaker_states()["openai"] == "closed"
        healthy = await provider.complete(_call(LARGE))

    assert (answer.model, answer.fallback_from) == (MEDIUM, SMALL)
    assert (healthy.model, healthy.attempts) == (LARGE, 1)


async def test_a_half_open_breaker_lets_one_trial_through_and_closes_on_success(
    clock: FakeClock,
) -> None:
    # Only gpt-4o-mini fails; gpt-4o, on the same provider, is healthy.
    async with (
        _simulator({SMALL: FaultConfig(error_rate=1.0)}) as sim,
        _gateway(sim, clock, breaker_failures=2, retry_attempts=2) as provider,
    ):
        await provider.complete(_call(SMALL))
        await provider.complete(_call(SMALL))
        clock.now_s += 30.5  # past the 30 s cool-down (exactly 30 can round to 29.99...)
        assert provider.breaker_states()["openai"] == "half_open"
        trial_failed = await provider.complete(_call(SMALL))
        assert provider.breaker_states()["openai"] == "open"  # one failed trial reopens it
        assert sim.request_count(SMALL) == 4  # 2 tries, 1 that opened it, the trial

        clock.now_s += 30.5  # past the 30 s cool-down (exactly 30 can round to 29.99...)
        recovered = await provider.complete(_call(LARGE))

        assert provider.breaker_states()["openai"] == "closed"
    assert (trial_failed.model, trial_failed.attempts) == (MEDIUM, 2)
    assert (recovered.model, recovered.attempts) == (LARGE, 1)


async def test_every_provider_down_fails_fast_naming_the_providers(clock: FakeClock) -> None:
    async with (
        _simulator({"*": FaultConfig(error_rate=1.0)}) as sim,
        _gateway(sim, clock, breaker_failures=1) as provider,
    ):
        with pytest.raises(UpstreamError, match="openai") as first:
            await provider.complete(_call(SMALL))
        requests_before = sim.request_count()
        with pytest.raises(UpstreamError, match="circuit open") as second:
            await provider.complete(_call(LARGE))

    assert type(first.value) is UpstreamError
    assert "anthropic" in str(first.value)
    assert "'anthropic'" in str(second.value) and "'openai'" in str(second.value)
    assert sim.request_count() == requests_before


async def test_a_half_open_breakers_refusal_says_a_trial_is_in_flight(clock: FakeClock) -> None:
    """Found from outside: it said "circuit open for another 0.0s"."""
    async with (
        _simulator({"*": FaultConfig(error_rate=1.0)}) as sim,
        _gateway(sim, clock, breaker_failures=1) as provider,
    ):
        with pytest.raises(UpstreamError):
            await provider.complete(_call(LARGE))
        clock.now_s += 30.5
        assert provider._backends["openai"].breaker.try_acquire()  # another caller's trial
        with pytest.raises(UpstreamError) as caught:
            await provider.complete(_call(LARGE))

    assert "half-open" in str(caught.value) and "0.0s" not in str(caught.value)


def test_breaker_state_machine_with_a_fake_clock(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=clock.now)
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert (breaker.state, breaker.try_acquire()) == ("open", False)
    clock.now_s += 10
    assert breaker.state == "half_open"
    assert [breaker.try_acquire(), breaker.try_acquire()] == [True, False]
    breaker.release()  # the trial was cancelled: another may go
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.state == "closed"


# --- streaming -------------------------------------------------------------------------


async def test_a_stream_failing_before_its_first_delta_fails_over(clock: FakeClock) -> None:
    async with (
        _simulator({SMALL: FaultConfig(error_rate=1.0)}) as sim,
        _gateway(sim, clock, retry_attempts=1) as provider,
    ):
        deltas, final = await _collect(provider.stream(_call(SMALL)))

    assert isinstance(final, ProviderAnswer)
    assert (final.model, final.fallback_from, final.attempts) == (MEDIUM, SMALL, 2)
    assert "".join(deltas) == final.content != ""


async def test_a_stream_broken_after_its_first_delta_raises_and_does_not_fail_over(
    clock: FakeClock,
) -> None:
    deltas: list[str] = []
    async with (
        _simulator({SMALL: FaultConfig(disconnect_rate=1.0)}) as sim,
        _gateway(sim, clock) as provider,
    ):
        with pytest.raises(UpstreamError, match="broke after") as broken:
            async for item in provider.stream(_call(SMALL)):
                assert isinstance(item, str)
                deltas.append(item)

    sent = len("".join(deltas))
    assert sent > 0
    assert f"after {sent} characters" in str(broken.value)
    assert sim.request_count(MEDIUM) == 0


# --- concurrency limit -----------------------------------------------------------------


async def test_calls_beyond_the_queue_bound_are_refused_as_busy(clock: FakeClock) -> None:
    no_fallback = {SMALL: {"fallbacks": []}}
    async with (
        _simulator() as sim,
        _gateway(sim, clock, max_concurrency=1, max_queue=1, overrides=no_fallback) as provider,
    ):
        holder = provider.stream(_call(SMALL))
        assert isinstance(await anext(holder), str)  # the only slot is now taken
        queued = asyncio.create_task(provider.complete(_call(SMALL)))
        await _until(lambda: provider.queue_depths()["openai"] == 1)

        with pytest.raises(UpstreamBusyError, match="openai"):
            await provider.complete(_call(SMALL))
        assert sim.request_count(SMALL) == 1

        await holder.aclose()
        answer = await queued

    assert answer.model == SMALL
    assert provider.breaker_states()["openai"] == "closed"


async def test_waiting_for_a_slot_counts_against_the_deadline() -> None:
    no_fallback = {SMALL: {"fallbacks": []}}
    async with _simulator() as sim:
        catalogue = _catalogue(sim.base_url, max_concurrency=1, max_queue=1, overrides=no_fallback)
        provider = ResilientProvider(catalogue, _clients(catalogue))
        holder = provider.stream(_call(SMALL))
        await anext(holder)
        with pytest.raises(UpstreamTimeoutError, match="free slot"):
            await provider.complete(_call(SMALL, timeout_s=0.01))
        await holder.aclose()
        await provider.close()

    assert provider.breaker_states()["openai"] == "closed"


async def test_a_free_slot_is_taken_without_a_timer_and_given_back_after_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every upstream call holds a slot: a free one costs no deadline timer (issue 13),
    and a body that fails still gives its slot back."""
    limit = ConcurrencyLimit("p", max_concurrency=1, max_queue=0)

    def no_timer(delay: float | None) -> Any:
        raise AssertionError("a timer was set for a free slot")

    monkeypatch.setattr(asyncio, "timeout", no_timer)
    with pytest.raises(RuntimeError, match="body failed"):
        async with limit.slot(5.0):
            raise RuntimeError("body failed")
    async with limit.slot(5.0):  # given back: the only slot is free again
        with pytest.raises(UpstreamBusyError, match="busy"):
            async with limit.slot(5.0):
                pass


# --- pieces ----------------------------------------------------------------------------


def _uniform(value: float) -> Iterator[float]:
    while True:
        yield value


def test_backoff_grows_exponentially_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.1, max_delay_s=0.5)
    top = _uniform(0.999999)
    delays = [policy.delay_s(n, None, lambda: next(top)) for n in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5], rel=1e-3)
    assert policy.delay_s(0, 3.0, lambda: 0.5) == 3.0
    assert policy.delay_s(2, None, lambda: 0.0) == 0.0  # full jitter reaches zero


def test_retry_after_is_read_from_milliseconds_seconds_or_a_date() -> None:
    assert retry_after_from_headers(httpx.Headers({"retry-after-ms": "2500"})) == 2.5
    assert retry_after_from_headers(httpx.Headers({"Retry-After": "3"})) == 3.0
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after_from_headers(httpx.Headers({"Retry-After": past})) == 0.0
    assert retry_after_from_headers(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_from_headers(httpx.Headers({})) is None


async def test_one_models_rate_limit_does_not_open_its_providers_breaker(
    clock: FakeClock,
) -> None:
    """Found from outside: five 429s on gpt-4o-mini opened the breaker for all of
    openai, and gpt-4o's next caller was answered by claude without gpt-4o being
    asked. A 429 is the provider pacing one model (or key), not an outage."""
    fault = FaultConfig(rate_limit_rate=1.0, retry_after_s=30)
    async with (
        _simulator({SMALL: fault}) as sim,
        _gateway(sim, clock, breaker_failures=3) as provider,
    ):
        for _ in range(4):
            paced = await provider.complete(_call(SMALL, timeout_s=5.0))
            assert (paced.model, paced.fallback_from) == (MEDIUM, SMALL)
        states = provider.breaker_states()
        other = await provider.complete(_call(LARGE))

    assert states == {"openai": "closed", "anthropic": "closed"}
    assert (other.model, other.fallback_from) == (LARGE, None)


def test_calls_failing_with_one_shared_error_count_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=clock.now)
    shared = UpstreamError("HTTP 500 for a grouped request of five prompts")
    for _ in range(5):
        assert breaker.try_acquire()
        breaker.record_failure(shared)
    assert breaker.state == "closed"  # one upstream failure, not five
    breaker.record_failure(UpstreamError("another request failed"))
    assert breaker.state == "open"


class _Unmetered:
    """A provider that answers but reports no token usage (some OpenAI-compatible
    servers send none, or ignore `stream_options.include_usage`)."""

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        self.calls += 1
        return ProviderAnswer("Paris is the capital of France.", call.model, "stop", Usage())

    async def stream(self, call: ProviderCall) -> AsyncIterator[str | ProviderAnswer]:
        yield "Paris is the capital of France."
        yield ProviderAnswer("Paris is the capital of France.", call.model, "stop", Usage())

    async def close(self) -> None:
        return None


async def test_an_answer_without_usage_is_counted_at_an_estimate(clock: FakeClock) -> None:
    """Found from outside: a provider that sent no usage made its answers cost $0, their
    hits save $0, and their tokens escape the per-minute limit."""
    catalogue = _catalogue("http://127.0.0.1:1/v1")
    unmetered = _Unmetered()
    clients: dict[str, Provider] = {name: unmetered for name in catalogue.providers}
    provider = ResilientProvider(
        catalogue, clients, ResilienceOptions(), clock=clock.now, sleep=clock.sleep
    )
    answer = await provider.complete(_call(SMALL, "What is the capital of France?"))
    _, streamed = await _collect(provider.stream(_call(SMALL, "What is the capital of France?")))
    for usage in (answer.usage, streamed.usage):
        assert usage.prompt_tokens > 0 and usage.completion_tokens >= 6  # 6 words at least
