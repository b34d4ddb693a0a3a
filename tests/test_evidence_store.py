"""Per-entry evidence lives with the entry in the store (issue 12).

Each observation is its own payload key (`ev_<id>`), so: it reads back through
`get` and search on every backend, survives a restart of the embedded store, is
never added to an entry deleted in between (nor creates one), is trimmed to the
newest `MAX_OBSERVATIONS`, is dropped when a new answer replaces the entry, and
two replicas sharing one Qdrant collection that add observations at once lose
none of them. A damaged observation is skipped, never failing a lookup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import pytest_asyncio
from qdrant_client import AsyncQdrantClient

from service.cache.edge_store import EdgeVectorStore
from service.cache.memory_store import MemoryVectorStore
from service.cache.qdrant_store import QdrantVectorStore
from service.cache.store import (
    EVIDENCE_KEY_PREFIX,
    CacheEntry,
    EntryFilter,
    Float32s,
    SearchQuery,
    VectorStore,
    evidence_key,
)
from service.cache.verify.evidence import MAX_OBSERVATIONS, Evidence, Observation
from service.errors import StoreNotWritableError

DIM = 8
NOW = 1_000.0
BACKENDS = ("edge", "qdrant-memory", "memory")


def _id(n: int) -> str:
    return str(uuid.UUID(int=n + 1, version=4))


def _entry(n: int, **changes: Any) -> CacheEntry:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "namespace": "default",
        "scope": "s1",
        "model": "gpt-4o-mini",
        "question": f"question {n}",
        "content": f"answer {n}",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "cost_usd": 0.001,
        "created_at": NOW - 10,
        "expires_at": NOW + 3_600,
        "last_hit_at": NOW - 10,
    }
    return CacheEntry(**(fields | changes))


def _vector(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal(DIM).astype(np.float32)


def _obs(n: int, same: bool = True, prefix: str = "req") -> Observation:
    return Observation(NOW + n, f"{prefix}-{n}", 0.80 + (n % 10) / 100, same)


async def _open(name: str, path: Path) -> VectorStore:
    if name == "edge":
        return EdgeVectorStore(path / "edge", DIM)
    if name == "qdrant-memory":
        return await QdrantVectorStore.open(":memory:", "evidence", DIM)
    return MemoryVectorStore()


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    opened = await _open(request.param, tmp_path)
    yield opened
    await opened.close()


async def _stored_keys(store: VectorStore, point_id: str) -> list[str] | None:
    """The evidence keys in the point's raw payload; None for the fake (no payload)."""
    if isinstance(store, EdgeVectorStore):
        records = store.shard.retrieve([point_id], with_payload=True, with_vector=False)
        payload = records[0].payload or {}
    elif isinstance(store, QdrantVectorStore):
        found = await store._client.retrieve(store._collection, [point_id], with_payload=True)
        payload = found[0].payload or {}
    else:
        return None
    return sorted(key for key in payload if key.startswith(EVIDENCE_KEY_PREFIX))


async def _search_entry(store: VectorStore, n: int) -> CacheEntry:
    entry = _entry(n)
    query = SearchQuery(_vector(n), entry.tenant, entry.scope, NOW, 1)
    (found,) = await store.search_many([query])
    assert [hit.point_id for hit in found] == [_id(n)]
    return found[0].entry


# --- payload form -------------------------------------------------------------------


