"""Grouping concurrent misses for one model into one `/v1/completions` request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import grpc
import pytest
import yaml

from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.batching.micro import MicroBatcher
from service.config import DEFAULTS_DIR
from service.domain import ChatMessage, SamplingParams, Usage
from service.embedding.base import Embedder
from service.errors import UpstreamRejectedError, UpstreamTimeoutError
from service.llm.catalogue import PromptGrouping, parse_catalogue
from service.llm.grouping import GroupingProvider, render_prompt
from service.llm.http_errors import RetryableUpstreamError
from service.llm.openai_compat import OpenAICompatProvider, apportion
from service.llm.provider import ProviderAnswer, ProviderCall
from tests.conftest import make_settings, start_service

MODEL = "gpt-4o-mini"
QUESTIONS = [f"What is {n} times {n + 1}?" for n in range(20)]


def user_call(text: str, timeout_s: float = 10.0, **sampling: object) -> ProviderCall:
    return ProviderCall(
        MODEL,
        (ChatMessage("user", text),),
        SamplingParams(**sampling),
        timeout_s,
    )


# --- the micro-batcher's workers and collection window ---------------------------


async def test_free_workers_take_lone_items_at_once_and_busy_ones_leave_a_group() -> None:
    release = asyncio.Event()
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        await release.wait()
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=8, workers=2)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(3, 8)]
    await asyncio.sleep(0.01)
    assert batches == [[1], [2]]  # both workers busy, the other five wait together
    release.set()
    assert await asyncio.gather(first, second, *rest) == list(range(1, 8))
    assert batches[2] == [3, 4, 5, 6, 7]
    assert batcher.idle
    await batcher.close()


async def test_a_collection_window_holds_a_lone_item_for_company() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=4, max_wait_s=0.05)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(batcher.submit(n)) for n in (2, 3)]
    assert await asyncio.gather(first, *later) == [1, 2, 3]
    assert batches == [[1, 2, 3]]
    await batcher.close()


def test_batcher_bounds_are_checked() -> None:
    async def run(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(run, workers=0)


# --- prompts and usage --------------------------------------------------------------


def test_plain_format_carries_only_a_lone_user_message() -> None:
    assert render_prompt((ChatMessage("user", "hi"),), "plain") == "hi"
    system = (ChatMessage("system", "be brief"), ChatMessage("user", "hi"))
    assert render_prompt(system, "plain") is None


def test_chatml_format_renders_every_turn_and_opens_the_answer() -> None:
    messages = (ChatMessage("system", "be brief"), ChatMessage("user", "hi"))
    assert render_prompt(messages, "chatml") == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [(10, [1, 1, 2], [3, 2, 5]), (7, [0, 0], [4, 3]), (0, [5, 1], [0, 0]), (5, [], [])],
)
def test_usage_is_apportioned_in_whole_tokens_that_add_up(
    total: int, weights: list[int], expected: list[int]
) -> None:
    shares = apportion(total, weights)
    assert shares == expected
    assert sum(shares) == (total if weights else 0)


# --- the catalogue setting ------------------------------------------------------------


def catalogue_with(group_prompts: object) -> dict[str, object]:
    document = yaml.safe_load((DEFAULTS_DIR / "models.example.yaml").read_text())
    document["providers"][0]["group_prompts"] = group_prompts
    return document


def test_group_prompts_is_read_per_provider() -> None:
    catalogue = parse_catalogue(
        catalogue_with({"max_prompts": 8, "max_in_flight": 2, "prompt_format": "chatml"}), {}, "t"
    )
    grouping = catalogue.providers["openai"].grouping
    assert grouping == PromptGrouping(max_prompts=8, max_in_flight=2, prompt_format="chatml")
    assert catalogue.providers["anthropic"].grouping is None
    defaults = parse_catalogue(catalogue_with(True), {}, "t").providers["openai"].grouping
    assert defaults == PromptGrouping()


@pytest.mark.parametrize(
    ("group_prompts", "message"),
    [
        ({"prompt_format": "llama"}, "unknown prompt_format 'llama'"),
        ({"max_prompts": 0}, "'max_prompts' must be an integer >= 1"),
        ({"batch": 4}, "unknown keys \\['batch'\\]"),
        ("yes", "expected a mapping"),
    ],
)
def test_bad_group_prompts_fail_naming_the_provider(group_prompts: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_catalogue(catalogue_with(group_prompts), {}, "models.yaml")
    assert "providers[0] (openai): group_prompts" in str(caught.value)


# --- against the simulator ------------------------------------------------------------


async def test_concurrent_calls_share_completions_requests_and_get_their_own_answers(
    simulator: UpstreamSimulator,
) -> None:
    plain = OpenAICompatProvider(simulator.base_url, "k", 10.0, name="sim")
    expected = [await plain.complete(user_call(q)) for q in QUESTIONS]
    simulator.reset()
    sizes: list[int] = []
    grouping = PromptGrouping(max_prompts=8, max_in_flight=1)
    grouped = GroupingProvider(plain, grouping, on_group=sizes.append)
    try:
        answers = await asyncio.gather(*(grouped.complete(user_call(q)) for q in QUESTIONS))
    finally:
        await grouped.close()
    assert [a.content for a in answers] == [e.content for e in expected]
    assert all(a.finish_reason == "stop" and a.model == MODEL for a in answers)
    assert simulator.stats.snapshot()["by_endpoint"] == {"completions": len(sizes)}
    assert sizes == [8, 8, 4]  # one request in flight at a time, at most 8 prompts each
    assert simulator.stats.snapshot()["prompts_total"] == len(QUESTIONS)
    spent = sum(a.usage.completion_tokens for a in answers)
    assert spent == sum(e.usage.completion_tokens for e in expected)


async def test_calls_a_prompt_cannot_carry_go_to_chat_completions(
    simulator: UpstreamSimulator,
) -> None:
    plain = OpenAICompatProvider(simulator.base_url, "k", 10.0, name="sim")
    grouped = GroupingProvider(plain, PromptGrouping())
    with_system = ProviderCall(
        MODEL, (ChatMessage("system", "brief"), ChatMessage("user", "hi")), SamplingParams(), 10.0
    )
    try:
        await grouped.complete(with_system)
        await grouped.complete(user_call("hi", response_format="json_object"))
        chunks = [item async for item in grouped.stream(user_call("hi"))]
    finally:
        await grouped.close()
    assert isinstance(chunks[-1], ProviderAnswer)
    assert simulator.stats.snapshot()["by_endpoint"] == {"chat.completions": 3}


async def test_different_sampling_parameters_are_never_grouped_together(
    simulator: UpstreamSimulator,
) -> None:
    plain = OpenAICompatProvider(simulator.base_url, "k", 10.0, name="sim")
    sizes: list[int] = []
    grouped = GroupingProvider(plain, PromptGrouping(max_in_flight=1), on_group=sizes.append)
    calls = [user_call(q, max_tokens=5 + n % 2) for n, q in enumerate(QUESTIONS[:6])]
    try:
        answers = await asyncio.gather(*(grouped.complete(c) for c in calls))
    finally:
        await grouped.close()
    assert all(a.usage.completion_tokens <= 6 for a in answers)
    assert sizes == [3, 3]  # one request per max_tokens value


# --- failures, with a scripted provider -----------------------------------------------


class ScriptedPrompts:
    """A `PromptProvider` whose grouped requests refuse prompts containing "bad"."""

    name = "scripted"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.requests: list[list[str]] = []
        self._delay_s = delay_s

    async def complete_prompts(
        self, model: str, prompts: Sequence[str], sampling: SamplingParams, timeout_s: float
    ) -> list[ProviderAnswer]:
        self.requests.append(list(prompts))
        await asyncio.sleep(self._delay_s)
        if any("bad" in p for p in prompts):
            raise UpstreamRejectedError("HTTP 400: a prompt is too long")
        return [ProviderAnswer(f"re: {p}", model, "stop", Usage(1, 1)) for p in prompts]

    async def complete(self, call: ProviderCall) -> ProviderAnswer:
        raise AssertionError("not used")

    async def stream(self, call: ProviderCall) -> AsyncGenerator[str | ProviderAnswer, None]:
        raise AssertionError("not used")
        yield ""

    async def close(self) -> None:
        pass


async def test_a_refused_group_is_split_so_only_the_bad_prompt_fails() -> None:
    inner = ScriptedPrompts()
    grouped = GroupingProvider(inner, PromptGrouping(max_in_flight=1))
    texts = ["one", "two", "bad three", "four"]
    results = await asyncio.gather(
        *(grouped.complete(user_call(t)) for t in texts), return_exceptions=True
    )
    await grouped.close()
    assert isinstance(results[2], UpstreamRejectedError)
    assert [r.content for r in results if isinstance(r, ProviderAnswer)] == [
        "re: one",
        "re: two",
        "re: four",
    ]
    assert inner.requests[0] == texts  # refused whole, then sent one by one
    assert sorted(inner.requests[1:]) == [["bad three"], ["four"], ["one"], ["two"]]


async def test_a_caller_whose_deadline_runs_out_leaves_the_others_their_answers() -> None:
    inner = ScriptedPrompts(delay_s=0.2)
    grouped = GroupingProvider(inner, PromptGrouping(max_in_flight=1))
    blocker = asyncio.create_task(grouped.complete(user_call("first")))
    await asyncio.sleep(0.01)
    hasty = asyncio.create_task(grouped.complete(user_call("hasty", timeout_s=0.05)))
    patient = asyncio.create_task(grouped.complete(user_call("patient")))
    with pytest.raises(UpstreamTimeoutError, match="in time"):
        await hasty
    assert (await patient).content == "re: patient"
    assert (await blocker).content == "re: first"
    assert inner.requests == [["first"], ["patient"]]  # the hasty one left before sending
    await grouped.close()


# --- end to end through gRPC ----------------------------------------------------------


async def test_service_groups_concurrent_misses_and_caches_each_answer(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "grouped.yaml"
    document = catalogue_with({"max_prompts": 16, "max_in_flight": 1})
    path.write_text(yaml.safe_dump(document))
    settings = make_settings("edge", tmp_path / "data", simulator.base_url, catalogue_path=path)
    service = await start_service(embedder, simulator, settings)
    questions = [f"Who painted picture number {n} in the gallery?" for n in range(12)]
    try:
        first = await asyncio.gather(
            *(service.stub.Complete(pb.CompleteRequest(prompt=q, model=MODEL)) for q in questions)
        )
        again = await asyncio.gather(
            *(service.stub.Complete(pb.CompleteRequest(prompt=q, model=MODEL)) for q in questions)
        )
    finally:
        await service.close()
    snapshot = simulator.stats.snapshot()
    assert snapshot["prompts_total"] == len(questions)
    assert snapshot["by_endpoint"]["completions"] < len(questions)
    assert all(r.cache_status == pb.CACHE_STATUS_MISS for r in first)
    assert all(r.cache_status == pb.CACHE_STATUS_EXACT_HIT for r in again)
    assert [r.content for r in again] == [r.content for r in first]
    assert all(r.usage.completion_tokens > 0 and r.cost_usd > 0 for r in first)


async def test_grouped_provider_errors_reach_the_caller_as_grpc_codes(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "grouped.yaml"
    document = catalogue_with(True)
    document["models"] = [dict(document["models"][0], fallbacks=[])]  # type: ignore[index]
    path.write_text(yaml.safe_dump(document))
    settings = make_settings("edge", tmp_path / "data", simulator.base_url, catalogue_path=path)
    service = await start_service(embedder, simulator, settings)
    await simulator.stop()  # the provider is gone
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.Complete(pb.CompleteRequest(prompt="Hello there?", model=MODEL))
    finally:
        await service.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_one_failed_grouped_request_counts_once_on_the_breaker() -> None:
    from service.llm.catalogue import parse_catalogue
    from service.llm.resilience import ResilienceOptions, ResilientProvider, RetryPolicy

    class FailingOnce(ScriptedPrompts):
        async def complete_prompts(
            self, model: str, prompts: Sequence[str], sampling: SamplingParams, timeout_s: float
        ) -> list[ProviderAnswer]:
            self.requests.append(list(prompts))
            await asyncio.sleep(0.01)
            if len(self.requests) == 2:  # the grouped request of six
                raise RetryableUpstreamError("HTTP 500", status=500)
            return [ProviderAnswer(f"re: {p}", model, "stop", Usage(1, 1)) for p in prompts]

    document = catalogue_with({"max_in_flight": 1})
    catalogue = parse_catalogue(document, {}, "t").with_default_base_url("http://unused")
    inner = FailingOnce()
    providers = {
        name: GroupingProvider(inner, PromptGrouping(max_in_flight=1))
        for name in catalogue.providers
    }
    options = ResilienceOptions(
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.001), breaker_failures=3
    )
    resilient = ResilientProvider(catalogue, providers, options)
    blocker = asyncio.create_task(resilient.complete(user_call("first")))
    await asyncio.sleep(0.001)
    answers = await asyncio.gather(*(resilient.complete(user_call(f"q{n}")) for n in range(6)))
    await blocker
    assert inner.requests[:2] == [["first"], [f"q{n}" for n in range(6)]]
    assert all(a.content.startswith("re: ") and a.attempts == 2 for a in answers)
    assert resilient.breaker_states()["openai"] == "closed"  # six calls, one failure
