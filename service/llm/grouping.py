"""Concurrent unary calls for one model, sent upstream as one `/v1/completions` request.

vLLM (and other servers with the legacy completions API) take a list of
prompts in one request and decode them side by side. For a provider whose
catalogue entry sets `group_prompts`, `GroupingProvider` puts each unary call
that a prompt can carry into a `MicroBatcher` keyed by model and sampling
parameters: while `max_in_flight` grouped requests are out, the calls that
arrive wait and go together in the next one. A lone call goes at once.

What is not grouped, and goes to `/v1/chat/completions` as usual: streams,
calls with tools, a tool choice or a response format, and, with the `plain`
prompt format, any conversation other than one user message.

Each caller keeps its own deadline: a caller whose time runs out leaves the
group with UpstreamTimeoutError and the others carry on. If the provider
refuses a grouped request (a 4xx, say for one over-long prompt), each prompt
is sent again on its own, so only the bad one fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from service.batching.micro import MicroBatcher
from service.domain import ChatMessage, SamplingParams
from service.errors import UpstreamRejectedError, UpstreamTimeoutError
from service.llm.catalogue import PromptGrouping
from service.llm.provider import Provider, ProviderAnswer, ProviderCall

CHATML_END = "<|im_end|>"
_MAX_IDLE_GROUPS = 64

Clock = Callable[[], float]
_Result = ProviderAnswer | Exception


def render_prompt(messages: Sequence[ChatMessage], prompt_format: str) -> str | None:
    """The one text prompt for `messages`, or None when `prompt_format` cannot carry them."""
    if prompt_format == "plain":
        if len(messages) == 1 and messages[0].role == "user":
            return messages[0].content
        return None
    if prompt_format == "chatml":
        turns = "".join(f"<|im_start|>{m.role}\n{m.content}{CHATML_END}\n" for m in messages)
        return f"{turns}<|im_start|>assistant\n"
    raise ValueError(f"unknown prompt format {prompt_format!r}")


class PromptProvider(Provider, Protocol):
    """A `Provider` that also answers a list of prompts in one request
    (`OpenAICompatProvider.complete_prompts`)."""

    @property
    def name(self) -> str: ...

    async def complete_prompts(
        self, model: str, prompts: Sequence[str], sampling: SamplingParams, timeout_s: float
    ) -> list[ProviderAnswer]: ...


@dataclass(frozen=True)
class _GroupKey:
    model: str
    sampling: SamplingParams


@dataclass(frozen=True)
class _Member:
    prompt: str
    deadline: float


class GroupingProvider:
    """A `Provider` over `inner` that groups concurrent unary calls (see the module docstring).

    `on_group` is called with the size of each grouped request sent.
    """

    def __init__(
        self,
        inner: PromptProvider,
        grouping: PromptGrouping,
        *,
        on_group: Callable[[int], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._inner = inner
        self._grouping = grouping
        self._on_group = on_group
        self._clock = clock
        self._groups: dict[_GroupKey, MicroBatcher[_Member, _Result]] = {}

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        """The answer, from a grouped request when the call can be grouped.

        Raises:
            UpstreamTimeoutError: no answer within `call.timeout_s`.
            as `OpenAICompatProvider.complete` otherwise.
        """
        prompt = self._prompt_of(call)
        if prompt is None:
            return await self._inner.complete(call)
        group = await self._group(_GroupKey(call.model, self._sampling_of(call)))
        member = _Member(prompt, self._clock() + call.timeout_s)
        try:
            result = await asyncio.wait_for(group.submit(member), call.timeout_s)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"{self._inner.name} did not answer a grouped call in time"
            ) from None
        if isinstance(result, Exception):
            raise result
        return result

    def stream(self, call: ProviderCall) -> AsyncGenerator[str | ProviderAnswer, None]:
        """Streams are never grouped."""
        return self._inner.stream(call)

    async def close(self) -> None:
        for group in self._groups.values():
            await group.close()
        self._groups.clear()
        await self._inner.close()

    def _prompt_of(self, call: ProviderCall) -> str | None:
        sampling = call.sampling
        if sampling.tools_json or sampling.tool_choice or sampling.response_format:
            return None
        return render_prompt(call.messages, self._grouping.prompt_format)

    def _sampling_of(self, call: ProviderCall) -> SamplingParams:
        if self._grouping.prompt_format != "chatml" or CHATML_END in call.sampling.stop:
            return call.sampling
        return replace(call.sampling, stop=(*call.sampling.stop, CHATML_END))

    async def _group(self, key: _GroupKey) -> MicroBatcher[_Member, _Result]:
        group = self._groups.get(key)
        if group is None:
            await self._forget_idle_groups()
            group = MicroBatcher(
                lambda members: self._send(key, members),
                max_batch_size=self._grouping.max_prompts,
                workers=self._grouping.max_in_flight,
                max_wait_s=self._grouping.max_wait_ms / 1000,
                name=f"prompt-group:{self._inner.name}:{key.model}",
                on_batch=self._on_group,
            )
            self._groups[key] = group
        return group

    async def _forget_idle_groups(self) -> None:
        """Bound the groups kept: many distinct sampling parameters leave many behind."""
        if len(self._groups) < _MAX_IDLE_GROUPS:
            return
        for key, group in list(self._groups.items()):
            if group.idle:
                del self._groups[key]
                await group.close()

    async def _send(self, key: _GroupKey, members: list[_Member]) -> list[_Result]:
        """One request for every member; if the provider refuses it, one request each."""
        timeout_s = max(member.deadline for member in members) - self._clock()
        if timeout_s <= 0:
            raise UpstreamTimeoutError(f"{self._inner.name}: the deadline ran out before sending")
        prompts = [member.prompt for member in members]
        try:
            answers = await self._inner.complete_prompts(
                key.model, prompts, key.sampling, timeout_s
            )
        except UpstreamRejectedError:
            if len(members) == 1:
                raise
            return await self._send_each(key, members)
        return list(answers)

    async def _send_each(self, key: _GroupKey, members: list[_Member]) -> list[_Result]:
        async def alone(member: _Member) -> _Result:
            try:
                timeout_s = member.deadline - self._clock()
                if timeout_s <= 0:
                    raise UpstreamTimeoutError(f"{self._inner.name}: the deadline ran out")
                (answer,) = await self._inner.complete_prompts(
                    key.model, [member.prompt], key.sampling, timeout_s
                )
                return answer
            except Exception as error:  # each member gets its own outcome
                return error

        return list(await asyncio.gather(*(alone(member) for member in members)))
