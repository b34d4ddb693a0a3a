"""The request path on fakes: no model, no vector store, no network.

`RequestPipeline` is built as `service.app.build_app` builds it, but over a
`HashingEmbedder`, a `MemoryVectorStore` and a `ScriptedProvider`, so each
test states what a caller sees (status, answer, upstream calls made, entries
stored) in a few milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio

from service.cache.guard import NearMissGuard
from service.cache.memory_store import MemoryVectorStore
from service.cache.semantic import Answer, SemanticCache
from service.cache.stats import CacheStats
from service.cache.store import ScoredEntry, SearchQuery
from service.domain import CachePolicy, CacheStatus, ChatMessage, Completion, CompletionRequest
from service.embedding.base import Vectors
from service.embedding.batcher import EmbeddingBatcher
from service.embedding.fake import HashingEmbedder
from service.errors import UpstreamError, UpstreamTimeoutError
from service.llm.catalogue import load_catalogue
from service.llm.fake import ScriptedProvider
from service.metrics import Metrics
from service.pipeline.ledger import Ledger
from service.pipeline.request import CachingPolicy, RequestPipeline, Upstream
from service.ratelimit import InMemoryRateLimiter
from service.routing.router import build_router
from service.telemetry import Telemetry
from service.validation import Limits

DEFAULTS = Path(__file__).resolve().parents[1] / "service" / "defaults"
CATALOGUE = DEFAULTS / "models.example.yaml"
ROUTE_EXAMPLES = DEFAULTS / "route-examples.yaml"
QUESTION = "How do I reset my password?"
PARAPHRASE = "how do i reset my password please"  # guard score 0.84 on the fake embedder


@dataclass
class Rig:
    pipeline: RequestPipeline
    store: MemoryVectorStore
    provider: ScriptedProvider
    stats: CacheStats
    metrics: Metrics
    cache: SemanticCache
    batcher: EmbeddingBatcher


def build_rig(embedder: HashingEmbedder | None = None, strategy: str = "rules") -> Rig:
    """The pipeline as `build_app` builds it, over fakes (a nearest `strategy` routes by
    `service/defaults/route-examples.yaml`, embedded with the fake embedder)."""
    store, provider = MemoryVectorStore(), ScriptedProvider({QUESTION: "Use the reset link."})
    catalogue = load_catalogue(CATALOGUE, {})
    metrics, stats = Metrics(), CacheStats()
    telemetry = Telemetry(metrics)
    embedder = embedder or HashingEmbedder()
    batcher = EmbeddingBatcher(embedder)
    examples = ROUTE_EXAMPLES if strategy != "rules" else None
    router = build_router(catalogue, strategy, examples, embedder.embed if examples else None)
    cache = SemanticCache(store, batcher, NearMissGuard(), telemetry=telemetry)
    pipeline = RequestPipeline(
        cache=cache,
        upstream=Upstream(provider, router, 30.0),
        catalogue=catalogue,
        ledger=Ledger(catalogue, stats, metrics),
        limits=Limits(),
        limiter=InMemoryRateLimiter(0, 0),
        telemetry=telemetry,
        policy=CachingPolicy(),
    )
    return Rig(pipeline, store, provider, stats, metrics, cache, batcher)


async def close_rig(rig: Rig) -> None:
    await rig.cache.close()
    await rig.batcher.close()


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    built = build_rig()
    yield built
    await close_rig(built)


def ask(question: str = QUESTION, **fields: object) -> CompletionRequest:
    request = CompletionRequest(messages=(ChatMessage("user", question),))
    return replace(request, **fields)  # type: ignore[arg-type]


async def test_miss_is_stored_then_served_as_exact_hit(rig: Rig) -> None:
    first = await rig.pipeline.complete(ask())
    second = await rig.pipeline.complete(ask())
    assert (first.cache_status, second.cache_status) == (CacheStatus.MISS, CacheStatus.EXACT_HIT)
    assert second.content == first.content == "Use the reset link."
    assert len(rig.provider.calls) == 1
    assert rig.store.upserts == 1


async def test_paraphrase_is_a_semantic_hit(rig: Rig) -> None:
    await rig.pipeline.complete(ask())
    hit = await rig.pipeline.complete(ask(PARAPHRASE))
    assert hit.cache_status is CacheStatus.SEMANTIC_HIT
    assert hit.content == "Use the reset link."
    assert 0.9 < hit.similarity < 1.0
    assert len(rig.provider.calls) == 1


async def test_unrelated_question_misses(rig: Rig) -> None:
    await rig.pipeline.complete(ask())
    other = await rig.pipeline.complete(ask("What is the capital of France?"))
    assert other.cache_status is CacheStatus.MISS
    assert len(rig.provider.calls) == 2


async def test_bypass_neither_reads_nor_writes(rig: Rig) -> None:
    await rig.pipeline.complete(ask())
    bypassed = await rig.pipeline.complete(ask(cache_policy=CachePolicy.BYPASS))
    assert bypassed.cache_status is CacheStatus.BYPASS
    assert len(rig.provider.calls) == 2
    assert rig.store.upserts == 1


async def test_no_store_reads_but_does_not_write(rig: Rig) -> None:
    miss = await rig.pipeline.complete(ask(cache_policy=CachePolicy.NO_STORE))
    assert miss.cache_status is CacheStatus.MISS
    assert rig.store.upserts == 0
    await rig.pipeline.complete(ask())
    hit = await rig.pipeline.complete(ask(cache_policy=CachePolicy.NO_STORE))
    assert hit.cache_status is CacheStatus.EXACT_HIT


async def test_refresh_asks_upstream_and_replaces_the_entry(rig: Rig) -> None:
    await rig.pipeline.complete(ask())
    rig.provider.script[QUESTION] = "Use the new reset page."
    refreshed = await rig.pipeline.complete(ask(cache_policy=CachePolicy.REFRESH))
    assert (refreshed.cache_status, refreshed.cache_detail) == (CacheStatus.MISS, "refresh")
    again = await rig.pipeline.complete(ask())
    assert (again.cache_status, again.content) == (CacheStatus.EXACT_HIT, "Use the new reset page.")
    assert len(rig.provider.calls) == 2


class GateOpeningEmbedder(HashingEmbedder):
    """Opens `gate` (an event on `loop`) as soon as a text is being embedded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gate: asyncio.Event) -> None:
        super().__init__()
        self._loop, self._gate = loop, gate

    def embed(self, texts: Sequence[str]) -> Vectors:
        self._loop.call_soon_threadsafe(self._gate.set)
        return super().embed(texts)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refresh_embeds_while_the_provider_answers(stream: bool) -> None:
    # The provider answers only once the question is being embedded: a refresh that
    # embedded after the answer (as it once did) would wait out its deadline.
    gate = asyncio.Event()
    rig = build_rig(GateOpeningEmbedder(asyncio.get_running_loop(), gate))
    rig.provider.gate = gate
    try:
        request = ask(cache_policy=CachePolicy.REFRESH, deadline_s=5.0)
        if stream:
            events = [event async for event in rig.pipeline.stream(request)]
            refreshed = events[-1]
            assert isinstance(refreshed, Completion)
        else:
            refreshed = await rig.pipeline.complete(request)
        assert (refreshed.cache_status, refreshed.cache_detail) == (CacheStatus.MISS, "refresh")
        assert refreshed.entry_id and rig.store.upserts == 1
        again = await rig.pipeline.complete(ask())
        assert again.cache_status is CacheStatus.EXACT_HIT
    finally:
        await close_rig(rig)


