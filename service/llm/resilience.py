"""`ResilientProvider`: one `Provider` in front of every provider in the catalogue.

For each call it walks the requested model's fallback chain (the model, its
fallbacks, their fallbacks), skipping models whose context window the prompt
cannot fit and providers whose circuit breaker is open. On each model it
retries 429s, 5xx, timeouts and lost connections with jittered exponential
backoff, honouring Retry-After, always within the caller's deadline
(`ProviderCall.timeout_s`). Each provider has its own breaker and its own
concurrency limit with a bounded queue (see `service.llm.admission`). The
breaker counts the provider's failures (5xx, timeouts, lost connections),
not its 429s: one model's rate limit must not send the provider's other
models to their fallbacks.

What a caller sees:
    a `ProviderAnswer`             `model` is the catalogue model that answered;
                                   `attempts` and `fallback_from` say how
    UpstreamRejectedError          a provider refused the request itself; not retried
                                   (a 401, 403 or 404 is the provider's setup instead:
                                   it fails over, and ends as an UpstreamError)
    InvalidRequestError            the prompt fits no model of the chain
    UpstreamBusyError              every candidate provider was at its queue bound
    UpstreamTimeoutError           the deadline ran out first
    UpstreamError                  every candidate failed; the message names them

A stream that fails before its first delta fails over like a unary call. One
that fails after it cannot be resumed: it raises `UpstreamError` saying how
many characters had been sent, and the gateway stores nothing.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace

import structlog

from service.domain import Usage
from service.errors import (
    InvalidRequestError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from service.llm.admission import (
    BreakerState,
    CircuitBreaker,
    Clock,
    ConcurrencyLimit,
    QueueTimeoutError,
    RetryPolicy,
)
from service.llm.catalogue import Catalogue, ProviderSpec, estimate_prompt_tokens, estimate_usage
from service.llm.grouping import GroupingProvider
from service.llm.http_errors import ProviderSetupError, RetryableUpstreamError
from service.llm.openai_compat import OpenAICompatProvider
from service.llm.provider import Provider, ProviderAnswer, ProviderCall

log = structlog.get_logger(__name__)

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "ResilienceOptions",
    "ResilientProvider",
    "RetryPolicy",
    "UpstreamBusyError",
    "build_resilient_provider",
]

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class ResilienceOptions:
    """Retry and circuit-breaker settings shared by every provider.

    Concurrency and queue bounds are per provider, in the catalogue.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0


@dataclass
class _Backend:
    spec: ProviderSpec
    provider: Provider
    breaker: CircuitBreaker
    limit: ConcurrencyLimit


class _CircuitOpenError(UpstreamError):
    """Internal: the provider's breaker refused the call; fail over without a request."""


_FAIL_OVER_AT_ONCE = (_CircuitOpenError, UpstreamBusyError, ProviderSetupError)


class _Run:
    """One call's walk through its chain: deadline, attempts made, failures seen."""

    def __init__(self, call: ProviderCall, clock: Clock) -> None:
        self.call = call
        self.attempts = 0
        self._clock = clock
        self._deadline = clock() + call.timeout_s
        self._failures: list[tuple[str, str, UpstreamError]] = []
        self.blamed: set[str] = set()  # providers whose breaker counted a failure of this call

    def remaining_s(self) -> float:
        return self._deadline - self._clock()

    def note(self, model: str, provider: str, error: UpstreamError) -> None:
        self._failures.append((model, provider, error))

    def answer(self, answer: ProviderAnswer, model: str) -> ProviderAnswer:
        requested = self.call.model
        return ProviderAnswer(
            content=answer.content,
            model=model,
            finish_reason=answer.finish_reason,
            usage=_usage_or_estimate(answer, self.call),
            tool_calls_json=answer.tool_calls_json,
            attempts=self.attempts,
            fallback_from=requested if model != requested else None,
            simulated=answer.simulated,
        )

    def exhausted(self) -> UpstreamError:
        """The error to raise when no candidate answered."""
        providers = sorted({provider for _, provider, _ in self._failures})
        summary = "; ".join(f"{m} at {p}: {e}" for m, p, e in self._failures)
        what = f"no upstream answered for model {self.call.model!r}"
        if self.remaining_s() <= 0:
            return UpstreamTimeoutError(
                f"{what} within the deadline of {self.call.timeout_s:.3g}s ({summary})"
            )
        errors = [error for _, _, error in self._failures]
        if errors and all(isinstance(e, UpstreamBusyError) for e in errors):
            return UpstreamBusyError(f"{what}: providers {providers} are busy ({summary})")
        return UpstreamError(f"{what}: providers {providers} are unavailable ({summary})")


