"""The cache's lookup and store steps: exact id, scoped ANN, then verification.

Verification is either the near-miss guard (`guard.NearMissGuard`, the
default) or a plain cosine threshold (`ThresholdVerifier`). A follow-up
question ("cancel it") must also match its conversation context.

The cache fails open: if the embedder or the store fails, a lookup is a miss
and a store is skipped, each with a warning; the request still gets answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from service.batching.micro import MicroBatcher
from service.cache.guard import GuardVerdict
from service.cache.hit_times import HitTimes
from service.cache.scope import CacheKey, CacheKeys
from service.cache.store import (
    CacheEntry,
    EntryFilter,
    Float32s,
    ScoredEntry,
    SearchQuery,
    Vector,
    VectorStore,
)
from service.cache.verify.prior import DEFAULT_PRIOR
from service.cache.verify.verifier import Choice, Exploration, HitDecider, VerifyState
from service.domain import CacheStatus, CompletionRequest, assembled
from service.embedding.batcher import EmbeddingBatcher
from service.errors import StoreNotWritableError
from service.telemetry import Telemetry

log = structlog.get_logger(__name__)

FOREVER_S = 100 * 365 * 24 * 3600  # what "no TTL" means for an entry's expiry


class Verifier(Protocol):
    """Decides whether a candidate's cached answer fits the query."""

    def verify(self, query: str, cached: str, similarity: float) -> GuardVerdict: ...

    def verify_context(
        self, query_context: str, cached_context: str, similarity: float
    ) -> GuardVerdict: ...


class ThresholdVerifier:
    """The plain policy: a cosine threshold, and a context cosine for follow-ups."""

    def __init__(self, similarity_min: float, context_min: float = 0.7) -> None:
        self.similarity_min = similarity_min
        self.context_min = context_min

    def verify(self, query: str, cached: str, similarity: float) -> GuardVerdict:
        accept = similarity >= self.similarity_min
        return GuardVerdict(accept, similarity, "ok" if accept else "below_threshold")

    def verify_context(
        self, query_context: str, cached_context: str, similarity: float
    ) -> GuardVerdict:
        if bool(query_context) != bool(cached_context):
            return GuardVerdict(False, 0.0, "context_missing")
        accept = not query_context or similarity >= self.context_min
        return GuardVerdict(accept, similarity, "ok" if accept else "context_below_threshold")


@dataclass(frozen=True)
class CacheHit:
    """A servable entry: `score` is the guard's (1.0 for an exact hit), and
    `error_probability` the decision's estimated P(wrong) (0 for an exact hit)."""

    status: CacheStatus
    similarity: float
    entry: CacheEntry
    point_id: str
    score: float = 1.0
    error_probability: float = 0.0
    detail: str = "exact"  # why it was served: exact, ok, same_form, identical


@dataclass(frozen=True)
class Lookup:
    """What a lookup found, and what the store step can reuse (never embed twice).

    `best_similarity` and `detail` say why a miss missed: the nearest
    candidate's cosine, and the verifier's reason for refusing it. An
    `exploration` is a candidate the decision wants judged against the
    upstream's fresh answer (the request is answered upstream).
    """

    key: CacheKey
    hit: CacheHit | None = None
    exploration: Exploration | None = None
    vector: Vector | None = None
    context_vector: Vector | None = None
    best_similarity: float = 0.0
    detail: str = ""
    fallback: CacheHit | None = None  # an audit's candidate, served if the upstream fails
    # A refresh's vectors, embedded while the provider answers (`SemanticCache.refreshing`).
    embedding: asyncio.Future[tuple[Vector, Vector | None]] | None = field(
        default=None, compare=False, repr=False
    )


@dataclass(frozen=True)
class Answer:
    """What the provider returned, as the cache stores it."""

    content: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    tool_calls_json: str = ""