async def test_a_refresh_is_routed_by_its_embedding_as_a_miss_is() -> None:
    rig = build_rig(strategy="nearest")
    try:
        question = "Write a detailed proof that there are infinitely many primes"
        refreshed = await rig.pipeline.complete(ask(question, cache_policy=CachePolicy.REFRESH))
        missed = await rig.pipeline.complete(ask(question, namespace="another"))
        assert missed.cache_status is CacheStatus.MISS
        assert "no query embedding" not in refreshed.route_reason
        assert (refreshed.model, refreshed.route_reason) == (missed.model, missed.route_reason)
    finally:
        await close_rig(rig)


async def _until(condition: object, rounds: int = 5000) -> None:
    """Yield to the loop (and the embedding thread) until `condition()` holds."""
    for _ in range(rounds):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_identical_concurrent_misses_share_one_upstream_call(rig: Rig) -> None:
    rig.provider.gate = asyncio.Event()
    asks = [asyncio.create_task(rig.pipeline.complete(ask())) for _ in range(3)]
    await _until(lambda: rig.store.searches == 3 and len(rig.provider.calls) >= 1)
    for _ in range(50):  # let the other two reach the shared call after their search
        await asyncio.sleep(0)
    rig.provider.gate.set()
    answers = await asyncio.gather(*asks)
    assert len(rig.provider.calls) == 1
    assert {a.content for a in answers} == {"Use the reset link."}
    assert sorted(a.cost_saved_usd > 0 for a in answers) == [False, True, True]
    assert rig.store.upserts == 1


