"""Follow-ups ("yes please", "cancel it"): what a candidate's risk is.

A follow-up's final message says little on its own; its conversation decides the
answer. So a candidate whose final message is identical (or an everyday form of it)
is weighed at its context's score, never served as `identical` at no risk.
"""

from __future__ import annotations

import pytest

from service.cache.conversation import context_text
from service.cache.guard import GuardVerdict, NearMissGuard, pair_features
from service.cache.memory_store import MemoryVectorStore
from service.cache.scope import CacheKey
from service.cache.semantic import Answer, SemanticCache
from service.cache.store import CacheEntry, ScoredEntry
from service.cache.verify.prior import DEFAULT_PRIOR
from service.cache.verify.verifier import BudgetSettings, HitDecider, VerifyState
from service.domain import CacheStatus, ChatMessage, CompletionRequest
from service.embedding.batcher import EmbeddingBatcher
from service.embedding.fake import HashingEmbedder

Turns = list[tuple[str, str]]


def _chat(plan: str, offer: str) -> Turns:
    return [
        ("user", "What's the monthly price of Nimbus Fibre?"),
        ("assistant", f"Nimbus Fibre {plan} is on an 18-month contract."),
        ("user", "And do I get a router?"),
        ("assistant", f"Yes, a router comes with it. {offer}"),
        ("user", "yes go on"),
    ]


def _request(turns: Turns) -> CompletionRequest:
    return CompletionRequest(messages=tuple(ChatMessage(r, c) for r, c in turns))


def test_an_accepted_context_is_scored_by_the_guard_model() -> None:
    guard = NearMissGuard()
    mine = context_text(_chat("150", "Shall I add the TV bundle?"))
    theirs = context_text(_chat("150", "Shall I add the sports bundle?"))
    verdict = guard.verify_context(mine, theirs, similarity=0.95)
    expected = guard.model.score(pair_features(mine, theirs, 0.95).vector())
    assert (verdict.accept, verdict.reason) == (True, "ok")
    assert verdict.score == pytest.approx(expected)
    assert verdict.score < 0.95  # the model's probability, not the cosine
    same = guard.verify_context(mine, mine.replace(" ", "  "), similarity=0.999)
    assert (same.accept, same.score, same.reason) == (True, 1.0, "identical")


class ContextScoredVerifier:
    """Every final message identical; every context accepted at `context_score`."""

    def __init__(self, context_score: float) -> None:
        self.context_score = context_score

    def verify(self, query: str, cached: str, similarity: float) -> GuardVerdict:
        return GuardVerdict(True, 1.0, "identical")

    def verify_context(
        self, query_context: str, cached_context: str, similarity: float
    ) -> GuardVerdict:
        return GuardVerdict(True, self.context_score, "ok")


async def _second_lookup(
    context_score: float, budget: BudgetSettings | None
) -> tuple[CacheStatus | None, str, float]:
    """Store a follow-up's answer, then look up the same "yes go on" in another chat."""
    store, batcher = MemoryVectorStore(), EmbeddingBatcher(HashingEmbedder())
    decider = HitDecider(VerifyState(DEFAULT_PRIOR), budget)
    cache = SemanticCache(store, batcher, ContextScoredVerifier(context_score), decider=decider)
    try:
        stored = await cache.lookup(_request(_chat("150", "Shall I add the TV bundle?")))
        assert await cache.store_answer(stored, Answer("Added.", "m", "stop", 1, 1, 0.0))
        other = await cache.lookup(_request(_chat("150", "Shall I cancel the old line?")))
    finally:
        await cache.close()
        await batcher.close()
    if other.hit is None:
        return None, other.detail, 0.0
    return other.hit.status, other.hit.detail, other.hit.score


_STRICT = BudgetSettings(0.01, {}, exploration_share=0.0, audit_share=0.0)


async def test_an_identical_yes_is_weighed_at_its_contexts_score() -> None:
    status, detail, _ = await _second_lookup(0.8, _STRICT)
    assert status is None  # P(wrong) at 0.8 is far above a 1% budget
    assert detail == "no_budget"


async def test_a_follow_up_with_a_near_certain_context_is_still_served() -> None:
    status, detail, score = await _second_lookup(0.999999, _STRICT)
    assert (status, detail, score) == (CacheStatus.SEMANTIC_HIT, "ok", 0.999999)


async def test_the_guard_alone_still_serves_an_accepted_context_scored_by_it() -> None:
    status, detail, score = await _second_lookup(0.8, None)
    assert (status, detail, score) == (CacheStatus.SEMANTIC_HIT, "ok", 0.8)


def _scored(question: str, context: str) -> ScoredEntry:
    entry = CacheEntry(
        tenant="t", namespace="n", scope="s", model="m", question=question, content="a",
        finish_reason="stop", prompt_tokens=1, completion_tokens=1, cost_usd=0.0,
        created_at=0.0, expires_at=1e12, last_hit_at=0.0, context=context,
    )  # fmt: skip
    return ScoredEntry("p1", 0.95, entry)


def test_an_everyday_form_of_a_follow_up_is_not_identical_either() -> None:
    decider = HitDecider(VerifyState(DEFAULT_PRIOR), _STRICT)
    key = CacheKey("t", "n", "s", "How can I cancel it?", "my gym plan", "q1")
    found = [_scored("How do I cancel it?", "my gym membership")]
    choice = decider.choose(key, found, [GuardVerdict(True, 0.8, "ok")])
    assert choice.served is None and choice.p_wrong > 0.01
    standalone = CacheKey("t", "n", "s", "How can I cancel my gym?", "", "q2")
    found = [_scored("How do I cancel my gym?", "")]
    served = decider.choose(standalone, found, [GuardVerdict(True, 0.8, "ok")])
    assert served.detail == "same_form"
