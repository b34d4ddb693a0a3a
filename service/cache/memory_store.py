"""`MemoryVectorStore`: the `VectorStore` protocol over a dict, for tests.

Exact (brute-force) cosine search in numpy, the same filters as the real
backends (`filters`: an `EntryFilter`, tenant + scope + live at `now`),
nothing persisted.
`tests/test_store_congruence.py` holds it to the answers of the Qdrant Edge
and qdrant-client `:memory:` backends, so a test that passes on it means the
same on them. `fail_with` makes every call raise, to test that the cache
fails open.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from service.cache.filters import Condition, entry_conditions, holds, scope_conditions
from service.cache.store import (
    CacheEntry,
    EntryFilter,
    ScoredEntry,
    SearchQuery,
    StoreHealth,
    Vector,
    evidence_payload,
    evidence_update,
    group_observations,
    stored_observations,
)
from service.cache.verify.evidence import Evidence, Observation

__all__ = ["MemoryVectorStore"]


@dataclass(frozen=True)
class _Point:
    vector: Vector  # unit length, as Qdrant keeps cosine vectors
    entry: CacheEntry


def _unit(vector: Vector) -> Vector:
    v = np.asarray(vector, dtype=np.float32)
    norm = np.linalg.norm(v)
    return v if norm == 0 else (v / norm).astype(np.float32)


class MemoryVectorStore:
    """An in-memory `VectorStore`; `upserts` and `searches` count entries written and
    queries searched (a `search_many` of three queries counts three).

    Raises:
        Exception: every method raises `fail_with` while it is set.
    """

    def __init__(self) -> None:
        self._points: dict[str, _Point] = {}
        self.fail_with: Exception | None = None
        self.upserts = 0
        self.searches = 0
        self.closed = False

    def _check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    async def get(self, point_id: str) -> CacheEntry | None:
        """The entry stored under `point_id`, expired or not; None if absent."""
        self._check()
        point = self._points.get(point_id)
        return None if point is None else point.entry

    async def search_many(self, queries: Sequence[SearchQuery]) -> list[Sequence[ScoredEntry]]:
        """Exact search for each query, answers in order."""
        self._check()
        self.searches += len(queries)
        return [self._search(query) for query in queries]

    def _selected(self, conditions: Sequence[Condition]) -> list[str]:
        """The ids of the entries every one of `conditions` holds for."""
        return [
            pid
            for pid, point in self._points.items()
            if all(holds(c, pid, point.entry) for c in conditions)
        ]

    def _search(self, query: SearchQuery) -> list[ScoredEntry]:
        unit = _unit(query.vector)
        scored = [
            ScoredEntry(pid, float(np.dot(unit, self._points[pid].vector)), self._points[pid].entry)
            for pid in self._selected(scope_conditions(query))
        ]
        scored.sort(key=lambda s: -s.similarity)
        return scored[: query.limit]

    async def upsert(self, point_id: str, vector: Vector, entry: CacheEntry) -> None:
        """Store `entry` under `point_id`, replacing what was there."""
        self._check()
        self.upserts += 1
        self._points[point_id] = _Point(_unit(vector), entry)

    async def delete(self, selector: EntryFilter) -> int:
        """Delete the entries `selector` matches; returns how many there were."""
        self._check()
        doomed = self._selected(entry_conditions(selector))
        for point_id in doomed:
            del self._points[point_id]
        return len(doomed)

    async def count(self, selector: EntryFilter) -> int:
        """How many entries `selector` matches."""
        self._check()
        return len(self._selected(entry_conditions(selector)))

    async def tenants(self, limit: int) -> list[str]:
        """The tenants that have entries (at most `limit`, those with the most first)."""
        self._check()
        counts = Counter(point.entry.tenant for point in self._points.values())
        return [tenant for tenant, _ in counts.most_common(limit)]

    async def touch(self, point_ids: Sequence[str], now: float) -> None:
        """Set `last_hit_at` to `now` on the entries that exist."""
        self._check()
        for point_id in point_ids:
            point = self._points.get(point_id)
            if point is not None:
                self._points[point_id] = replace(point, entry=replace(point.entry, last_hit_at=now))

    async def add_observations(self, items: Sequence[tuple[str, Observation]]) -> None:
        """Add observations to the entries that exist, as the real backends do: one key
        per observation, keys outside the newest `MAX_OBSERVATIONS` deleted."""
        self._check()
        for point_id, added in group_observations(items).items():
            point = self._points.get(point_id)
            if point is None:
                continue
            keys = evidence_payload(point.entry.evidence)
            update = evidence_update(keys, added)
            kept = {k: v for k, v in keys.items() if k not in update.delete_keys}
            evidence = Evidence.of(stored_observations(kept | update.set_keys).values())
            self._points[point_id] = replace(point, entry=replace(point.entry, evidence=evidence))

    async def evict_least_recent(self, tenant: str, keep: int) -> int:
        """Delete `tenant`'s least recently hit entries beyond the newest `keep`."""
        self._check()
        mine = [
            (p.entry.last_hit_at, pid)
            for pid, p in self._points.items()
            if p.entry.tenant == tenant
        ]
        excess = len(mine) - keep
        if excess <= 0:
            return 0
        for _, point_id in sorted(mine)[:excess]:
            del self._points[point_id]
        return excess

    async def maintain(self, min_unindexed: int) -> bool:
        """Nothing to build: search is exact. Always False."""
        self._check()
        return False

    def health(self) -> StoreHealth:
        """Always writable: memory never fills a disk."""
        return StoreHealth(writable=True)

    async def close(self) -> None:
        """Mark the store closed (nothing to persist)."""
        self.closed = True
