"""The `Provider` protocol: one chat completion, unary or streamed."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from service.domain import ChatMessage, SamplingParams, Usage


@dataclass(frozen=True)
class ProviderCall:
    """One upstream call. `timeout_s` already accounts for the caller's deadline."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    timeout_s: float


@dataclass(frozen=True)
class ProviderAnswer:
    """A complete upstream answer.

    `attempts` counts the upstream calls it took (retries and fallbacks
    included); `fallback_from` names the requested model when another answered;
    `simulated`: it bears semcache's simulator's mark (`llm.simulator_probe`).
    """

    content: str
    model: str
    finish_reason: str
    usage: Usage
    tool_calls_json: str = ""
    attempts: int = 1
    fallback_from: str | None = None
    simulated: bool = False


class Provider(Protocol):
    """An upstream LLM. Errors are raised as `service.errors.UpstreamError` subclasses."""

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        """The whole answer in one piece."""
        ...

    def stream(self, call: ProviderCall) -> AsyncGenerator[str | ProviderAnswer, None]:
        """Text deltas as they arrive, then exactly one `ProviderAnswer` with the full text.

        Closing the iterator early closes the upstream stream.
        """
        ...

    async def close(self) -> None: ...
