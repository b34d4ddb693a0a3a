"""`ScriptedProvider`: a `Provider` for tests that answers from a script, no network.

    provider = ScriptedProvider({"What is 2+2?": "4"})  # other questions: "answer: <q>"
    provider.fail_next(UpstreamError("boom"))           # the next call raises it
    provider.gate = asyncio.Event()                     # calls wait until gate.set(),
                                                        # or fail at their timeout_s
    provider.fallback_from = "gpt-4o"                   # answers come from a fallback

It records every `ProviderCall` in `calls`, so a test can say how many upstream
calls a request path made, and with what. A streamed answer is the scripted
text word by word, then one `ProviderAnswer`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Mapping

from service.domain import Usage
from service.errors import UpstreamTimeoutError
from service.llm.provider import ProviderAnswer, ProviderCall

__all__ = ["ScriptedProvider"]

_PIECE = re.compile(r"\S+\s*|\s+")


def _echo(question: str) -> str:
    return f"answer: {question}"


class ScriptedProvider:
    """A `Provider` whose answer to a call is `script[last user message]`.

    Args:
        script: answers by the final user message; others get `default(message)`.
        default: the answer for questions not in `script` ("answer: <question>").
        finish_reason: every answer's finish reason ("length" makes it unstorable).
    """

    def __init__(
        self,
        script: Mapping[str, str] | None = None,
        default: Callable[[str], str] = _echo,
        finish_reason: str = "stop",
    ) -> None:
        self.script = dict(script or {})
        self.default = default
        self.finish_reason = finish_reason
        self.calls: list[ProviderCall] = []
        self.gate: asyncio.Event | None = None
        self.fallback_from: str | None = None
        self.closed = False
        self._failures: list[Exception] = []

    def fail_next(self, error: Exception, times: int = 1) -> None:
        """Make the next `times` calls raise `error` (after they are recorded)."""
        self._failures.extend([error] * times)

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        """The scripted answer in one piece.

        Raises:
            Exception: the error queued by `fail_next`, if any.
        """
        await self._begin(call)
        return self._answer(call)

    async def stream(self, call: ProviderCall) -> AsyncGenerator[str | ProviderAnswer, None]:
        """The scripted answer word by word, then the whole `ProviderAnswer`.

        Raises:
            Exception: the error queued by `fail_next`, if any, before the first word.
        """
        await self._begin(call)
        answer = self._answer(call)
        for piece in _PIECE.findall(answer.content):
            yield piece
        yield answer

    async def close(self) -> None:
        """Mark the provider closed."""
        self.closed = True

    async def _begin(self, call: ProviderCall) -> None:
        self.calls.append(call)
        if self.gate is not None:
            try:
                await asyncio.wait_for(self.gate.wait(), call.timeout_s)
            except TimeoutError:
                raise UpstreamTimeoutError(f"no answer within {call.timeout_s:.3g}s") from None
        if self._failures:
            raise self._failures.pop(0)

    def _answer(self, call: ProviderCall) -> ProviderAnswer:
        question = next((m.content for m in reversed(call.messages) if m.role == "user"), "")
        content = self.script.get(question) or self.default(question)
        usage = Usage(prompt_tokens=len(question.split()), completion_tokens=len(content.split()))
        if self.fallback_from is None:
            return ProviderAnswer(content, call.model, self.finish_reason, usage)
        model = f"fallback-for-{call.model}"
        return ProviderAnswer(
            content, model, self.finish_reason, usage, fallback_from=self.fallback_from
        )