async def test_a_shared_miss_outlives_its_starters_deadline_for_a_caller_with_more_time(
    rig: Rig,
) -> None:
    """Found from outside: the shared call ran within its starter's deadline, so a
    caller with 20 s to spare failed with the 1 s caller's DEADLINE_EXCEEDED."""
    rig.provider.gate = asyncio.Event()
    hurried = asyncio.create_task(rig.pipeline.complete(ask(deadline_s=0.3)))
    await _until(lambda: len(rig.provider.calls) == 1)
    patient = asyncio.create_task(rig.pipeline.complete(ask(deadline_s=30.0)))
    with pytest.raises(UpstreamTimeoutError):
        await hurried
    await _until(lambda: len(rig.provider.calls) == 2)  # the patient caller's own call
    rig.provider.gate.set()
    answer = await patient
    assert (answer.cache_status, answer.content) == (CacheStatus.MISS, "Use the reset link.")
    assert answer.entry_id
    assert rig.store.upserts == 1


async def test_a_shared_call_is_paid_for_once_even_when_its_caller_left(rig: Rig) -> None:
    """Found from outside: the call went on and its answer was stored after its caller
    cancelled, but its cost was counted by nobody (cost_spent_usd 0, later hits saving
    against it). Then (a later audit): the caller that stayed was told it saved the
    cost, though one call was paid and one answer delivered; and the caller that left
    was counted nowhere, though its lookup missed and its call was paid."""
    rig.provider.gate = asyncio.Event()
    leaving = asyncio.create_task(rig.pipeline.complete(ask()))
    await _until(lambda: len(rig.provider.calls) == 1)
    staying = asyncio.create_task(rig.pipeline.complete(ask()))
    await _until(lambda: rig.store.searches == 2)
    for _ in range(50):  # let it join the shared call after its search
        await asyncio.sleep(0)
    leaving.cancel()
    rig.provider.gate.set()
    shared = await staying
    await _until(lambda: rig.store.upserts == 1)
    counters = rig.stats.for_tenant("default")
    assert shared.cost_usd > 0 and shared.cost_saved_usd == 0.0  # the only answer delivered
    assert counters.cost_spent_usd == pytest.approx(shared.cost_usd)
    assert counters.cost_saved_usd == 0.0
    assert counters.misses == 2  # both looked up and missed, whoever stayed for the answer


async def test_a_lone_miss_counts_its_cost_once(rig: Rig) -> None:
    miss = await rig.pipeline.complete(ask())
    assert miss.cost_usd > 0
    assert rig.stats.for_tenant("default").cost_spent_usd == pytest.approx(miss.cost_usd)


async def test_callers_with_no_more_time_than_the_starter_share_its_failure(rig: Rig) -> None:
    rig.provider.gate = asyncio.Event()
    first = asyncio.create_task(rig.pipeline.complete(ask(deadline_s=0.3)))
    await _until(lambda: len(rig.provider.calls) == 1)
    second = asyncio.create_task(rig.pipeline.complete(ask(deadline_s=0.2)))
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert [type(result) for result in results] == [UpstreamTimeoutError] * 2
    assert len(rig.provider.calls) == 1


