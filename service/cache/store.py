"""The store protocols, and the entry and filter types their backends share.

`LookupStore` is what the request path needs, `AdminStore` what administration
and upkeep need; `VectorStore` is both, as every backend is.

Backends: `edge_store.EdgeVectorStore` (Qdrant Edge, embedded, the default)
and `qdrant_store.QdrantVectorStore` (a Qdrant server through qdrant-client).
`factory.build_store` chooses one from the settings.

An entry's evidence (`verify.evidence`) lives in its payload one observation per
top-level key (`EVIDENCE_KEY_PREFIX` + the observation's id), so replicas sharing a
Qdrant server each write their own keys and never overwrite one another's; readers
gather every key into an `Evidence` (the newest `MAX_OBSERVATIONS`).
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, overload

import numpy as np
import numpy.typing as npt

from service.cache.verify.evidence import MAX_OBSERVATIONS, Evidence, Observation
from service.domain import assembled

Vector = npt.NDArray[np.float32]

# Payload fields with an index, and the kind of index each one gets.
KEYWORD_FIELDS = ("tenant", "namespace", "scope", "model")
FLOAT_FIELDS = ("created_at", "expires_at", "last_hit_at")

# Each observation of an entry's evidence is the payload key this prefix + its id.
EVIDENCE_KEY_PREFIX = "ev_"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a key Qdrant's JSON paths take unquoted
_HASHED_ID_HEX = 16


def evidence_key(obs_id: str) -> str:
    """The payload key of observation `obs_id`: the prefix and the id if it is made of
    [A-Za-z0-9_-] (up to 64 characters), else the first 16 hex of its sha256."""
    if _SAFE_ID.fullmatch(obs_id):
        return EVIDENCE_KEY_PREFIX + obs_id
    return EVIDENCE_KEY_PREFIX + hashlib.sha256(obs_id.encode()).hexdigest()[:_HASHED_ID_HEX]


def stored_observations(payload: Mapping[str, Any]) -> dict[str, Observation]:
    """The well-formed observations in `payload`, by key; malformed ones are skipped
    (a damaged observation must never fail a lookup)."""
    found: dict[str, Observation] = {}
    for key, value in payload.items():
        if key.startswith(EVIDENCE_KEY_PREFIX):
            observation = _plain_observation(value)
            if observation is not None:
                found[key] = observation
                continue
            try:
                found[key] = Observation.from_payload(value)
            except ValueError:
                continue
    return found


def _plain_observation(value: object) -> Observation | None:
    """`Observation.from_payload(value)` when `value` is exactly the form `to_payload`
    writes (floats, a str id, bools), else None for it to decide. A hot entry holds up
    to `MAX_OBSERVATIONS` and every hit on it reads them all (issue 13): this is the
    one check of their types, where the general parse checks each on its way."""
    if type(value) is not dict or not 4 <= len(value) <= 5:
        return None
    at_s, obs_id = value.get("at_s"), value.get("id")
    score, same, feedback = value.get("score"), value.get("same"), value.get("fb", False)
    if type(at_s) is not float or type(score) is not float or type(obs_id) is not str:
        return None
    if type(same) is not bool or type(feedback) is not bool or len(value) != 4 + ("fb" in value):
        return None
    if not (math.isfinite(at_s) and math.isfinite(score)):
        return None
    return assembled(
        Observation,
        {
            "at_s": at_s, "obs_id": obs_id, "score": score, "same": same, "feedback": feedback,
            "similarity": None,  # written with `sim` only, which the general parse reads
        },
    )  # fmt: skip


def evidence_payload(evidence: Evidence) -> dict[str, dict[str, Any]]:
    """`evidence` as payload keys, one per observation."""
    return {evidence_key(o.obs_id): o.to_payload() for o in evidence.observations}


@dataclass(frozen=True)
class EvidenceUpdate:
    """The payload writes that add observations to one entry: keys to set, and keys to
    delete (observations outside the newest `MAX_OBSERVATIONS` of what was read)."""

    set_keys: dict[str, dict[str, Any]]
    delete_keys: tuple[str, ...]


def evidence_update(payload: Mapping[str, Any], added: Iterable[Observation]) -> EvidenceUpdate:
    """How to add `added` to the entry whose payload is `payload`.

    Replica-safe: what is read is a subset of everything ever written, so a key outside
    its newest `MAX_OBSERVATIONS` has that many newer observations written, is outside
    every later merged view, and may be deleted by anyone. A new observation already
    outside the newest is not written at all. Malformed keys are left alone.
    """
    stored = stored_observations(payload)
    new = {evidence_key(o.obs_id): o for o in added}
    merged = stored | new
    newest = sorted(merged, key=merged.__getitem__, reverse=True)[:MAX_OBSERVATIONS]
    keep = set(newest)
    return EvidenceUpdate(
        {key: o.to_payload() for key, o in new.items() if key in keep},
        tuple(sorted(key for key in stored if key not in keep)),
    )


def group_observations(
    items: Iterable[tuple[str, Observation]],
) -> dict[str, list[Observation]]:
    """`add_observations`' items grouped by point id, in the order first seen."""
    grouped: dict[str, list[Observation]] = {}
    for point_id, observation in items:
        grouped.setdefault(point_id, []).append(observation)
    return grouped