class ResilientProvider:
    """A `Provider` that routes `call.model` to its catalogue provider, with retries,
    fallbacks, circuit breakers and concurrency limits.

    `providers` maps every catalogue provider name to its client. `clock`,
    `sleep` and `rng` are injectable so tests control time and jitter.

    Raises:
        ValueError: `providers` lacks a provider the catalogue names.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        providers: Mapping[str, Provider],
        options: ResilienceOptions | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        missing = sorted(set(catalogue.providers) - set(providers))
        if missing:
            raise ValueError(f"no client given for catalogue providers {missing}")
        self._options = options or ResilienceOptions()
        self._catalogue = catalogue
        self._clock = clock
        self._sleep = sleep
        self._uniform = (rng or random.Random()).random
        self._backends = {
            name: self._backend(spec, providers[name]) for name, spec in catalogue.providers.items()
        }

    def _backend(self, spec: ProviderSpec, provider: Provider) -> _Backend:
        options = self._options
        breaker = CircuitBreaker(options.breaker_failures, options.breaker_cooldown_s, self._clock)
        limit = ConcurrencyLimit(spec.name, spec.max_concurrency, spec.max_queue)
        return _Backend(spec, provider, breaker, limit)

    def breaker_states(self) -> dict[str, str]:
        """Each provider's breaker state: `closed`, `open` or `half_open` (for metrics)."""
        return {name: backend.breaker.state for name, backend in self._backends.items()}

    def queue_depths(self) -> dict[str, int]:
        """Calls waiting for a free slot, per provider (for metrics)."""
        return {name: backend.limit.waiting for name, backend in self._backends.items()}

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        """The whole answer from the first model of the chain that gives one.

        Raises:
            InvalidRequestError: unknown model, or the prompt fits no model of the chain.
            UpstreamRejectedError, UpstreamBusyError, UpstreamTimeoutError,
            UpstreamError: see the module docstring.
        """
        run = _Run(call, self._clock)
        for model in self._chain(call):
            for retry in range(self._options.retry.max_attempts):
                try:
                    async with self._attempt(run, model) as (provider, attempt_call):
                        answer = await provider.complete(attempt_call)
                    return run.answer(answer, model)
                except UpstreamRejectedError:
                    raise
                except UpstreamError as error:
                    if not await self._may_retry(run, model, retry, error):
                        break
        raise run.exhausted()

    async def stream(self, call: ProviderCall) -> AsyncGenerator[str | ProviderAnswer, None]:
        """Deltas, then one `ProviderAnswer`; fails over until the first delta is sent.

        Raises:
            UpstreamError: the stream broke after its first delta (the message
                says after how many characters), or as `complete`.
        """
        run = _Run(call, self._clock)
        for model in self._chain(call):
            for retry in range(self._options.retry.max_attempts):
                sent_chars = 0
                final: ProviderAnswer | None = None
                try:
                    async with (
                        self._attempt(run, model) as (provider, attempt_call),
                        aclosing(provider.stream(attempt_call)) as upstream,
                    ):
                        async for item in upstream:
                            if isinstance(item, ProviderAnswer):
                                final = item
                                break
                            sent_chars += len(item)
                            yield item
                except UpstreamRejectedError:
                    raise
                except UpstreamError as error:
                    if sent_chars:
                        raise _broken_stream(model, sent_chars, error) from error
                    if not await self._may_retry(run, model, retry, error):
                        break
                    continue
                if final is None:
                    raise UpstreamError(f"the stream from {model} ended without its final answer")
                yield run.answer(final, model)
                return
        raise run.exhausted()

    async def close(self) -> None:
        """Close every provider's client."""
        for backend in self._backends.values():
            await backend.provider.close()

    def _chain(self, call: ProviderCall) -> list[str]:
        """The requested model and its fallbacks, breadth first, that the prompt fits.

        Raises:
            InvalidRequestError: unknown model, or no model of the chain fits the prompt.
        """
        chain = [self._catalogue.require_model(call.model).name]
        for name in chain:
            chain.extend(f for f in self._catalogue.models[name].fallbacks if f not in chain)
        needed = estimate_prompt_tokens(call.messages) + (call.sampling.max_tokens or 0)
        fitting = [m for m in chain if self._catalogue.models[m].context_window_tokens >= needed]
        if not fitting:
            windows = {m: self._catalogue.models[m].context_window_tokens for m in chain}
            raise InvalidRequestError(
                f"the prompt (about {needed} tokens with max_tokens) fits no model's context "
                f"window among {windows}; shorten the conversation or lower max_tokens"
            )
        return fitting

    @asynccontextmanager
    async def _attempt(self, run: _Run, model: str) -> AsyncIterator[tuple[Provider, ProviderCall]]:
        """One upstream call to `model`: breaker permit and slot held for the body, and
        the outcome recorded on the breaker.

        Raises:
            _CircuitOpenError: the breaker refused; no request was made.
            UpstreamBusyError, QueueTimeoutError: no slot (see `ConcurrencyLimit`).
        """
        backend = self._backends[self._catalogue.models[model].provider]
        if not backend.breaker.try_acquire():
            open_for_s = backend.breaker.open_for_s()
            raise _CircuitOpenError(
                f"circuit open for another {open_for_s:.1f}s after repeated failures"
                if open_for_s > 0
                else "circuit half-open after repeated failures: one trial call is in flight"
            )
        timeout_s: float | None = None
        try:
            async with backend.limit.slot(run.remaining_s()):
                timeout_s = min(run.remaining_s(), backend.spec.timeout_s)
                if timeout_s <= 0:
                    raise QueueTimeoutError("the deadline ran out before the call could start")
                run.attempts += 1
                yield backend.provider, replace(run.call, model=model, timeout_s=timeout_s)
        except BaseException as error:
            _settle(backend, error, timeout_s, run.blamed)
            raise
        backend.breaker.record_success()

    async def _may_retry(self, run: _Run, model: str, retry: int, error: UpstreamError) -> bool:
        """Note the failure, wait out the backoff and say whether to retry `model`."""
        provider = self._catalogue.models[model].provider
        run.note(model, provider, error)
        if isinstance(error, _FAIL_OVER_AT_ONCE) or retry + 1 >= self._options.retry.max_attempts:
            return False
        if self._backends[provider].breaker.state != "closed":
            return False
        retry_after_s = error.retry_after_s if isinstance(error, RetryableUpstreamError) else None
        delay_s = self._options.retry.delay_s(retry, retry_after_s, self._uniform)
        if delay_s >= run.remaining_s():
            return False
        await self._sleep(delay_s)
        return True


