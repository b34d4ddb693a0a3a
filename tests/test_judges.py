"""Answer judges on fakes: exact, embedding and llm verdicts, and None when they cannot tell."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.cache.verify.judges import (
    EmbeddingJudge,
    ExactJudge,
    LlmJudge,
    build_judge,
    cheapest_model,
    judge_prompt,
    normalise_answer,
    parse_yes_no,
)
from service.config import Settings
from service.embedding.base import Embedder
from service.embedding.batcher import EmbeddingBatcher
from service.embedding.fake import HashingEmbedder
from service.errors import UnknownModelError, UpstreamError
from service.llm.catalogue import Catalogue, load_catalogue, parse_catalogue
from service.llm.fake import ScriptedProvider
from tests.conftest import make_settings, start_service

CATALOGUE = Path(__file__).resolve().parents[1] / "service" / "defaults" / "models.example.yaml"
QUESTION = "How do I reset my password?"


@pytest.fixture
def catalogue() -> Catalogue:
    return load_catalogue(CATALOGUE, {})


@pytest_asyncio.fixture
async def batcher() -> AsyncIterator[EmbeddingBatcher]:
    batcher = EmbeddingBatcher(HashingEmbedder())
    yield batcher
    await batcher.close()


class BrokenEmbedder(HashingEmbedder):
    def embed(self, texts: object) -> object:  # type: ignore[override]
        raise RuntimeError("model crashed")


def settings(**fields: object) -> Settings:
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cached", "fresh", "same"),
    [
        ("Use the reset link.", "use the   reset link", True),
        ("  ANSWER[c12]: Paris\n", "answer[c12]: paris.", True),
        ('"Use the reset link!"', "Use the reset link", True),
        ("ANSWER[c12]: Paris", "ANSWER[c13]: Paris", False),
        ("Use the reset link.", "Call support.", False),
    ],
)
async def test_exact_judge_compares_normalised_answers(cached: str, fresh: str, same: bool) -> None:
    assert await ExactJudge().same(QUESTION, cached, fresh) is same


def test_normalise_answer_keeps_inner_punctuation() -> None:
    assert normalise_answer("  Dr. Who's  PHONE: 555-1234 !! ") == "dr. who's phone: 555-1234"


async def test_embedding_judge_thresholds_the_answers_cosine(batcher: EmbeddingBatcher) -> None:
    near = ("Open settings and click reset password", "open settings and click reset password now")
    far = ("Open settings and click reset password", "The capital of France is Paris")
    lenient, strict = EmbeddingJudge(batcher, 0.8), EmbeddingJudge(batcher, 0.99)
    assert await lenient.same(QUESTION, *near) is True
    assert await strict.same(QUESTION, *near) is False
    assert await lenient.same(QUESTION, *far) is False


async def test_embedding_judge_says_none_when_the_embedder_fails() -> None:
    broken = EmbeddingBatcher(BrokenEmbedder())
    try:
        assert await EmbeddingJudge(broken, 0.5).same(QUESTION, "one answer", "another") is None
    finally:
        await broken.close()


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("yes", True),
        ("Yes.", True),
        ("**No**", False),
        ("no, they differ", False),
        ("Answer: YES", True),
        ("  NO\n", False),
        ("not the same", None),
        ("maybe", None),
        ("", None),
        ("I think they are the same, yes", None),
    ],
)
def test_parse_yes_no(reply: str, verdict: bool | None) -> None:
    assert parse_yes_no(reply) is verdict


def test_judge_prompt_ships_with_the_package_and_names_every_field() -> None:
    prompt = judge_prompt()
    for field in ("{question}", "{cached}", "{fresh}"):
        assert prompt.count(field) == 1
    assert "yes or no" in prompt


async def test_llm_judge_asks_one_deterministic_short_question() -> None:
    provider = ScriptedProvider(default=lambda _prompt: "Yes.")
    judge = LlmJudge(provider, "gpt-4o-mini")
    assert await judge.same(QUESTION, "Use the reset link.", "Click 'forgot password'.") is True
    (call,) = provider.calls
    assert call.model == "gpt-4o-mini"
    assert call.sampling.temperature == 0.0
    assert call.sampling.max_tokens is not None and call.sampling.max_tokens <= 8
    prompt = call.messages[-1].content
    assert QUESTION in prompt and "Use the reset link." in prompt and "forgot password" in prompt


async def test_llm_judge_no_means_different() -> None:
    judge = LlmJudge(ScriptedProvider(default=lambda _prompt: "No"), "gpt-4o-mini")
    assert await judge.same(QUESTION, "A", "B") is False


async def test_llm_judge_says_none_on_an_upstream_error_or_an_odd_reply() -> None:
    provider = ScriptedProvider(default=lambda _prompt: "I cannot tell")
    judge = LlmJudge(provider, "gpt-4o-mini")
    assert await judge.same(QUESTION, "A", "B") is None
    provider.fail_next(UpstreamError("upstream down"))
    assert await judge.same(QUESTION, "A", "B") is None


def test_cheapest_model_is_chosen_by_price_not_file_order() -> None:
    document = {
        "providers": [{"name": "p"}],
        "models": [
            {
                "name": "dear",
                "provider": "p",
                "tier": "small",
                "input_usd_per_mtok": 5.0,
                "output_usd_per_mtok": 5.0,
                "context_window_tokens": 1000,
            },
            {
                "name": "cheap",
                "provider": "p",
                "tier": "large",
                "input_usd_per_mtok": 0.1,
                "output_usd_per_mtok": 0.2,
                "context_window_tokens": 1000,
            },
        ],
    }
    assert cheapest_model(parse_catalogue(document, {}, "test")).name == "cheap"


async def test_build_judge_follows_the_settings(
    batcher: EmbeddingBatcher, catalogue: Catalogue
) -> None:
    provider = ScriptedProvider()
    assert build_judge(settings(judge="exact"), batcher, provider, catalogue).name == "exact"
    embedding = build_judge(
        settings(judge="embedding", judge_similarity_min=0.7), batcher, provider, catalogue
    )
    assert isinstance(embedding, EmbeddingJudge) and embedding.similarity_min == 0.7
    cheapest = build_judge(settings(judge="llm"), batcher, provider, catalogue)
    assert isinstance(cheapest, LlmJudge) and cheapest.model == "gpt-4o-mini"
    named = build_judge(settings(judge="llm", judge_model="gpt-4o"), batcher, provider, catalogue)
    assert isinstance(named, LlmJudge) and named.model == "gpt-4o"


async def test_build_judge_rejects_a_model_missing_from_the_catalogue(
    batcher: EmbeddingBatcher, catalogue: Catalogue
) -> None:
    with pytest.raises(UnknownModelError):
        build_judge(
            settings(judge="llm", judge_model="no-such-model"),
            batcher,
            ScriptedProvider(),
            catalogue,
        )


async def test_an_llm_judges_calls_are_the_judged_tenants_spend(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    """Found from outside: with SEMCACHE_JUDGE=llm, the judge's own upstream calls were
    counted in no tenant's spend or token figure. They are now the judged tenant's."""
    settings = make_settings("edge", tmp_path / "data", simulator.base_url, judge="llm")
    service = await start_service(embedder, simulator, settings)
    tenant = (("x-tenant-id", "judged"),)
    try:
        first = await service.stub.Complete(
            pb.CompleteRequest(prompt="What is machine learning?"), metadata=tenant
        )
        explored = await service.stub.Complete(
            pb.CompleteRequest(prompt="What does machine learning mean?"), metadata=tenant
        )
        assert explored.cache_detail == "explore_uncertain"
        answers_usd = first.cost_usd + explored.cost_usd
        for _ in range(300):  # the judge runs in the background (its verdict may be None)
            stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest(), metadata=tenant)
            if stats.cost_spent_usd > answers_usd:
                break
            await asyncio.sleep(0.01)
        tokens = service.app.telemetry.metrics.registry.get_sample_value(
            "semcache_tokens_total", {"tenant": "judged", "model": "gpt-4o-mini", "kind": "prompt"}
        )
    finally:
        await service.close()
    assert tokens is not None and tokens > first.usage.prompt_tokens + explored.usage.prompt_tokens
    assert stats.cost_spent_usd > answers_usd  # and the judge's call