class Float32s(Sequence[float]):
    """An immutable vector of float32 values, 4 bytes each.

    A follow-up entry keeps its context's vector (384 values) for the guard: as a
    tuple of Python floats that took about 12 KB of every such entry kept in memory
    (`entry_memo`), as this 1.5 KB. Equal to any sequence of the same values, and
    hashed like the tuple of them; numpy reads it without a copy.
    """

    __slots__ = ("_data",)

    def __init__(self, values: Iterable[float] | bytes = ()) -> None:
        self._data = values if isinstance(values, bytes) else array("f", values).tobytes()

    def _view(self) -> memoryview[float]:
        return memoryview(self._data).cast("f")

    def __len__(self) -> int:
        return len(self._data) // 4

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> Float32s: ...
    def __getitem__(self, index: int | slice) -> float | Float32s:
        if isinstance(index, slice):
            return Float32s(self._view()[index].tobytes())
        return float(self._view()[index])

    def __iter__(self) -> Iterator[float]:
        return iter(self._view().tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Float32s):
            return self._data == other._data
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Float32s({list(self)!r})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[np.float32]:
        vector = np.frombuffer(self._data, dtype=np.float32)
        return vector if dtype is None else vector.astype(dtype, copy=False)


def context_vector_of(values: Iterable[float] | None) -> Sequence[float]:
    """A context vector as an entry keeps it: `Float32s`, or () when there is none."""
    return Float32s(values) if values else ()


@dataclass(frozen=True)
class CacheEntry:
    """One cached answer, stored as a point's payload."""

    tenant: str
    namespace: str
    scope: str
    model: str
    question: str
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    created_at: float
    expires_at: float
    last_hit_at: float
    context: str = ""
    context_vector: Sequence[float] = ()  # a `Float32s` when there is one
    tool_calls_json: str = ""
    evidence: Evidence = field(default_factory=Evidence)

    def to_payload(self) -> dict[str, Any]:
        """The point's payload: the fields, and each observation under its own key."""
        values = vars(self)  # not `fields()`: this runs for every answer stored (issue 13)
        payload = {name: values[name] for name in _FIELD_KEYS}
        payload["context_vector"] = list(self.context_vector)
        if self.evidence.observations:
            payload.update(evidence_payload(self.evidence))
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CacheEntry:
        """Read a point's payload back; evidence is the newest `MAX_OBSERVATIONS` of the
        well-formed observations it holds.

        Every hit reads one (an exact hit little else), so the common payload, every
        field and nothing more, is copied whole rather than key by key, holds no
        evidence to parse, and fills the frozen entry without its `__init__`
        (`domain.assembled`). Anything else goes the general way.
        """
        keys = payload.keys()
        if keys <= _FIELD_KEY_SET:
            values = dict(payload)
            evidence = _NO_EVIDENCE
        else:
            values = {name: payload[name] for name in _FIELD_KEYS if name in payload}
            evidence = Evidence.of(stored_observations(payload).values())
        values["context_vector"] = context_vector_of(payload.get("context_vector"))
        values["evidence"] = evidence
        return assembled(cls, values)  # a field missing: its default, or a TypeError


# An entry's fields as payload keys (its evidence is stored one key per observation).
_FIELD_KEYS = tuple(f.name for f in fields(CacheEntry) if f.name != "evidence")
_FIELD_KEY_SET = frozenset(_FIELD_KEYS)
_NO_EVIDENCE = Evidence()


@dataclass(frozen=True)
class StoreHealth:
    """Whether the store takes new entries, and what it found when it opened.

    `reason` says, for people, why storing is paused; `missing_entries` counts
    entries the store held before and lacked when this process opened it.
    """

    writable: bool
    reason: str = ""
    missing_entries: int = 0