async def test_a_batch_items_wait_for_its_turn_comes_off_its_deadline(rig: Rig) -> None:
    """Found from outside: items queued behind a batch's max_concurrency each got the
    whole deadline again when their turn came, so the batch overran its deadline and
    the caller lost the answers already finished."""
    rig.provider.gate = asyncio.Event()  # never set: each call runs to its timeout
    first, second = ask(deadline_s=0.3), ask("What is RAM?", deadline_s=0.3)
    results = await rig.pipeline.complete_many([first, second], max_concurrency=1)
    assert [type(result) for result in results] == [UpstreamTimeoutError] * 2
    assert len(rig.provider.calls) == 1  # the second had no time left when its turn came
    assert "left no time" in str(results[1])


async def test_a_fallback_answer_is_not_stored_for_the_model_the_request_named(rig: Rig) -> None:
    """Found from outside: gpt-4o failing, claude's answer was kept in gpt-4o's scope
    and served as gpt-4o's exact hit for the entry's whole life."""
    rig.provider.fallback_from = "gpt-4o"
    named = await rig.pipeline.complete(ask(model="gpt-4o"))
    assert (named.cache_status, named.entry_id) == (CacheStatus.MISS, "")
    assert rig.store.upserts == 0
    rig.provider.fallback_from = None
    again = await rig.pipeline.complete(ask(model="gpt-4o"))
    assert again.cache_status is CacheStatus.MISS  # asked again of gpt-4o itself
    assert len(rig.provider.calls) == 2


async def test_a_fallback_answer_is_stored_when_the_request_let_the_router_choose(
    rig: Rig,
) -> None:
    rig.provider.fallback_from = "gpt-4o-mini"
    routed = await rig.pipeline.complete(ask())
    assert routed.entry_id
    assert (await rig.pipeline.complete(ask())).cache_status is CacheStatus.EXACT_HIT


async def test_stream_is_stored_before_its_final_message_names_it(rig: Rig) -> None:
    events = rig.pipeline.stream(ask())
    first = await anext(events)
    assert isinstance(first, str)
    final = None
    while final is None:
        event = await anext(events)
        final = event if isinstance(event, Completion) else None
    assert rig.store.upserts == 1  # the id the caller now holds names a stored entry
    assert final.entry_id
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    assert rig.store.upserts == 1
    hit = await rig.pipeline.complete(ask())
    assert (hit.cache_status, hit.content) == (CacheStatus.EXACT_HIT, final.content)


async def test_stream_abandoned_midway_stores_nothing(rig: Rig) -> None:
    events = rig.pipeline.stream(ask())
    await anext(events)
    await events.aclose()
    assert rig.store.upserts == 0
    assert (await rig.pipeline.complete(ask())).cache_status is CacheStatus.MISS


async def test_provider_failure_stores_nothing(rig: Rig) -> None:
    rig.provider.fail_next(UpstreamError("upstream down"))
    with pytest.raises(UpstreamError, match="upstream down"):
        await rig.pipeline.complete(ask())
    assert rig.store.upserts == 0
    answer = await rig.pipeline.complete(ask())
    assert answer.cache_status is CacheStatus.MISS
    assert len(rig.provider.calls) == 2


async def test_truncated_answer_is_not_stored(rig: Rig) -> None:
    rig.provider.finish_reason = "length"
    await rig.pipeline.complete(ask())
    assert rig.store.upserts == 0


async def test_failing_store_is_a_miss_answered_upstream(rig: Rig) -> None:
    rig.store.fail_with = OSError("disk gone")
    answer = await rig.pipeline.complete(ask())
    assert (answer.cache_status, answer.cache_detail) == (CacheStatus.MISS, "lookup_failed")
    assert answer.content == "Use the reset link."


class SearchFailsOnce(MemoryVectorStore):
    search_error: Exception | None = None

    async def search_many(self, queries: Sequence[SearchQuery]) -> list[Sequence[ScoredEntry]]:
        self.search_error, failing = None, self.search_error
        if failing is not None:
            raise failing
        return await super().search_many(queries)