def test_each_observation_is_its_own_payload_key_and_reads_back() -> None:
    feedback = Observation(NOW, "fb-x", 0.81, False, feedback=True, similarity=0.934)
    evidence = Evidence.of([_obs(1), _obs(2, same=False), Observation(NOW, "a.b/c d", 0.9, True)])
    evidence = evidence.add(feedback)
    entry = _entry(0, evidence=evidence)
    payload = entry.to_payload()
    assert "evidence" not in payload
    keys = sorted(k for k in payload if k.startswith(EVIDENCE_KEY_PREFIX))
    assert keys == sorted(["ev_req-1", "ev_req-2", evidence_key("a.b/c d"), "ev_fb-x"])
    assert payload["ev_fb-x"] | {"at_s": 0} == {
        "at_s": 0, "id": "fb-x", "score": 0.81, "same": False, "fb": True, "sim": 0.934
    }  # fmt: skip
    score = _obs(2).score
    assert payload["ev_req-2"] == {"at_s": NOW + 2, "id": "req-2", "score": score, "same": False}
    assert CacheEntry.from_payload(payload) == entry
    assert CacheEntry.from_payload(_entry(0).to_payload()).evidence == Evidence()


def test_reading_a_payload_gives_the_entry_its_fields_make() -> None:
    """Whatever shape the payload has: every field (read without `__init__`), an older
    entry's without an optional field (its default), foreign keys (dropped), a context."""
    entry = _entry(0, context="we spoke of refunds", context_vector=Float32s((0.5, -0.25)))
    payload = entry.to_payload()
    read = CacheEntry.from_payload(payload)
    assert read == entry and hash(read) == hash(entry) and repr(read) == repr(entry)
    assert read.context_vector == (0.5, -0.25) and read.evidence == Evidence()
    assert dataclasses.replace(entry, context_vector=(0.5, -0.25)) == read, (
        "equal to the same values"
    )
    older = {k: v for k, v in payload.items() if k != "tool_calls_json"}
    assert CacheEntry.from_payload(older) == entry
    assert CacheEntry.from_payload(payload | {"added_later": 1}) == entry
    with pytest.raises(TypeError):
        CacheEntry.from_payload({k: v for k, v in payload.items() if k != "content"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.content = "changed"  # type: ignore[misc]


def test_observation_ids_are_made_safe_for_a_payload_key() -> None:
    assert evidence_key("req_9-Z") == "ev_req_9-Z"
    hashed = [evidence_key(i) for i in ("a.b", "x" * 65, "ü", "a b", "", 'a"b', "a[0]")]
    assert all(len(key) == len("ev_") + 16 for key in hashed)
    assert all(all(c.isalnum() and c.isascii() for c in key[3:]) for key in hashed)
    assert len(set(hashed)) == len(hashed)
    assert evidence_key("x" * 64) == "ev_" + "x" * 64


def test_a_damaged_observation_is_skipped_not_raised() -> None:
    payload = _entry(0).to_payload() | {
        "ev_req-1": _obs(1).to_payload(),
        "ev_junk": "not a mapping",
        "ev_none": None,
        "ev_missing": {"at_s": 1.0, "id": "missing"},
        "ev_types": {"at_s": "soon", "id": "types", "score": 0.9, "same": True},
        "ev_nan": {"at_s": float("nan"), "id": "nan", "score": 0.9, "same": True},
        "ev_string_verdict": {"at_s": 1.0, "id": "s", "score": 0.9, "same": "false"},
        "ev_bool_score": {"at_s": 1.0, "id": "b", "score": True, "same": True},
        "ev_list": [1, 2],
    }
    assert CacheEntry.from_payload(payload).evidence == Evidence.of([_obs(1)])


def test_every_observation_shape_reads_as_the_general_parse_reads_it() -> None:
    """Observations are read by a quick check of the written form first; any value
    reads the same as `Observation.from_payload` reads it, or is skipped as it skips."""
    written = _obs(1).to_payload()
    shapes: list[object] = [
        written,
        written | {"fb": True},
        written | {"fb": False},
        written | {"at_s": 7},  # an int time: the general parse takes it as 7.0
        written | {"score": 1},
        written | {"extra": 1},
        written | {"fb": 1},
        written | {"fb": True, "sim": 0.93},
        written | {"sim": 1},
        written | {"sim": float("nan")},
        written | {"sim": "0.9"},
        written | {"same": 1},
        written | {"score": float("inf")},
        written | {"at_s": float("nan")},
        written | {"id": 5},
        written | {"score": True},
        {k: v for k, v in written.items() if k != "same"},
        {"at_s": 1.0, "id": "x", "score": 0.5, "fb": True},
        [written],
        None,
    ]
    for shape in shapes:
        try:
            expected = Evidence.of([Observation.from_payload(cast(Any, shape))])
        except ValueError:
            expected = Evidence()
        read = CacheEntry.from_payload(_entry(0).to_payload() | {"ev_x": shape}).evidence
        assert read == expected, shape
        types = [[type(v) for v in vars(o).values()] for o in read.observations]
        assert types == [[type(v) for v in vars(o).values()] for o in expected.observations]


def test_reading_keeps_the_newest_observations_whatever_the_payload_holds() -> None:
    many = {evidence_key(o.obs_id): o.to_payload() for o in map(_obs, range(50))}
    evidence = CacheEntry.from_payload(_entry(0).to_payload() | many).evidence
    assert evidence == Evidence.of(map(_obs, range(50 - MAX_OBSERVATIONS, 50)))


def test_one_observation_per_id_the_newest() -> None:
    """A store may read a float back a hair off, and feedback given twice for one request
    shares its id: either way the id counts once, with its newest verdict."""
    written = _obs(1)
    read_back = Observation(math.nextafter(written.at_s, 0), written.obs_id, written.score, True)
    assert Evidence.of([written]).merge(Evidence.of([read_back])) == Evidence.of([written])
    corrected = Observation(NOW + 50, "fb-req-1", 1.0, False)
    both = Evidence.of([Observation(NOW + 40, "fb-req-1", 1.0, True), corrected])
    assert both == Evidence.of([corrected])


# --- every backend ------------------------------------------------------------------


async def test_observations_read_back_through_get_and_search(store: VectorStore) -> None:
    for n in range(3):
        await store.upsert(_id(n), _vector(n), _entry(n))
    await store.add_observations([(_id(0), _obs(1)), (_id(1), _obs(2, same=False))])
    await store.add_observations([(_id(0), _obs(3, same=False)), (_id(0), _obs(4))])
    await store.add_observations([])

    want = Evidence.of([_obs(1), _obs(3, same=False), _obs(4)])
    got = await store.get(_id(0))
    assert got is not None
    assert got.evidence == want
    assert got == _entry(0, evidence=want)
    assert (await _search_entry(store, 0)).evidence == want
    assert (await _search_entry(store, 1)).evidence == Evidence.of([_obs(2, same=False)])
    assert (await _search_entry(store, 2)).evidence == Evidence()


async def test_adding_to_a_deleted_entry_creates_nothing(store: VectorStore) -> None:
    for n in range(2):
        await store.upsert(_id(n), _vector(n), _entry(n))
    await store.delete(EntryFilter(point_id=_id(0)))
    never_stored = _id(99)

    await store.add_observations([(_id(0), _obs(1)), (never_stored, _obs(2)), (_id(1), _obs(3))])

    assert await store.get(_id(0)) is None
    assert await store.get(never_stored) is None
    assert await store.count(EntryFilter()) == 1
    kept = await store.get(_id(1))
    assert kept is not None
    assert kept.evidence == Evidence.of([_obs(3)])


async def test_trimming_keeps_the_newest_observations(store: VectorStore) -> None:
    await store.upsert(_id(0), _vector(0), _entry(0))
    order = list(range(60))
    random.Random(7).shuffle(order)  # arrival order is not time order
    for start in range(0, 60, 7):
        await store.add_observations([(_id(0), _obs(n)) for n in order[start : start + 7]])

    newest = Evidence.of(map(_obs, range(60 - MAX_OBSERVATIONS, 60)))
    got = await store.get(_id(0))
    assert got is not None
    assert got.evidence == newest
    keys = await _stored_keys(store, _id(0))
    assert keys is None or keys == sorted(evidence_key(o.obs_id) for o in newest.observations)


async def test_an_observation_older_than_the_newest_is_not_written(store: VectorStore) -> None:
    await store.upsert(_id(0), _vector(0), _entry(0))
    await store.add_observations([(_id(0), _obs(n)) for n in range(10, 10 + MAX_OBSERVATIONS)])
    await store.add_observations([(_id(0), _obs(1))])  # late, and older than all of them
    got = await store.get(_id(0))
    assert got is not None
    assert _obs(1) not in got.evidence.observations
    assert len(got.evidence) == MAX_OBSERVATIONS
    keys = await _stored_keys(store, _id(0))
    assert keys is None or len(keys) == MAX_OBSERVATIONS


async def test_a_new_answer_starts_with_no_evidence(store: VectorStore) -> None:
    await store.upsert(_id(0), _vector(0), _entry(0))
    await store.add_observations([(_id(0), _obs(n)) for n in range(5)])
    await store.upsert(_id(0), _vector(0), _entry(0, content="a fresh answer"))

    got = await store.get(_id(0))
    assert got is not None
    assert got.evidence == Evidence()
    assert got.content == "a fresh answer"
    assert await _stored_keys(store, _id(0)) in (None, [])
    assert (await _search_entry(store, 0)).evidence == Evidence()


async def test_a_replayed_observation_counts_once(store: VectorStore) -> None:
    await store.upsert(_id(0), _vector(0), _entry(0))
    for _ in range(3):
        await store.add_observations([(_id(0), _obs(1)), (_id(0), _obs(1))])
    got = await store.get(_id(0))
    assert got is not None
    assert got.evidence == Evidence.of([_obs(1)])


# --- the embedded store -------------------------------------------------------------


async def test_evidence_survives_closing_and_reopening_the_embedded_store(
    tmp_path: Path,
) -> None:
    store = EdgeVectorStore(tmp_path / "edge", DIM)
    await store.upsert(_id(0), _vector(0), _entry(0))
    await store.add_observations([(_id(0), _obs(n, same=n % 2 == 0)) for n in range(5)])
    await store.close()

    reopened = EdgeVectorStore(tmp_path / "edge", DIM)
    try:
        got = await reopened.get(_id(0))
        assert got is not None
        assert got.evidence == Evidence.of(_obs(n, same=n % 2 == 0) for n in range(5))
        assert (await _search_entry(reopened, 0)).evidence == got.evidence
    finally:
        await reopened.close()


async def test_a_damaged_observation_in_the_store_never_fails_a_lookup(tmp_path: Path) -> None:
    import qdrant_edge as qe

    store = EdgeVectorStore(tmp_path / "edge", DIM)
    try:
        await store.upsert(_id(0), _vector(0), _entry(0))
        await store.add_observations([(_id(0), _obs(1))])
        damage = {"ev_bad": {"at_s": "yesterday"}, "ev_worse": 7}
        store.shard.update(qe.UpdateOperation.set_payload([_id(0)], damage))
        got = await store.get(_id(0))
        assert got is not None
        assert got.evidence == Evidence.of([_obs(1)])
        assert (await _search_entry(store, 0)).evidence == got.evidence
        await store.add_observations([(_id(0), _obs(2))])  # adding past damage works too
        assert (await _search_entry(store, 0)).evidence == Evidence.of([_obs(1), _obs(2)])
    finally:
        await store.close()


async def test_adding_observations_on_a_full_disk_raises_not_writable(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "edge", DIM)
    await store.upsert(_id(0), _vector(0), _entry(0))
    await store.close()
    # a watermark no disk can keep free: the shard opens, but every write is refused
    full = EdgeVectorStore(tmp_path / "edge", DIM, min_free_bytes=10**18)
    try:
        with pytest.raises(StoreNotWritableError):
            await full.add_observations([(_id(0), _obs(1))])
        got = await full.get(_id(0))
        assert got is not None
        assert got.evidence == Evidence()  # lookups still answer
    finally:
        await full.close()


# --- replicas sharing one Qdrant collection -----------------------------------------


class _Interleaving:
    """A qdrant-client stand-in that yields to the event loop (a seeded, random number
    of times) before each call, as a network round trip would, so that two replicas'
    reads and writes interleave; it logs (replica, call) in the order they ran."""

    def __init__(self, client: AsyncQdrantClient, replica: str, log: list[tuple[str, str]]):
        self._client, self._replica, self._log = client, replica, log
        self._rng = random.Random(replica)

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._client, name)
        if not inspect.iscoroutinefunction(call):
            return call

        async def yielding(*args: Any, **kwargs: Any) -> Any:
            for _ in range(self._rng.randrange(4)):
                await asyncio.sleep(0)
            self._log.append((self._replica, name))
            return await cast(Callable[..., Awaitable[Any]], call)(*args, **kwargs)

        return yielding


def _read_then_written_by_another(log: Sequence[tuple[str, str]]) -> bool:
    """Whether some replica read, then the other wrote, before the first one wrote."""
    pending: dict[str, bool] = {}
    for replica, call in log:
        if call == "retrieve":
            pending[replica] = True
        elif call == "batch_update_points":
            if any(pending.get(other) for other in pending if other != replica):
                return True
            pending[replica] = False
    return False


async def _replicas(client: AsyncQdrantClient, log: list[tuple[str, str]]) -> list[VectorStore]:
    return [
        await QdrantVectorStore.attach(
            cast(AsyncQdrantClient, _Interleaving(client, r, log)), "shared", DIM
        )
        for r in ("replica-a", "replica-b")
    ]


@pytest.mark.parametrize("per_replica", [12, 40])
async def test_replicas_adding_at_once_lose_no_observation(per_replica: int) -> None:
    client = AsyncQdrantClient(location=":memory:")
    log: list[tuple[str, str]] = []
    replica_a, replica_b = await _replicas(client, log)
    await replica_a.upsert(_id(0), _vector(0), _entry(0))
    await replica_b.upsert(_id(1), _vector(1), _entry(1))
    added: dict[str, list[Observation]] = {_id(0): [], _id(1): []}
    calls = []
    for n in range(per_replica):
        for replica, name in ((replica_a, "a"), (replica_b, "b")):
            at = 2 * n + (name == "b")
            point_id = _id(n % 2)
            observation = Observation(NOW + at, f"{name}-{n}", 0.9, n % 3 != 0)
            added[point_id].append(observation)
            calls.append(replica.add_observations([(point_id, observation)]))
    await asyncio.gather(*calls)

    assert _read_then_written_by_another(log), "the replicas never raced: the test proves nothing"
    for point_id, observations in added.items():
        want = Evidence.of(observations)
        assert len(want) == min(per_replica, MAX_OBSERVATIONS)
        for replica in (replica_a, replica_b):
            got = await replica.get(point_id)
            assert got is not None
            assert got.evidence == want, point_id
    await client.close()


def test_a_kept_context_vector_takes_four_bytes_a_value() -> None:
    """A follow-up entry kept in memory (the entry memo) carries its context's vector:
    384 Python floats in a tuple took about 12 KB of it; float32 values take 1.5 KB."""
    import tracemalloc

    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    entry = _entry(0, context="an earlier turn", context_vector=vector.tolist())
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        # as each read from the store: new float objects every time
        payloads = [entry.to_payload() | {"context_vector": vector.tolist()} for _ in range(100)]
        kept = [CacheEntry.from_payload(payload) for payload in payloads]
        del payloads  # what a kept entry holds on its own
        grown = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()
    per_entry = sum(stat.size_diff for stat in grown) / len(kept)
    assert per_entry < 3_000, f"{per_entry:.0f} bytes a kept entry"  # 13,130 as a tuple
    assert kept[0].context_vector == vector.tolist()
    assert np.asarray(kept[0].context_vector).dtype == np.float32