def _usage_or_estimate(answer: ProviderAnswer, call: ProviderCall) -> Usage:
    """The provider's token usage, or, when it reported none for an answer it gave, an
    estimate (as for a stream cut short): found from outside, a provider that sent no
    usage made its answers cost $0, its hits save $0, and its tokens escape the
    per-minute limit."""
    if answer.usage.total_tokens or not (answer.content or answer.tool_calls_json):
        return answer.usage
    _warn_no_usage(call.model)
    return estimate_usage(call.messages, answer.content + answer.tool_calls_json)


@functools.cache
def _warn_no_usage(model: str) -> None:
    log.warning(
        "the provider reported no token usage; cost and token limits use an estimate"
        " (about four characters a token)",
        model=model,
    )


def _settle(
    backend: _Backend, error: BaseException, timeout_s: float | None, blamed: set[str]
) -> None:
    """Record a failed attempt on the breaker: only the provider's own failures count,
    and only once per call (`blamed`: the providers this call's failures counted on
    already). Found from outside: one prompt whose calls always broke the connection
    counted its retries and its fallback's as separate failures and opened the
    breaker, refusing every other caller for the cool-down."""
    breaker = backend.breaker
    if isinstance(error, UpstreamRejectedError):
        breaker.record_success()  # it answered; the request was at fault
    elif isinstance(error, QueueTimeoutError | UpstreamBusyError) or timeout_s is None:
        breaker.release()
    elif isinstance(error, UpstreamTimeoutError) and timeout_s < backend.spec.timeout_s:
        breaker.release()  # the caller's short deadline, not the provider's slowness
    elif isinstance(error, RetryableUpstreamError) and error.status == 429:
        breaker.release()  # the provider pacing one model or key, not an outage
    elif isinstance(error, UpstreamError) and (
        backend.spec.name not in blamed or breaker.state != "closed"  # a trial's failure
    ):
        blamed.add(backend.spec.name)
        breaker.record_failure(error)  # a grouped request's failure counts once
    else:
        breaker.release()


def _broken_stream(model: str, sent_chars: int, error: UpstreamError) -> UpstreamError:
    return UpstreamError(
        f"the stream from {model} broke after {sent_chars} characters had been sent, "
        f"so it cannot fail over: {error}"
    )


def build_resilient_provider(
    catalogue: Catalogue,
    options: ResilienceOptions | None = None,
    on_group: Callable[[int], None] | None = None,
) -> ResilientProvider:
    """A `ResilientProvider` with one `OpenAICompatProvider` per catalogue provider,
    behind a `GroupingProvider` where the catalogue sets `group_prompts`
    (`on_group` is told each grouped request's size).

    Raises:
        ValueError: a provider has no base URL (see `Catalogue.with_default_base_url`).
    """
    clients: dict[str, Provider] = {}
    for name, spec in catalogue.providers.items():
        if spec.base_url is None:
            raise ValueError(
                f"{catalogue.source}: provider {name!r} has no base_url; set one in the "
                "catalogue or give the gateway a default upstream"
            )
        client = OpenAICompatProvider(spec.base_url, spec.api_key, spec.timeout_s, name=name)
        clients[name] = (
            client
            if spec.grouping is None
            else GroupingProvider(client, spec.grouping, on_group=on_group)
        )
    return ResilientProvider(catalogue, clients, options)