async def test_a_failed_search_keeps_the_vector_for_the_answers_store() -> None:
    embedder, store = HashingEmbedder(), SearchFailsOnce()
    batcher = EmbeddingBatcher(embedder)
    cache = SemanticCache(store, batcher, NearMissGuard())
    try:
        store.search_error = OSError("search timed out")
        lookup = await cache.lookup(ask())
        assert (lookup.detail, lookup.vector is not None) == ("lookup_failed", True)
        answer = Answer("Use the reset link.", "m", "stop", 1, 1, 0.0)
        stored = await cache.store_answer(lookup, answer)
        assert stored and store.upserts == 1
        assert embedder.calls == 1  # embedded once, not again to store the answer
    finally:
        await cache.close()
        await batcher.close()


async def test_cache_keys_are_memoised_per_question_and_scope() -> None:
    cache = SemanticCache(MemoryVectorStore(), EmbeddingBatcher(HashingEmbedder()), NearMissGuard())
    first = cache.key_for(ask(request_id="a", deadline_s=5.0))
    assert cache.key_for(ask(request_id="b")) is first  # ids and deadlines are not the key
    other_scopes = [
        ask(namespace="other"),
        ask(tenant="acme"),
        ask(model="gpt-4o-mini"),
        ask(sampling=replace(ask().sampling, temperature=0.5)),
        ask("Another question?"),
    ]
    keys = {cache.key_for(request).point_id for request in other_scopes}
    assert first.point_id not in keys and len(keys) == len(other_scopes)
    await cache.close()


async def test_a_failed_or_abandoned_miss_is_still_counted_as_a_miss(rig: Rig) -> None:
    """Found from outside: GetCacheStats left out misses whose provider failed or whose
    caller left, where semcache_cache_lookups_total counted them: two hit rates."""
    rig.provider.fail_next(UpstreamError("upstream down"))
    with pytest.raises(UpstreamError):
        await rig.pipeline.complete(ask())
    rig.provider.gate = asyncio.Event()
    leaving = asyncio.create_task(rig.pipeline.complete(ask("What is a mortgage?")))
    await _until(lambda: len(rig.provider.calls) == 2)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    rig.provider.gate.set()
    events = rig.pipeline.stream(ask("What is an annuity?"))
    await anext(events)
    await events.aclose()
    with pytest.raises(UpstreamError):
        rig.provider.fail_next(UpstreamError("upstream down"))
        await rig.pipeline.complete(ask(cache_policy=CachePolicy.BYPASS))
    counters = rig.stats.for_tenant("default")
    assert (counters.misses, counters.bypasses) == (3, 1)


async def test_a_refresh_counts_as_a_miss_in_the_lookups_counter_too(rig: Rig) -> None:
    await rig.pipeline.complete(ask(cache_policy=CachePolicy.REFRESH))
    looked_up = rig.metrics.registry.get_sample_value(
        "semcache_cache_lookups_total", {"result": "miss"}
    )
    assert looked_up == 1
    assert rig.stats.for_tenant("default").misses == 1


TOPICS = ["tax return deadline penalty", "garden fence paint primer", "guitar string gauge tension",
          "sourdough starter flour hydration", "bike brake pad cable", "kitchen tile grout sealant",
          "roof gutter ladder bracket"]  # fmt: skip


def _follow_up(topic: str, opening: str) -> CompletionRequest:
    earlier = (ChatMessage("user", f"{opening} {topic}"), ChatMessage("assistant", topic))
    return CompletionRequest(messages=(*earlier, ChatMessage("user", "yes please do that")))


async def test_a_follow_up_finds_its_own_conversation_among_many_with_the_same_words(
    rig: Rig,
) -> None:
    """Found from outside: follow-ups that end in the same words ("yes please do that")
    all tie on the final message; only the first five found were checked against the
    conversation, so past five stored, a later conversation's own entry was never a
    candidate (and which five came back differed by backend)."""
    stored = [(await rig.pipeline.complete(_follow_up(t, "hello"))).entry_id for t in TOPICS]
    assert len(set(stored)) == len(TOPICS)
    last = await rig.pipeline.complete(_follow_up(TOPICS[-1], "hi"))
    assert last.cache_status is CacheStatus.SEMANTIC_HIT, last.cache_detail
    assert last.entry_id == stored[-1]