class EvictionSchedule:
    """When a tenant's entries are counted and the least recently hit beyond its limit
    evicted: after every 1% of the limit in stores (every store below 100), not after
    each. A count walks the tenant's entries on the store's write thread, and each
    miss waited for one; a tenant may now go over its limit by up to 1% meanwhile.
    No limit (0): never."""

    def __init__(self, max_entries: int) -> None:
        self._limit = max_entries
        self._every = max(1, max_entries // 100)
        self._stores: dict[str, int] = {}  # since the tenant's last count

    def due(self, tenant: str) -> bool:
        """One more entry stored for `tenant`: whether to count and evict now."""
        if not self._limit:
            return False
        stores = self._stores.get(tenant, 0) + 1
        due = stores >= self._every
        self._stores[tenant] = 0 if due else stores
        return due


class SemanticCache:
    """Scoped semantic cache over a `VectorStore`, embedding through an `EmbeddingBatcher`.

    `upstream_id` (see `scope.upstream_identity`) enters every scope, so answers
    from one upstream are never served for another. `decider` chooses among the
    verified candidates (`verify.verifier.HitDecider`; by default the verifier's
    own accept decides).
    """

    def __init__(
        self,
        store: VectorStore,
        embedder: EmbeddingBatcher,
        verifier: Verifier,
        *,
        search_limit: int = 5,
        ttl_s: int = 0,
        max_entries_per_tenant: int = 0,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
        upstream_id: str = "",
        decider: HitDecider | None = None,
    ) -> None:
        self.store = store
        self.decider = decider or HitDecider(VerifyState(DEFAULT_PRIOR))
        self._keys = CacheKeys(embedder.model_id, upstream_id)
        self.upstream_id = upstream_id
        self.embedder = embedder
        self.verifier = verifier
        self._search_limit = search_limit
        self._ttl_s = ttl_s
        self._max_entries = max_entries_per_tenant
        self._evictions = EvictionSchedule(max_entries_per_tenant)
        self._clock = clock
        self._hit_times = HitTimes(store, clock)
        self._telemetry = telemetry or Telemetry()
        metrics = self._telemetry.metrics
        # Concurrent lookups' searches go to the store together; a lone one goes at once.
        self._searches: MicroBatcher[SearchQuery, Sequence[ScoredEntry]] = MicroBatcher(
            store.search_many,
            name="search-batcher",
            on_batch=lambda size: metrics.observe_batch_size("search", size),
            inline_when_idle=True,
        )

    def key_for(self, request: CompletionRequest) -> CacheKey:
        """The request's cache key (memoised: see `scope.CacheKeys`)."""
        return self._keys.key_for(request)

    async def refreshing(self, request: CompletionRequest, wait: bool = False) -> Lookup:
        """A refresh's lookup: none (a miss), its vectors being embedded meanwhile, so the
        answer's store does not wait for them after the provider answers; `wait`: with
        them (for a router that needs the vector)."""
        key = self.key_for(request)
        embedding = asyncio.ensure_future(_embed_key(self.embedder, key))
        embedding.add_done_callback(_retrieved)  # an answer not stored never awaits it
        lookup = Lookup(key, embedding=embedding)
        return await with_vectors(lookup) if wait else lookup

    async def lookup(self, request: CompletionRequest) -> Lookup:
        """Exact match by id first; else the best verified live entry in scope.

        `request.similarity_min`, when set, raises the floor for this lookup.
        """
        key = self.key_for(request)
        vector: Vector | None = None
        context_vector: Vector | None = None
        try:
            exact = await self._exact(key)
            if exact is not None:
                self.decider.note_exact(key)
                self._hit_times.note(exact.point_id)
                self._telemetry.metrics.record_lookup("hit")
                return _exact_lookup(key, exact)
            with self._telemetry.stage("embed"):
                vector, context_vector = await _embed_key(self.embedder, key)
            limit = self._search_limit * (CONTEXT_WIDENING if key.context else 1)
            query = SearchQuery(vector, key.tenant, key.scope, self._clock(), limit)
            with self._telemetry.stage("search"):
                found = await self._searches.submit(query)
            if key.context:
                found = _nearest_in_context(found, context_vector, self._search_limit)
        except Exception as error:
            log.warning("cache lookup failed; treating as a miss", error=repr(error))
            self._telemetry.metrics.record_lookup("error")
            # Vectors made before the failure route the miss and store its answer.
            return Lookup(key, vector=vector, context_vector=context_vector, detail="lookup_failed")
        with self._telemetry.stage("verify"):
            choice = self._choose(key, found, context_vector, request)
        hit = _hit(choice)
        if hit is not None:
            self._hit_times.note(hit.point_id)
        self._telemetry.metrics.record_lookup("miss" if hit is None else "hit")
        best = found[0].similarity if found else 0.0
        detail = "ok" if hit is not None else choice.detail
        fallback = _audited_hit(choice)
        return Lookup(key, hit, choice.exploration, vector, context_vector, best, detail, fallback)

    async def _exact(self, key: CacheKey) -> CacheHit | None:
        """The exact hit, if any. An answer judged wrong itself (feedback on the entry) is
        not one: the search then finds it and the decision refuses it too."""
        entry = await self.store.get(key.point_id)
        if entry is None or entry.expires_at <= self._clock():
            return None
        if entry.tenant != key.tenant or entry.scope != key.scope:
            return None  # cannot happen with uuid5 ids; checked because failing closed is cheap
        if entry.evidence.observations and entry.evidence.judged_wrong_at(1.0, None):
            return None  # most entries have no observations to weigh
        return assembled(
            CacheHit,
            {
                "status": CacheStatus.EXACT_HIT,
                "similarity": 1.0,
                "entry": entry,
                "point_id": key.point_id,
                "score": 1.0,
                "error_probability": 0.0,
                "detail": "exact",
            },
        )

    def _choose(
        self,
        key: CacheKey,
        found: Sequence[ScoredEntry],
        context_vector: Vector | None,
        request: CompletionRequest,
    ) -> Choice:
        """The decider's choice among the candidates, each verified by the verifier."""
        floor = request.similarity_min  # None: the request set none (a cosine may be < 0)
        verdicts = [_verified(self.verifier, key, c, context_vector, floor) for c in found]
        return self.decider.choose(key, found, verdicts, request.max_error_rate, request.request_id)

    async def store_answer(self, lookup: Lookup, answer: Answer, ttl_s: int | None = None) -> bool:
        """Cache `answer` under `lookup.key`, reusing the lookup's vectors when it has them.

        `ttl_s` overrides the cache's TTL for this entry. Returns whether it was
        stored (False, counted and logged, when the store refused it).
        """
        try:
            lookup = await with_vectors(lookup)
            vector, context_vector = lookup.vector, lookup.context_vector
            if vector is None:
                with self._telemetry.stage("embed"):
                    vector, context_vector = await _embed_key(self.embedder, lookup.key)
            lifetime_s = ttl_s if ttl_s is not None else (self._ttl_s or FOREVER_S)
            entry = new_entry(lookup.key, answer, context_vector, self._clock(), lifetime_s)
            with self._telemetry.stage("store"):
                await self.store.upsert(lookup.key.point_id, vector, entry)
                if self._evictions.due(lookup.key.tenant):
                    await self._hit_times.flush()  # eviction must see the latest hits
                    await _evict(self.store, lookup.key.tenant, self._max_entries, self._clock())
        except StoreNotWritableError:
            # The store logged why once, when storing paused; each skip is only counted.
            self._telemetry.metrics.record_store_skipped("disk_full")
            return False
        except Exception as error:
            self._telemetry.metrics.record_store_skipped("store_error")
            log.warning("cache store failed; answer not cached", error=repr(error))
            return False
        return True

    async def maintain(self, min_unindexed: int) -> bool:
        """Let the store build its index in the background; see `VectorStore.maintain`."""
        return await self.store.maintain(min_unindexed)

    async def purge_expired(self) -> int:
        """Delete every entry whose TTL has run out; returns how many.

        0 while the store takes no writes (disk full): expired entries are never
        served, and go at the first purge once there is room.
        """
        try:
            return await self.store.delete(EntryFilter(expired_at=self._clock()))
        except StoreNotWritableError:
            return 0

    async def invalidate(self, selector: EntryFilter) -> int:
        return await self.store.delete(selector)

    async def live_entries(self, tenant: str, namespace: str | None) -> int:
        return await self.store.count(
            EntryFilter(tenant=tenant, namespace=namespace, live_at=self._clock())
        )

    async def close(self) -> None:
        """Write the pending hit times, and stop the search batcher."""
        await self._hit_times.aclose()
        await self._searches.close()


async def with_vectors(lookup: Lookup) -> Lookup:
    """`lookup` with its refresh's vectors once embedded (unchanged if that failed:
    storing the answer then tries once more)."""
    if lookup.embedding is None or lookup.vector is not None:
        return lookup
    try:
        vector, context_vector = await asyncio.shield(lookup.embedding)
    except Exception:  # the store step embeds again, and logs if that fails too
        return lookup
    return dataclasses.replace(lookup, vector=vector, context_vector=context_vector)


def _verified(
    verifier: Verifier,
    key: CacheKey,
    candidate: ScoredEntry,
    context_vector: Vector | None,
    floor: float | None,
) -> GuardVerdict:
    if floor is not None and candidate.similarity < floor:
        return GuardVerdict(False, 0.0, "below_request_similarity_min")
    verdict = verifier.verify(key.text, candidate.entry.question, candidate.similarity)
    if verdict.vetoed or not (key.context or candidate.entry.context):
        return verdict
    context_similarity = _cosine(context_vector, candidate.entry.context_vector)
    context_verdict = verifier.verify_context(
        key.context, candidate.entry.context, context_similarity
    )
    if not context_verdict.accept:
        return context_verdict
    # A follow-up's answer fits only if its conversation does too: the weaker match
    # bounds the score (an identical "yes please" is only as safe as its context).
    score = min(verdict.score, context_verdict.score)
    return GuardVerdict(verdict.accept, score, verdict.reason)


def new_entry(
    key: CacheKey, answer: Answer, context_vector: Vector | None, now: float, lifetime_s: float
) -> CacheEntry:
    """The entry that stores `answer` under `key`, created `now`, servable for `lifetime_s`."""
    return CacheEntry(
        tenant=key.tenant,
        namespace=key.namespace,
        scope=key.scope,
        model=answer.model,
        question=key.text,
        content=answer.content,
        finish_reason=answer.finish_reason,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        cost_usd=answer.cost_usd,
        created_at=now,
        expires_at=now + lifetime_s,
        last_hit_at=now,
        context=key.context,
        context_vector=Float32s(context_vector.astype(np.float32).tobytes())
        if context_vector is not None
        else (),
        tool_calls_json=answer.tool_calls_json,
    )


def _exact_lookup(key: CacheKey, hit: CacheHit) -> Lookup:
    """An exact hit's lookup, every field named: built without the frozen dataclass's
    `__init__` (`domain.assembled`; every exact hit builds one, issue 13)."""
    return assembled(
        Lookup,
        {
            "key": key,
            "hit": hit,
            "exploration": None,
            "vector": None,
            "context_vector": None,
            "best_similarity": 1.0,
            "detail": "exact",
        },
    )


def _audited_hit(choice: Choice) -> CacheHit | None:
    """An audit's candidate as the hit it would have been, for when its upstream call fails
    (the README: while every provider is down, hits are still served)."""
    if choice.audited is None or choice.exploration is None:
        return None
    score = choice.exploration.score
    return _hit(Choice(choice.audited, score, choice.p_wrong, "audit_unanswered"))


def _hit(choice: Choice) -> CacheHit | None:
    served = choice.served
    if served is None:
        return None
    return CacheHit(
        CacheStatus.SEMANTIC_HIT,
        served.similarity,
        served.entry,
        served.point_id,
        choice.score,
        choice.p_wrong,
        choice.detail,
    )


async def _evict(store: VectorStore, tenant: str, keep: int, now: float) -> None:
    """Bring `tenant` back to `keep` entries: its expired entries go first (found from
    outside: counted until the next purge, they had a live entry evicted in their
    place), then its least recently hit ones."""
    await store.delete(EntryFilter(tenant=tenant, expired_at=now))
    await store.evict_least_recent(tenant, keep)


# A follow-up searches this many times the usual candidates by its final message, then
# keeps the usual number nearest in both message and conversation. Found from outside:
# follow-ups ending in the same words ("yes please do that") all tie on the final
# message, and of more than five stored, only the five the store happened to return
# first were checked against the conversation (which five differed by backend).
CONTEXT_WIDENING = 8


def _nearest_in_context(
    found: Sequence[ScoredEntry], context_vector: Vector | None, limit: int
) -> Sequence[ScoredEntry]:
    """The `limit` candidates of `found` whose weaker match, of message and of
    conversation, is the strongest (ties in the store's order)."""
    if len(found) <= limit:
        return found

    def weaker(candidate: ScoredEntry) -> float:
        context = _cosine(context_vector, candidate.entry.context_vector)
        return min(candidate.similarity, context)

    return sorted(found, key=weaker, reverse=True)[:limit]


async def _embed_key(embedder: EmbeddingBatcher, key: CacheKey) -> tuple[Vector, Vector | None]:
    """The question's vector, and its context's when it is a follow-up."""
    if not key.context:
        return await embedder.embed(key.text), None
    question, context = await asyncio.gather(embedder.embed(key.text), embedder.embed(key.context))
    return question, context


def _retrieved(embedding: asyncio.Future[tuple[Vector, Vector | None]]) -> None:
    """Mark a failed embedding's error as seen (it is logged when the answer is stored)."""
    if not embedding.cancelled():
        embedding.exception()


def _cosine(query: Vector | None, cached: Sequence[float]) -> float:
    if query is None or not cached:
        return 0.0
    return float(np.dot(query, np.asarray(cached, dtype=np.float32)))
