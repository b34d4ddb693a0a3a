"""Warm-up: operators seed the cache with curated question/answer pairs (an FAQ).

A seeded entry is stored exactly as an upstream answer to the same request
would be: its `CompletionRequest` gives the scope (tenant, namespace, model or
"auto", system prompt, sampling parameters) and the cache key, the question
is embedded the same way, and `SemanticCache.store_answer` writes it. So an
exact or semantic lookup of a request in that scope finds it like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from service.cache.scope import CacheKey
from service.cache.semantic import Answer, Lookup, SemanticCache
from service.domain import ChatMessage, CompletionRequest, SamplingParams
from service.errors import InvalidRequestError, StoreNotWritableError
from service.llm.catalogue import Catalogue
from service.validation import INVISIBLE_ONLY, MAX_SEEDS_PER_CALL, Limits, validate

MAX_ANSWER_BYTES = 262_144


@dataclass(frozen=True)
class SeedScope:
    """The requests a batch of curated answers stands for: the scope fields of a request.

    `model` None is the "auto" scope, which requests that leave the model to the
    router look up.
    """

    tenant: str
    namespace: str = "default"
    model: str | None = None
    system_prompt: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    ttl_s: int | None = None

    def request_for(self, question: str) -> CompletionRequest:
        """The request whose answer `question`'s seed stands in for."""
        system = (ChatMessage("system", self.system_prompt),) if self.system_prompt else ()
        return CompletionRequest(
            messages=(*system, ChatMessage("user", question)),
            tenant=self.tenant,
            namespace=self.namespace,
            model=self.model,
            sampling=self.sampling,
            ttl_s=self.ttl_s,
        )


@dataclass(frozen=True)
class Seed:
    """One curated answer, and the request (scope and question) it answers."""

    request: CompletionRequest
    answer: str


def seeds_for(scope: SeedScope, pairs: Sequence[tuple[str, str]]) -> list[Seed]:
    """A `Seed` per (question, answer) pair, all in `scope`."""
    return [Seed(scope.request_for(question), answer) for question, answer in pairs]


class Seeder:
    """Stores curated answers under the keys their requests would be looked up by."""

    def __init__(
        self,
        cache: SemanticCache,
        catalogue: Catalogue,
        limits: Limits,
        max_temperature: float | None = None,
    ) -> None:
        """`max_temperature`: SEMCACHE_MAX_CACHEABLE_TEMPERATURE; requests hotter than it
        skip the cache, so an entry for them is refused (None: no such limit)."""
        self._cache = cache
        self._catalogue = catalogue
        self._limits = limits
        self._max_temperature = max_temperature

    async def put(self, seeds: Sequence[Seed]) -> list[str | Exception]:
        """Store each seed; per seed, its entry id or why it was not stored.

        One bad seed does not stop the others.

        Raises:
            InvalidRequestError: no seeds, or more than `MAX_SEEDS_PER_CALL`.
        """
        if not seeds:
            raise InvalidRequestError("entries is empty: send at least one question/answer pair")
        if len(seeds) > MAX_SEEDS_PER_CALL:
            raise InvalidRequestError(
                f"{len(seeds)} entries is more than the limit of {MAX_SEEDS_PER_CALL};"
                " send them in smaller batches"
            )
        self._check_scope(seeds[0].request)
        first: dict[str, int] = {}  # entry id -> the first seed stored under it
        results = await asyncio.gather(
            *(self._put_unless_repeated(i, seed, first) for i, seed in enumerate(seeds)),
            return_exceptions=True,
        )
        return [_item(index, result) for index, result in enumerate(results)]

    def _check_scope(self, request: CompletionRequest) -> None:
        """The call's own fields (namespace, TTL, model, system prompt, sampling) checked
        once, so a bad one fails the call rather than every entry alike.

        Raises:
            InvalidRequestError: a field of the call cannot be served as sent.
            UnknownModelError: the model is not in the catalogue.
        """
        probe = replace(request, messages=(*request.messages[:-1], ChatMessage("user", "?")))
        validate(probe, self._limits)
        if probe.model:
            self._catalogue.require_model(probe.model)
        hottest, temperature = self._max_temperature, probe.sampling.temperature
        if hottest is not None and temperature is not None and temperature > hottest:
            raise InvalidRequestError(
                f"temperature {temperature:g} is above SEMCACHE_MAX_CACHEABLE_TEMPERATURE"
                f" ({hottest:g}): requests that hot skip the cache, so no request would"
                " ever be served these answers; seed them at the temperature asked"
            )

    async def _put_unless_repeated(self, index: int, seed: Seed, first: dict[str, int]) -> str:
        """`_put_one`, unless an earlier seed of the call asks the same question (in the
        same scope): two answers for one entry, where one would silently win."""
        self._check(seed)  # a seed refused for its own fault claims no question
        key = self._cache.key_for(seed.request)
        earlier = first.setdefault(key.point_id, index)
        if earlier != index:
            raise InvalidRequestError(
                f"the same question as entries[{earlier}] (one entry per question and"
                " scope); send one answer for it"
            )
        return await self._put_one(seed, key)

    async def _put_one(self, seed: Seed, key: CacheKey) -> str:
        answer = Answer(
            content=seed.answer,
            model=seed.request.model or "",
            finish_reason="stop",
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
        )
        if not await self._cache.store_answer(Lookup(key), answer, seed.request.ttl_s):
            raise StoreNotWritableError(
                "the cache store took no new entries: storing is paused (the disk nearly"
                " full, or the store not open; GetCacheStats' storing_paused_reason says"
                " which) or the store failed (the service's log says how); try again later"
            )
        return key.point_id

    def _check(self, seed: Seed) -> None:
        validate(seed.request, self._limits)
        if seed.request.model:
            self._catalogue.require_model(seed.request.model)
        if INVISIBLE_ONLY.fullmatch(seed.answer):
            raise InvalidRequestError("answer is empty: send the text to serve for the question")
        if len(seed.answer.encode()) > MAX_ANSWER_BYTES:
            raise InvalidRequestError(
                f"answer is {len(seed.answer.encode())} bytes; keep it to {MAX_ANSWER_BYTES}"
            )


def _item(index: int, result: str | BaseException) -> str | Exception:
    if isinstance(result, InvalidRequestError):
        return type(result)(f"entries[{index}]: {result}")
    if isinstance(result, str | Exception):
        return result
    raise result  # CancelledError and friends are not a seed's failure
