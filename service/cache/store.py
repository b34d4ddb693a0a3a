"""The store protocols, and the entry and filter types their backends share.

`LookupStore` is what the request path needs, `AdminStore` what administration
and upkeep need; `VectorStore` is both, as every backend is.

Backends: `edge_store.EdgeVectorStore` (Qdrant Edge, embedded, the default)
and `qdrant_store.QdrantVectorStore` (a Qdrant server through qdrant-client).
`factory.build_store` chooses one from the settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]

# Payload fields with an index, and the kind of index each one gets.
KEYWORD_FIELDS = ("tenant", "namespace", "scope", "model")
FLOAT_FIELDS = ("created_at", "expires_at", "last_hit_at")


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
    context_vector: tuple[float, ...] = ()
    tool_calls_json: str = ""

    def to_payload(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["context_vector"] = list(self.context_vector)
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CacheEntry:
        fields = {name: payload[name] for name in cls.__dataclass_fields__ if name in payload}
        fields["context_vector"] = tuple(payload.get("context_vector") or ())
        return cls(**fields)


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


def scored_entries(points: Iterable[ScoredPoint]) -> list[ScoredEntry]:
    """A library's search answer as `ScoredEntry`s (points without a payload dropped)."""
    return [
        ScoredEntry(str(p.id), float(p.score), CacheEntry.from_payload(p.payload))
        for p in points
        if p.payload is not None
    ]


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
