"""Parsed entries kept in memory for lookups by id and search results (issue 13).

A fetch by id from Qdrant Edge, and the entry built from its payload, were
the largest single part of an exact hit's own work on a busy server: the
shard rebuilds the payload at every read, and the read runs cold between
gRPC's callbacks. The embedded store is the only writer of its shard (the shard's
folder belongs to this process), so it can keep what it read and drop it at
every write that could change it:

- a write names the ids it changes (an upsert, new evidence, an eviction's
  victims), and those are dropped once the write is done, whether or not it
  succeeded (an eviction that failed part way drops all); hit times,
  written for every entry hit in the last half second, are set on the kept
  entries instead (dropping them would empty the memo of the hot ones); after
  an upsert that succeeded, the entry is read back and kept (the answer just
  stored is the likeliest to be asked again; read back, since the engine may
  return a float one unit in the last place off what was written): on the
  write thread after a write there, on the event loop right after an inline
  one, once the reply to the miss is on its way;
- a write by filter (a deletion, a TTL purge, reopening the shard) drops all.

A search takes the entries of the points it found from the memo when it has
them (a search's payloads are converted anew at every read); it keeps none of
those it builds, so the memo's exact-hit entries are not pushed out by searches.

A read that raced a write must not keep what it read: `generation` is taken
before the read and `keep` stores the entry only if no write finished since.
Writes run on the store's write thread (a lone upsert inline, under the same
write lock) and reads on the event loop, so `forget`, `clear`, `touch` and
`keep` take one lock; `get` is a lone dict read.

A Qdrant server is shared by replicas, which change entries this process
never hears of: that backend keeps no memo and reads the server every time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from service.cache.store import CacheEntry
from service.domain import assembled


class EntryMemo:
    """At most `size` entries by point id (0: none kept), oldest kept dropped first."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self._size = size
        self._entries: dict[str, CacheEntry] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped by every finished write; read before a store read

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, point_id: str) -> CacheEntry | None:
        """The kept entry for `point_id`, or None (not kept: read the store)."""
        return self._entries.get(point_id)

    def keep(self, point_id: str, entry: CacheEntry, generation: int) -> None:
        """Keep `entry`, read after `generation` was taken, unless a write finished since."""
        if not self._size:
            return
        with self._lock:
            if generation != self.generation:
                return
            entries = self._entries
            entries[point_id] = entry
            if len(entries) > self._size:
                del entries[next(iter(entries))]

    def read_through(
        self, point_id: str, read: Callable[[str], CacheEntry | None]
    ) -> CacheEntry | None:
        """`read(point_id)` from the store, kept unless a write finished while it read."""
        generation = self.generation
        entry = read(point_id)
        if entry is not None:
            self.keep(point_id, entry, generation)
        return entry

    def touch(self, point_ids: Iterable[str], now: float) -> None:
        """Hit times `now` of `point_ids` were written: kept entries take them too.

        Not a `forget`: hit times are written every half second for every entry hit
        meanwhile, and dropping those would empty the memo of exactly the hot ones.
        """
        with self._lock:
            entries = self._entries
            for point_id in point_ids:
                entry = entries.get(point_id)
                if entry is not None:
                    entries[point_id] = assembled(CacheEntry, {**vars(entry), "last_hit_at": now})
            self.generation += 1

    def forget(self, point_ids: Iterable[str]) -> None:
        """A write that may have changed `point_ids` has finished."""
        with self._lock:
            for point_id in point_ids:
                self._entries.pop(point_id, None)
            self.generation += 1

    def clear(self) -> None:
        """A write that may have changed any entry has finished."""
        with self._lock:
            self._entries.clear()
            self.generation += 1