@dataclass(frozen=True)
class ScoredEntry:
    """A search result: an entry and its cosine similarity to the query."""

    point_id: str
    similarity: float
    entry: CacheEntry


class ScoredPoint(Protocol):
    """What both backends' libraries answer a search with, as far as we read it."""

    @property
    def id(self) -> object: ...

    @property
    def score(self) -> float: ...

    @property
    def payload(self) -> Mapping[str, Any] | None: ...


def scored_entries(
    points: Iterable[ScoredPoint], kept: Callable[[str], CacheEntry | None] | None = None
) -> list[ScoredEntry]:
    """A library's search answer as `ScoredEntry`s (points without a payload dropped).

    Each point's payload is read once: Qdrant Edge converts it anew at every read
    (~10 µs an entry, five a search; issue 13). `kept`, when given, is asked for each
    point's entry first, and its payload is read only when it has none."""
    found = []
    for point in points:
        point_id = str(point.id)
        entry = kept(point_id) if kept is not None else None
        if entry is None:
            payload = point.payload
            if payload is None:
                continue
            entry = CacheEntry.from_payload(payload)
        found.append(ScoredEntry(point_id, float(point.score), entry))
    return found


@dataclass(frozen=True)
class SearchQuery:
    """One scoped search: live entries of (tenant, scope) nearest to `vector`."""

    vector: Vector
    tenant: str
    scope: str
    now: float
    limit: int


@dataclass(frozen=True)
class EntryFilter:
    """Selects entries for counting and deletion; unset fields match everything.

    `created_before`, `expired_at` and `live_at` are epoch seconds: entries
    created before the first, whose expiry is at or before the second, or
    still live (expiring after) the third. `point_id` selects one entry by id.
    """

    tenant: str | None = None
    point_id: str | None = None
    namespace: str | None = None
    model: str | None = None
    created_before: float | None = None
    expired_at: float | None = None
    live_at: float | None = None


class LookupStore(Protocol):
    """What answering a request needs: scoped nearest-neighbour search over cached
    questions, exact lookup by id, storing, and recording hits.

    Every search is restricted to one tenant and one scope fingerprint, and to
    entries not yet expired at `now`.
    """

    async def get(self, point_id: str) -> CacheEntry | None:
        """The entry stored under `point_id`, expired or not; None if absent."""
        ...

    async def search_many(self, queries: Sequence[SearchQuery]) -> list[Sequence[ScoredEntry]]:
        """For each query (in one call to the store), up to `limit` live entries in
        (tenant, scope), most similar first; answers in query order."""
        ...

    async def upsert(self, point_id: str, vector: Vector, entry: CacheEntry) -> None:
        """Store `entry` under `point_id`, replacing what was there."""
        ...

    async def touch(self, point_ids: Sequence[str], now: float) -> None:
        """Record that the entries were served at `now` (for least-recently-hit eviction)."""
        ...

    async def add_observations(self, items: Sequence[tuple[str, Observation]]) -> None:
        """Add each (point id, observation) to that entry's evidence, each observation
        under its own payload key (replicas never overwrite each other's), deleting keys
        of observations older than the entry's newest `MAX_OBSERVATIONS`. Ids no longer
        stored are skipped (nothing is created).

        Raises:
            StoreNotWritableError: storing is paused (disk full) or the store is closed.
        """
        ...


class AdminStore(Protocol):
    """What administering the cache needs: delete and count by filter, evict,
    upkeep, health, and closing."""

    async def delete(self, selector: EntryFilter) -> int:
        """Delete the entries `selector` matches; returns how many there were."""
        ...

    async def count(self, selector: EntryFilter) -> int:
        """How many entries `selector` matches."""
        ...

    async def evict_least_recent(self, tenant: str, keep: int) -> int:
        """Delete `tenant`'s least recently hit entries beyond the newest `keep`."""
        ...

    async def tenants(self, limit: int) -> list[str]:
        """The tenants that have entries, at most `limit` (those with the most first)."""
        ...

    async def maintain(self, min_unindexed: int) -> bool:
        """Background upkeep (index building) once `min_unindexed` points lack an index.

        Returns whether work was started.
        """
        ...

    def health(self) -> StoreHealth:
        """Whether new entries are stored now (cheap: no I/O)."""
        ...

    async def close(self) -> None:
        """Persist what is pending and release the store."""
        ...


class VectorStore(LookupStore, AdminStore, Protocol):
    """A whole backend: both the lookup and the administration side."""
