"""The store backends give the same answers to the same operations.

One seeded sequence of operations (upserts across tenants, namespaces, scopes
and models, entries already expired, replacements, scoped searches, gets,
counts and deletions by filter, hit times and least-recent eviction, evidence
added to entries, some deleted or replaced in between) is fed to
the Qdrant Edge store, the qdrant-client `:memory:` store and the in-memory
fake; every answer is compared: search ids and order, scores within 1e-5,
entries, counts and what is left. (qdrant-client's own congruence tests do the
same for its local and remote modes.)
"""

from __future__ import annotations

import inspect
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from service.cache.edge_store import EdgeVectorStore
from service.cache.memory_store import MemoryVectorStore
from service.cache.qdrant_store import QdrantVectorStore
from service.cache.store import (
    AdminStore,
    CacheEntry,
    EntryFilter,
    LookupStore,
    ScoredEntry,
    SearchQuery,
    VectorStore,
)
from service.cache.verify.evidence import MAX_OBSERVATIONS, Evidence, Observation

DIM = 16
NOW = 10_000.0
TENANTS = ("acme", "globex")
NAMESPACES = ("default", "support")
SCOPES = ("s1", "s2", "s3")
MODELS = ("gpt-4o-mini", "gpt-4o")
SCORE_TOLERANCE = 1e-5

Stores = dict[str, VectorStore]


@pytest_asyncio.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    qdrant = await QdrantVectorStore.open(":memory:", "congruence", DIM)
    opened: Stores = {
        "edge": EdgeVectorStore(tmp_path / "edge", DIM),
        "qdrant-memory": qdrant,
        "memory": MemoryVectorStore(),
    }
    yield opened
    for store in opened.values():
        await store.close()


def _vector(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(DIM).astype(np.float32)


def _entry(rnd: random.Random, index: int) -> CacheEntry:
    created_at = float(rnd.randrange(0, 9_000))
    return CacheEntry(
        tenant=rnd.choice(TENANTS),
        namespace=rnd.choice(NAMESPACES),
        scope=rnd.choice(SCOPES),
        model=rnd.choice(MODELS),
        question=f"question {index}",
        content=f"answer {index}",
        finish_reason="stop",
        prompt_tokens=index,
        completion_tokens=2 * index,
        cost_usd=index / 1000,
        created_at=created_at,
        expires_at=rnd.choice([created_at + 500.0, NOW + 3_600.0, NOW, NOW + 0.5]),
        last_hit_at=created_at + index / 100,  # distinct, so eviction order is defined
    )


async def _fill(stores: Stores, seed: int, count: int) -> tuple[list[str], np.random.Generator]:
    rnd, rng = random.Random(seed), np.random.default_rng(seed)
    ids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(count)]
    for index, point_id in enumerate(ids):
        vector, entry = _vector(rng), _entry(rnd, index)
        for store in stores.values():
            await store.upsert(point_id, vector, entry)
    return ids, rng


def _summary(found: Sequence[ScoredEntry]) -> list[tuple[str, str]]:
    return [(hit.point_id, hit.entry.question) for hit in found]


def _assert_same_entry(name: str, got: CacheEntry | None, want: CacheEntry | None) -> None:
    """Equal entries; evidence's floats within a hair (Qdrant Edge reads about a quarter
    of payload floats back one unit in the last place off)."""
    if got is None or want is None:
        assert got is want, name
        return
    assert replace(got, evidence=Evidence()) == replace(want, evidence=Evidence()), name
    mine, theirs = (sorted(e.evidence.observations, key=lambda o: o.obs_id) for e in (got, want))
    assert [(o.obs_id, o.same) for o in mine] == [(o.obs_id, o.same) for o in theirs], name
    for field in ("at_s", "score"):
        values = [getattr(o, field) for o in mine]
        assert values == pytest.approx([getattr(o, field) for o in theirs], rel=1e-12), name


def _assert_same_results(
    name: str, found: Sequence[ScoredEntry], ref: Sequence[ScoredEntry]
) -> None:
    assert _summary(found) == _summary(ref), name
    for got, want in zip(found, ref, strict=True):
        assert got.similarity == pytest.approx(want.similarity, abs=SCORE_TOLERANCE), name
        _assert_same_entry(name, got.entry, want.entry)


async def _same_answers(stores: Stores, queries: Sequence[SearchQuery]) -> None:
    answers = {name: await store.search_many(queries) for name, store in stores.items()}
    reference = answers.pop("memory")
    for name, found in answers.items():
        for got, want in zip(found, reference, strict=True):
            _assert_same_results(name, got, want)


def _queries(rng: np.random.Generator, rnd: random.Random, count: int) -> list[SearchQuery]:
    return [
        SearchQuery(
            _vector(rng),
            rnd.choice(TENANTS),
            rnd.choice(SCOPES),
            rnd.choice([NOW - 0.5, NOW, NOW + 1.0]),
            rnd.choice([1, 3, 5, 50]),
        )
        for _ in range(count)
    ]


FILTERS = [
    EntryFilter(),
    EntryFilter(tenant="acme"),
    EntryFilter(tenant="globex", namespace="support"),
    EntryFilter(model="gpt-4o", namespace="default"),
    EntryFilter(created_before=4_000.0),
    EntryFilter(tenant="acme", created_before=4_000.0, live_at=NOW),
    EntryFilter(expired_at=NOW),
    EntryFilter(live_at=NOW),
    EntryFilter(tenant="nobody"),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_searches_agree(stores: Stores, seed: int) -> None:
    ids, rng = await _fill(stores, seed, 120)
    rnd = random.Random(seed * 7)
    await _same_answers(stores, _queries(rng, rnd, 40))
    # a query equal to a stored vector finds it first, at cosine 1
    vector = rng.standard_normal(DIM).astype(np.float32)
    entry = replace(_entry(rnd, 999), expires_at=NOW + 3_600.0)
    for store in stores.values():
        await store.upsert(ids[0], vector, entry)
    query = SearchQuery(3.0 * vector, entry.tenant, entry.scope, NOW - 1.0, 5)
    await _same_answers(stores, [query])
    (found,) = await stores["edge"].search_many([query])
    assert found[0].point_id == ids[0]
    assert found[0].similarity == pytest.approx(1.0, abs=SCORE_TOLERANCE)


async def test_a_query_alone_agrees_with_the_same_query_in_a_batch(stores: Stores) -> None:
    _, rng = await _fill(stores, 4, 60)
    queries = _queries(rng, random.Random(4), 3)
    for name, store in stores.items():
        (one,) = await store.search_many([queries[1]])
        many = await store.search_many(queries)
        _assert_same_results(name, one, many[1])


async def test_get_agrees_and_replacement_wins(stores: Stores) -> None:
    ids, rng = await _fill(stores, 5, 40)
    replacement = _entry(random.Random(55), 4242)
    for store in stores.values():
        await store.upsert(ids[3], _vector(rng), replacement)
    missing = str(uuid.UUID(int=12345, version=4))
    for point_id in [*ids[:10], missing]:
        answers = {name: await store.get(point_id) for name, store in stores.items()}
        assert len(set(map(repr, answers.values()))) == 1, (point_id, answers)
    assert await stores["edge"].get(ids[3]) == replacement
    assert await stores["edge"].get(missing) is None


async def test_counts_and_deletions_agree(stores: Stores) -> None:
    await _fill(stores, 6, 150)
    for selector in FILTERS:
        counts = {name: await store.count(selector) for name, store in stores.items()}
        assert len(set(counts.values())) == 1, (selector, counts)
    for selector in (EntryFilter(expired_at=NOW), EntryFilter(tenant="acme", model="gpt-4o")):
        deleted = {name: await store.delete(selector) for name, store in stores.items()}
        assert len(set(deleted.values())) == 1, (selector, deleted)
        assert next(iter(deleted.values())) > 0
    for selector in FILTERS:
        counts = {name: await store.count(selector) for name, store in stores.items()}
        assert len(set(counts.values())) == 1, (selector, counts)
    assert await stores["memory"].count(EntryFilter(expired_at=NOW)) == 0


async def _surviving_ids(store: VectorStore, ids: Sequence[str]) -> set[str]:
    return {point_id for point_id in ids if await store.get(point_id) is not None}


async def _hit_times(store: VectorStore, ids: Sequence[str], tenant: str) -> list[float]:
    entries = [await store.get(point_id) for point_id in ids]
    return sorted(e.last_hit_at for e in entries if e is not None and e.tenant == tenant)


async def test_touch_and_eviction_agree(stores: Stores) -> None:
    ids, _ = await _fill(stores, 7, 80)
    touched = ids[::3]
    for offset_s, point_id in enumerate(touched):
        for store in stores.values():
            await store.touch([point_id], NOW + offset_s)
    for offset_s, point_id in enumerate(touched[:5]):
        entries = [await store.get(point_id) for store in stores.values()]
        assert {e.last_hit_at for e in entries if e is not None} == {NOW + offset_s}
    for tenant, keep in (("acme", 20), ("globex", 5), ("acme", 100), ("acme", 0)):
        evicted = {name: await s.evict_least_recent(tenant, keep) for name, s in stores.items()}
        assert len(set(evicted.values())) == 1, (tenant, keep, evicted)
        left = {name: await _surviving_ids(s, ids) for name, s in stores.items()}
        assert left["edge"] == left["qdrant-memory"] == left["memory"], (tenant, keep)
    survivors = await _surviving_ids(stores["memory"], ids)
    assert survivors and survivors <= set(touched)  # recently hit entries outlive the rest


async def test_eviction_among_equal_hit_times_agrees_on_how_many(stores: Stores) -> None:
    """Hits written together share one time; which of those tied entries goes first is
    not defined (Edge and the fake go by point id, qdrant-client's local mode does not),
    but every backend evicts the same number and never a more recently hit entry."""
    ids, _ = await _fill(stores, 8, 80)
    for store in stores.values():
        await store.touch(ids[::2], NOW + 50.0)
    evicted = {name: await s.evict_least_recent("globex", 5) for name, s in stores.items()}
    assert len(set(evicted.values())) == 1, evicted
    times = {name: await _hit_times(s, ids, "globex") for name, s in stores.items()}
    assert times["edge"] == times["qdrant-memory"] == times["memory"] == [NOW + 50.0] * 5


@pytest.mark.parametrize("name", ["edge", "qdrant-memory", "memory"])
async def test_touch_skips_entries_deleted_since_their_hit(stores: Stores, name: str) -> None:
    """Hit times are written in batches; an entry evicted or invalidated in between must
    not make the batch fail (its other entries would then look unused to eviction)."""
    store = stores[name]
    ids = [str(uuid.UUID(int=i, version=4)) for i in range(3)]
    entry = _entry(random.Random(9), 0)
    for point_id in ids:
        await store.upsert(point_id, np.ones(DIM, dtype=np.float32), entry)
    await store.delete(EntryFilter(tenant=entry.tenant))  # all three gone...
    for point_id in (ids[0], ids[2]):  # ...and two stored again
        await store.upsert(point_id, np.ones(DIM, dtype=np.float32), entry)
    await store.touch(ids, NOW + 7.0)
    kept = [await store.get(point_id) for point_id in (ids[0], ids[2])]
    assert [e.last_hit_at for e in kept if e is not None] == [NOW + 7.0, NOW + 7.0]
    assert await store.get(ids[1]) is None


def _observations(
    rnd: random.Random, ids: Sequence[str], count: int
) -> list[tuple[str, Observation]]:
    return [
        (
            rnd.choice(ids),
            Observation(
                NOW + rnd.random(), f"obs-{rnd.getrandbits(32)}", rnd.random(), rnd.random() < 0.7
            ),
        )
        for _ in range(count)
    ]


async def test_evidence_agrees(stores: Stores) -> None:
    """Observations added in batches (to entries deleted or replaced in between, and
    past the cap on a few) read back the same through get and search everywhere."""
    ids, rng = await _fill(stores, 10, 40)
    rnd = random.Random(10)
    crowded = ids[:3]  # these get more than the cap
    for step in range(12):
        batch = _observations(rnd, ids, 8) + _observations(rnd, crowded, 10)
        for store in stores.values():
            await store.add_observations(batch)
        if step == 4:  # one entry deleted, one replaced by a new answer (no evidence)
            vector, entry = _vector(rng), replace(_entry(rnd, 606), expires_at=NOW + 3_600.0)
            for store in stores.values():
                await store.delete(EntryFilter(point_id=ids[5]))
                await store.upsert(ids[6], vector, entry)
    for point_id in ids:
        answers = {name: await store.get(point_id) for name, store in stores.items()}
        for name in ("edge", "qdrant-memory"):
            _assert_same_entry(f"{name} {point_id}", answers[name], answers["memory"])
    entry = await stores["memory"].get(crowded[0])
    assert entry is not None
    assert len(entry.evidence) == MAX_OBSERVATIONS
    assert await stores["memory"].get(ids[5]) is None
    await _same_answers(stores, _queries(rng, rnd, 30))


@pytest.mark.parametrize("backend", [EdgeVectorStore, QdrantVectorStore, MemoryVectorStore])
@pytest.mark.parametrize("protocol", [LookupStore, AdminStore])
def test_every_backend_implements_both_store_protocols(backend: type, protocol: type) -> None:
    methods = [
        name
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and not name.startswith("_")
    ]
    assert methods, f"{protocol.__name__} declares no methods"
    for name in methods:
        wanted = list(inspect.signature(getattr(protocol, name)).parameters)
        assert list(inspect.signature(getattr(backend, name)).parameters) == wanted, name
    assert not hasattr(MemoryVectorStore, "search"), "the protocols search through search_many"
