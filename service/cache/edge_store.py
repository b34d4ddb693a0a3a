"""Qdrant Edge backend: Qdrant's engine in-process, persistent in one directory.

Qdrant Edge's calls are synchronous and hold the GIL while they run (measured:
a thread searching in a loop and the main thread together ran no faster than
either alone; writes alike). Lookups therefore run inline on the event loop, a
fetch by id and a (batched) search alike: a read thread bought no parallelism,
only two hand-offs per search, each waiting for a busy event loop to let go of
the GIL (issue 13). Writes run on a dedicated thread, one at a time under
one lock; a lone upsert (a miss's answer) runs inline under that lock when no
other write holds it and no disk measurement is due, saving the two hand-offs
(about 0.2 ms of a miss, measured). Counts and info run on another
thread, and the index rebuild's copy and swap on a third. `optimize` (seconds
to minutes) holds the GIL from start to end, so it runs in a child process on
a copy of the shard, swapped in when done (`edge_rebuild`; README, "Index
rebuilds"); the engine's indexing threshold follows `index_after_points`. The
engine's search pool is sized by `search_threads` (1 by default: with the GIL
held, more threads only hand the work around; a lone search measured about a
quarter cheaper on one thread than on the default pool, on 2 cores).

A fetch by id (the exact-hit path) is answered from a memo of the entries
last read (`entry_memo`), from which every write drops what it may have
changed, on the thread that ran it, once it is done; a search takes the
entries it finds from there too, when they are kept.

A full disk pauses storing (`disk.DiskGuard`): lookups still answer from what
is stored, and storing resumes when space returns. A shard that cannot be
opened without running out of disk is left closed (every lookup misses) and
opened by the upkeep loop once there is room. Opening compares the shard with
its manifest (`edge_shard`) and reports entries gone missing, and refuses a
shard whose vectors or payload indexes differ from what this version creates
(`store_schema`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import qdrant_edge as qe
import structlog

from service.cache import filters
from service.cache.disk import DiskGuard, apparent_bytes
from service.cache.edge_rebuild import (
    REBUILD_SUFFIX,
    RebuildFailedError,
    child_command,
    child_result,
    copy_shard,
    recover,
    sibling,
    swap,
)
from service.cache.edge_shard import (
    VECTOR_STORAGE,
    Damage,
    Manifest,
    check_model,
    check_vectors,
    edge_config,
    ensure_indexes,
    find_damage,
    open_shard,
    segments_missing,
)
from service.cache.entry_memo import EntryMemo
from service.cache.store import (
    CacheEntry,
    EntryFilter,
    ScoredEntry,
    SearchQuery,
    StoreHealth,
    Vector,
    evidence_update,
    group_observations,
    scored_entries,
)
from service.cache.verify.evidence import Observation
from service.errors import StoreDamagedError, StoreNotWritableError

__all__ = ["VECTOR_STORAGE", "EdgeVectorStore", "IndexRebuilds", "Rebuild", "edge_config"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
U = TypeVar("U")


DELETE_BYTES = 64 * 1024  # what a deletion may add on disk (log record, flags)
PAGE_OVERHEAD_BYTES = 64 * 1024  # pages an upsert may touch beyond its payload
OBSERVATION_BYTES = 256  # an observation's payload key and value, generously
OnDamage = Literal["warn", "refuse"]


def _estimate_bytes(entry: CacheEntry, dim: int) -> int:
    """About what storing `entry` may add on disk: payload and vector, each in the
    segment and again in the write-ahead log, plus the pages they touch."""
    texts = (entry.question, entry.content, entry.context, entry.tool_calls_json)
    payload = sum(len(text.encode()) for text in texts) + 16 * len(entry.context_vector)
    payload += OBSERVATION_BYTES * len(entry.evidence)
    return 2 * (payload + 4 * dim) + PAGE_OVERHEAD_BYTES


def _edge_condition(condition: filters.Condition) -> qe.FieldCondition | qe.HasIdCondition:
    if isinstance(condition, filters.HasIds):
        return qe.HasIdCondition(set(condition.point_ids))
    if isinstance(condition, filters.Equals):
        return qe.FieldCondition(key=condition.key, match=qe.MatchValue(condition.value))
    bound = qe.RangeFloat(**{condition.op: condition.value})
    return qe.FieldCondition(key=condition.key, range=bound)


def _edge_filter(conditions: Sequence[filters.Condition]) -> qe.Filter:
    """`conditions` (all must hold) as a Qdrant Edge filter."""
    return qe.Filter(must=[_edge_condition(c) for c in conditions])


def _edge_query(query: SearchQuery, params: qe.SearchParams) -> qe.QueryRequest:
    """One scoped search as a Qdrant Edge query."""
    return qe.QueryRequest(
        limit=query.limit,
        query=qe.Query.Nearest(query.vector.tolist()),
        filter=_edge_filter(filters.scope_conditions(query)),
        with_payload=True,
        params=params,
    )


def reported_damage(path: Path, damage: Damage | None, on_damage: OnDamage) -> int:
    """How many entries `damage` lost, logged; raised instead under `refuse` (the caller
    closes the shard).

    Raises:
        StoreDamagedError: there is damage, and `on_damage` is "refuse".
    """
    if damage is None:
        return 0
    where = f"the cache store {path} is damaged: {damage.detail}"
    if on_damage == "refuse":
        raise StoreDamagedError(
            f"{where} ({damage.missing_entries} entries missing); not starting"
            " (SEMCACHE_ON_STORE_DAMAGE=refuse): restore it from a backup, move it"
            " away, or set SEMCACHE_ON_STORE_DAMAGE=warn to start with what is left"
        )
    log.error(
        f"{where}; starting with the entries that are left", missing_entries=damage.missing_entries
    )
    return damage.missing_entries


class _ShardKeeper:
    """The shard, the disk it lives on and its manifest: opening (and checking) the
    shard, room for a write, and the manifest's lower bound on the entry count.

    Called at construction and then only under the store's write lock (on the write
    thread, or inline for an upsert).
    """

    def __init__(
        self,
        path: Path,
        dim: int,
        storage: str,
        min_free_bytes: int,
        on_damage: OnDamage,
        embedding_model: str | None = None,
        search_threads: int = 1,
        index_after_points: int | None = None,
    ) -> None:
        self.path, self.dim, self.storage, self.on_damage = path, dim, storage, on_damage
        self.search_threads, self.index_after_points = search_threads, index_after_points
        self.disk = DiskGuard(path, min_free_bytes)
        self.manifest = Manifest(path, dim, embedding_model)
        self.missing_entries = 0
        self.shard: qe.EdgeShard | None = None
        # Every write since the shard was copied for a rebuild, to replay on the copy.
        self.journal: list[qe.UpdateOperation] | None = None
        self._said_closed = False  # "left closed" logged since the shard was last open

    def closed(self) -> StoreNotWritableError:
        """The error for a call that needs the shard while it is closed."""
        return StoreNotWritableError(f"the cache store is closed: {self.disk.health.reason}")

    def open(self) -> None:
        """Open the shard if the disk has room for it; else leave it closed. What an
        interrupted index rebuild left beside it is put right first (`edge_rebuild`)."""
        if self.shard is not None:
            return
        for done in recover(self.path):
            log.warning("cache store: an interrupted index rebuild was cleaned up", done=done)
        if not self.disk.can_open():
            if not self._said_closed:  # once per stretch, not at every upkeep pass
                log.warning(
                    "cache store left closed: the disk is full; every lookup misses until"
                    " there is room",
                    reason=self.disk.health.reason,
                )
                self._said_closed = True
            return
        self._said_closed = False
        model = self.manifest.embedding_model
        manifest = self.manifest.read()
        check_vectors(self.path, manifest, self.dim)
        check_model(self.path, manifest, model)
        lost_segments = segments_missing(self.path)
        if lost_segments and self.on_damage == "refuse":  # before loading makes new ones
            self._report_damage(find_damage(self.path, manifest, 0, lost_segments))
        shard = self.load(self.path)
        try:
            # Damage first, so a store refused is left as it was found (found from
            # outside: payload indexes were created on it, then it was refused).
            count = shard.count(qe.CountRequest(exact=True))
            damage = find_damage(self.path, manifest, count, lost_segments)
            if damage is not None:
                self._report_damage(damage)
            ensure_indexes(shard, self.path)
        except BaseException:
            shard.close()
            raise
        self.manifest.write(count)
        self.disk.refresh()  # health first: once the shard serves, its health is current
        self.shard = shard

    def load(self, path: Path) -> qe.EdgeShard:  # as this store opens its own
        after = self.index_after_points
        return open_shard(path, self.dim, self.storage, self.search_threads, after)

    def apply(self, shard: qe.EdgeShard, operation: qe.UpdateOperation) -> None:
        """Write `operation` to `shard` (under the write lock), noting it in the journal
        while an index is rebuilt on a copy."""
        shard.update(operation)
        if self.journal is not None:
            self.journal.append(operation)

    def _report_damage(self, damage: Damage | None) -> None:
        self.missing_entries += reported_damage(self.path, damage, self.on_damage)

    def writable(self, n_bytes: int, deletion: bool = False) -> qe.EdgeShard:
        """The shard, if a write of about `n_bytes` fits on the disk (under the write lock).

        Raises:
            StoreNotWritableError: the shard is closed, or the disk is too full.
        """
        shard = self.shard
        if shard is None:
            raise self.closed()
        fits = self.disk.fits(n_bytes, 0) if deletion else self.disk.admit(n_bytes)
        if not fits:
            raise StoreNotWritableError(f"the disk under {self.path} is full")
        return shard

    def delete_matching(self, edge_filter: qe.Filter) -> int:
        """Delete what `edge_filter` matches; returns how many that was.

        Raises:
            StoreNotWritableError: the shard is closed, or the disk has no room left.
        """
        shard = self.writable(DELETE_BYTES, deletion=True)
        matched = shard.count(qe.CountRequest(exact=True, filter=edge_filter))
        if matched:
            self.lower_manifest(shard, matched)
            self.apply(shard, qe.UpdateOperation.delete_points_by_filter(edge_filter))
        return matched

    def evict_least_recent(self, tenant_filter: qe.Filter, keep: int) -> list[str]:
        """Delete the least recently hit of what `tenant_filter` matches beyond `keep`;
        returns their ids.

        Raises:
            StoreNotWritableError: the shard is closed, or the disk has no room left.
        """
        shard = self.writable(DELETE_BYTES, deletion=True)
        excess = shard.count(qe.CountRequest(exact=True, filter=tenant_filter)) - keep
        if excess <= 0:
            return []
        oldest, _ = shard.scroll(
            qe.ScrollRequest(
                limit=excess,
                filter=tenant_filter,
                with_payload=False,
                order_by=qe.OrderBy("last_hit_at", qe.Direction.Asc),
            )
        )
        self.lower_manifest(shard, len(oldest))
        ids = [p.id for p in oldest]
        self.apply(shard, qe.UpdateOperation.delete_points(ids))
        return [str(point_id) for point_id in ids]

    def add_observations(self, grouped: Mapping[str, Sequence[Observation]]) -> None:
        """Write each entry's new observation keys and delete the ones the newest
        `MAX_OBSERVATIONS` leave out (see `store.evidence_update`); ids no longer
        stored are skipped. Reads and writes on the write thread, so nothing of this
        process writes in between.

        Raises:
            StoreNotWritableError: the shard is closed, or the disk is too full.
        """
        added = sum(len(observations) for observations in grouped.values())
        shard = self.writable(2 * OBSERVATION_BYTES * added + PAGE_OVERHEAD_BYTES)
        for point_id, observations in grouped.items():
            records = shard.retrieve([point_id], with_payload=True, with_vector=False)
            if not records or records[0].payload is None:
                continue
            update = evidence_update(records[0].payload, observations)
            chosen = _edge_filter(filters.id_conditions([point_id]))  # never creates a point
            if update.set_keys:
                self.apply(shard, qe.UpdateOperation.set_payload_by_filter(chosen, update.set_keys))
            if update.delete_keys:
                keys = list(update.delete_keys)
                self.apply(shard, qe.UpdateOperation.delete_payload_by_filter(chosen, keys))

    def lower_manifest(self, shard: qe.EdgeShard, deleting: int) -> None:
        """Keep the manifest a lower bound across a deletion (under the write lock)."""
        bound = self.manifest.entries_min
        if bound is None:
            return
        left = shard.count(qe.CountRequest(exact=True)) - deleting
        if bound > left:
            self.manifest.write(max(0, left))

    def record_upkeep(self) -> None:
        """Re-measure the disk and raise the manifest's bound to the count now."""
        self.disk.refresh()
        if self.shard is None:
            return
        self._raise_bound(self.shard.count(qe.CountRequest(exact=True)))

    def _raise_bound(self, count: int) -> None:
        if self.manifest.entries_min is None or count > self.manifest.entries_min:
            self.manifest.write(count)

    def room_to_index(self) -> bool:
        """A rebuild copies the shard, and its rebuilt segments may need as much disk
        again (write thread)."""
        need = 2 * apparent_bytes(self.path)
        return self.disk.fits(need, self.disk.min_free_bytes)

    def flush_and_close(self) -> None:
        """Flush and close the shard, raising the manifest's bound to its count."""
        shard, self.shard = self.shard, None
        if shard is None:
            return
        shard.flush()
        count = shard.count(qe.CountRequest(exact=True))
        shard.close()
        self._raise_bound(count)


def _evict(keeper: _ShardKeeper, memo: EntryMemo, tenant_filter: qe.Filter, keep: int) -> int:
    """`keeper.evict_least_recent`, forgetting only the evicted entries (every kept one
    if it failed part way); returns how many were evicted (write thread)."""
    try:
        evicted = keeper.evict_least_recent(tenant_filter, keep)
    except BaseException:
        memo.clear()
        raise
    memo.forget(evicted)
    return len(evicted)


class _Threads:
    """Where the store's work runs off the event loop: writes on one thread (each then
    forgets the kept entries it may have changed), counts and info on another, index
    rebuilds on a third."""

    def __init__(self, memo: EntryMemo) -> None:
        self.memo = memo
        self.lock = threading.Lock()  # held by every write, on the thread or inline
        self.reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge-read")
        self.writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge-write")
        self.indexer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge-index")

    async def read(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.reads, fn)

    async def write(
        self,
        fn: Callable[[], T],
        changes: Collection[str] | None,
        reread: Callable[[str], CacheEntry | None] | None = None,
    ) -> T:
        """Run `fn` on the write thread; then forget the kept entries it may have
        changed: the ids in `changes`, or (None) every one, even if `fn` failed part
        way or its caller was cancelled meanwhile. If it succeeded, keep what
        `reread` reads of each id in `changes`, still under the write lock."""

        def write() -> T:
            with self.lock:
                return self._written(fn, changes, reread)

        return await asyncio.get_running_loop().run_in_executor(self.writes, write)

    def write_inline(
        self,
        fn: Callable[[], object],
        point_ids: Collection[str],
        reread: Callable[[str], CacheEntry | None],
        ready: Callable[[], bool],
    ) -> bool:
        """`write(fn, point_ids, reread)` on the event loop's thread, if no write is
        running and `ready()` says it may be done here; returns whether it was done
        (else the caller hands it to the write thread). Qdrant Edge holds the GIL
        through a write, so the thread bought only two hand-offs for a lone upsert
        (issue 13). The read-back runs next on the loop, once the caller has carried
        on (with a miss, to send its reply), not before."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if not ready():
                return False
            self._written(fn, point_ids, None)
        finally:
            self.lock.release()
        asyncio.get_running_loop().call_soon(self._keep, point_ids, reread)
        return True

    def _written(
        self,
        fn: Callable[[], T],
        changes: Collection[str] | None,
        reread: Callable[[str], CacheEntry | None] | None,
    ) -> T:
        done = False
        try:
            result = fn()
            done = True
            return result
        finally:
            if changes is None:
                self.memo.clear()
            else:
                self.memo.forget(changes)
                if done and reread is not None:
                    self._keep(changes, reread)

    def _keep(self, point_ids: Collection[str], reread: Callable[[str], CacheEntry | None]) -> None:
        """Keep each entry as the shard reads it back (not as it was written: the engine
        may read a float back one unit in the last place off). A read that raced a
        later write is not kept (`EntryMemo.read_through`)."""
        for point_id in point_ids:
            with contextlib.suppress(Exception):  # only a memo left unfilled: the write held
                self.memo.read_through(point_id, reread)

    async def holding_writes(self, on_loop: Callable[[], T], then: Callable[[T], U]) -> U:
        """Take the write lock, run `on_loop()` on the event loop's thread, wait for the
        reads already handed to the read thread, then run `then(on_loop())` on the
        indexer thread; the lock is let go once it returns.

        Run on the loop's thread, `on_loop` cannot fall in the middle of an inline read
        (those run whole within one of the loop's callbacks). Writes meanwhile wait for
        the lock on the write thread, as behind any write, which is why the lock is
        taken, and `then` run, on the indexer's.
        """
        loop = asyncio.get_running_loop()
        acquiring = loop.run_in_executor(self.indexer, self.lock.acquire)
        try:
            await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            acquiring.add_done_callback(lambda _: self.lock.release())
            raise
        try:
            value = on_loop()
            await loop.run_in_executor(self.reads, _nothing)
            running = loop.run_in_executor(self.indexer, then, value)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                await asyncio.wait([running])  # the lock is not let go while `then` runs
                raise
        finally:
            self.lock.release()

    def shutdown(self) -> None:
        for executor in (self.reads, self.writes, self.indexer):
            executor.shutdown(wait=True)


@dataclass(frozen=True)
class Rebuild:
    """An index rebuild swapped in: its points, the copy's time (writes wait), the
    child's, the whole, and the swap's (the shard detached: lookups and writes wait)."""

    points: int
    copy_seconds: float
    build_seconds: float
    seconds: float
    swap_seconds: float
    writes_replayed: int


def _nothing() -> None:
    return None


class IndexRebuilds:
    """Index rebuilds of the keeper's shard in a child process, one at a time
    (`edge_rebuild`): copy under the write lock, build in the child, swap in under the
    write lock with the journal of the writes made meanwhile replayed."""

    def __init__(self, keeper: _ShardKeeper, threads: _Threads) -> None:
        self._keeper, self._threads = keeper, threads
        self._path = keeper.path
        self._task: asyncio.Future[bool] | None = None
        self.child: asyncio.subprocess.Process | None = None
        self.last: Rebuild | None = None  # the last rebuild swapped in
        self._stopping = False
        self._in_place = asyncio.Event()  # cleared while a swap has the shard detached
        self._in_place.set()

    @property
    def running(self) -> bool:
        """A rebuild is under way."""
        return self._task is not None and not self._task.done()

    @property
    def swapping(self) -> bool:
        """A swap has the shard detached: a lookup should wait for `swapped`."""
        return not self._in_place.is_set()

    async def swapped(self) -> None:
        """Return once no swap has the shard detached (a fraction of a second: a lookup
        that waits costs less than one that misses and asks the provider)."""
        await self._in_place.wait()

    def start(self, points: int) -> None:
        """Start a rebuild of the shard, which has `points` points (for the log)."""
        self._task = asyncio.ensure_future(self._rebuild(points))

    async def wait(self) -> bool:
        """Wait for the rebuild under way, if any; whether one was swapped in."""
        task = self._task
        return False if task is None else await asyncio.shield(task)

    async def stop(self) -> None:
        """Stop the child, if any (a rebuild is not worth waiting for: the next start
        begins it again), and wait until the rebuild has let go of the store."""
        self._stopping = True
        child = self.child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        if self._task is not None:
            await asyncio.wait([self._task])

    async def _rebuild(self, points: int) -> bool:
        """Copy, build, swap; whether the rebuilt shard was swapped in. A failure is
        logged and the store goes on with the shard it had."""
        started = time.perf_counter()
        try:
            copy = await self._threads.write(self._begin, ())
        except Exception as error:
            log.error("vector index rebuild not started", path=str(self._path), error=repr(error))
            return False
        copied = round(time.perf_counter() - started, 3)
        try:
            built = await self._build(copy)
        except Exception as error:
            await self._threads.write(self._abandon, ())
            if not self._stopping:
                log.error("vector index rebuild failed", path=str(self._path), error=str(error))
            return False
        swap_started = time.perf_counter()
        replayed = await self._swap(copy)
        if replayed is None:
            return False
        now = time.perf_counter()
        self.last = Rebuild(
            points, copied, float(built.get("seconds", 0.0)), round(now - started, 3),
            round(now - swap_started, 3), replayed,
        )  # fmt: skip
        log.info(
            "vector index rebuilt in a child process and swapped in",
            path=str(self._path),
            **dataclasses.asdict(self.last),
        )
        return True

    async def _swap(self, copy: Path) -> int | None:
        """Swap the rebuilt `copy` in; how many writes were replayed (None: it failed,
        logged, and the store goes on with the shard it had)."""
        try:
            return await self._threads.holding_writes(
                self._detach, lambda old: self._swap_in(old, copy)
            )
        except Exception as error:
            log.error(
                "rebuilt vector index not swapped in; the store goes on without it",
                path=str(self._path),
                error=repr(error),
            )
            return None
        finally:
            self._in_place.set()

    def _begin(self) -> Path:
        """Flush the shard and copy it; from now on every write is noted in the journal.
        Returns the copy. On the write thread.

        Raises:
            StoreNotWritableError: the shard is closed.
            OSError: the copy failed (a full disk); nothing of it is left.
        """
        shard = self._keeper.shard
        if shard is None:
            raise self._keeper.closed()
        shard.flush()
        copy = copy_shard(self._path)
        self._keeper.journal = []
        return copy

    def _abandon(self) -> None:
        """Stop the journal and delete the copy (the rebuild failed or was stopped)."""
        self._keeper.journal = None
        shutil.rmtree(sibling(self._path, REBUILD_SUFFIX), ignore_errors=True)

    async def _build(self, copy: Path) -> dict[str, float]:
        """Run the child that indexes `copy`; what it reported.

        Raises:
            RebuildFailedError: it failed, or `stop` stopped it.
        """
        child = await asyncio.create_subprocess_exec(
            *child_command(copy),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.child = child
        if self._stopping:  # `stop` came while the copy was made: it found no child
            child.terminate()
        try:
            stdout, stderr = await child.communicate()
        finally:
            self.child = None
        if self._stopping:
            raise RebuildFailedError("stopped: the store is closing")
        return child_result(child.returncode or 0, stdout, stderr)

    def _detach(self) -> qe.EdgeShard | None:
        """Take the shard out of service until `_swap_in` puts one back: lookups wait
        (`swapped`), counts read 0. Under the write lock, on the event loop's thread."""
        self._in_place.clear()
        shard, self._keeper.shard = self._keeper.shard, None
        return shard

    def _swap_in(self, old: qe.EdgeShard | None, copy: Path) -> int:
        """Make the rebuilt `copy` the shard, with the journal replayed on it (see
        `edge_rebuild.swap`); returns how many writes were replayed. If that fails, the
        old shard is opened again and the error raised. Under the write lock, on the
        indexer thread, with `old` detached."""
        keeper = self._keeper
        journal, keeper.journal = keeper.journal or [], None
        if old is None:  # cannot be: only a rebuild detaches it, and one runs at a time
            raise StoreNotWritableError("the cache store was closed during an index rebuild")
        try:
            keeper.shard = swap(self._path, old, copy, journal, keeper.load)
        except BaseException:
            shutil.rmtree(copy, ignore_errors=True)
            keeper.shard = keeper.load(self._path)
            raise
        return len(journal)


def _read_entry(shard: qe.EdgeShard | None, point_id: str) -> CacheEntry | None:
    """The entry by id as `shard` has it now; None if absent or the shard is closed."""
    if shard is None:
        return None
    records = shard.retrieve([point_id], with_payload=True, with_vector=False)
    payload = records[0].payload if records else None  # each read rebuilds the dict
    return None if payload is None else CacheEntry.from_payload(payload)


def _tenants_of(shard: qe.EdgeShard, limit: int) -> list[str]:
    """The tenants with entries in `shard`, the `limit` with the most."""
    found = shard.facet(qe.FacetRequest("tenant", limit, exact=True))
    return [str(hit.value) for hit in found.hits]


class EdgeVectorStore:
    """A `VectorStore` on a Qdrant Edge shard in `path` (created on first use, with
    `storage`, one of `VECTOR_STORAGE`), searching on `search_threads` (0: per CPU),
    indexing once `index_after_points` points lack an index (None: the engine's 10 MB).

    `min_free_bytes` is the room kept free on the disk: below it new entries are
    not stored. `on_damage` says what opening a shard with entries missing does:
    "warn" (log an error, count them in `health().missing_entries`, go on) or
    "refuse" (raise). Opening with another `embedding_model` than last time warns.

    Raises:
        StartupError: the shard cannot be loaded, differs from what this version
            creates (`StoreSchemaError`), or (`on_damage="refuse"`) lacks entries.
    """

    def __init__(
        self,
        path: Path,
        dim: int,
        hnsw_ef: int = 64,
        storage: str = "ram",
        *,
        min_free_bytes: int = 0,
        on_damage: OnDamage = "warn",
        embedding_model: str | None = None,
        search_threads: int = 1,
        memo_entries: int = 4096,
        index_after_points: int | None = None,
    ) -> None:
        if storage not in VECTOR_STORAGE:
            edge_config(dim, storage)  # raises the ValueError that names the choices
        self._memo = EntryMemo(memo_entries)
        self._threads = _Threads(self._memo)
        self._run, self._write = self._threads.read, self._threads.write
        self._path, self._dim = path, dim
        self._keeper = _ShardKeeper(
            path, dim, storage, min_free_bytes, on_damage, embedding_model, search_threads,
            index_after_points,
        )  # fmt: skip
        self.rebuilds = IndexRebuilds(self._keeper, self._threads)  # wait(), last
        self._disk = self._keeper.disk
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef)
        try:
            self._keeper.open()
        except BaseException:
            self._threads.shutdown()
            raise

    @property
    def shard(self) -> qe.EdgeShard:
        """The open shard (for benchmarks and tests).

        Raises:
            StoreNotWritableError: the shard is closed (the disk was too full to open it).
        """
        if self._shard is None:
            raise self._keeper.closed()
        return self._shard

    @property
    def _shard(self) -> qe.EdgeShard | None:
        return self._keeper.shard

    def health(self) -> StoreHealth:
        """Whether new entries are stored now, and how many were found missing at open."""
        disk = self._disk.health
        return StoreHealth(disk.writable, disk.reason, self._keeper.missing_entries)

    async def get(self, point_id: str) -> CacheEntry | None:
        """The entry by id: the memo's (`entry_memo`), else fetched inline (microseconds,
        less than a hop to a read thread), after any swap under way."""
        entry = self._memo.get(point_id)
        if entry is None:
            await self.rebuilds.swapped()
        return entry or self._memo.read_through(point_id, self._read)

    def _read(self, point_id: str) -> CacheEntry | None:
        return _read_entry(self._shard, point_id)

    async def search_many(self, queries: Sequence[SearchQuery]) -> list[Sequence[ScoredEntry]]:
        """The queries' answers, searched inline (see the module's note on threads)."""
        await self.rebuilds.swapped()
        shard = self._shard
        if shard is None:
            return [[] for _ in queries]
        batch = qe.QueryBatchRequest([_edge_query(q, self._params) for q in queries])
        return [scored_entries(points, self._memo.get) for points in shard.query_batch(batch)]

    async def upsert(self, point_id: str, vector: Vector, entry: CacheEntry) -> None:
        """Store `entry`.

        Raises:
            StoreNotWritableError: storing is paused (disk full) or the store is closed.
        """
        point = qe.Point(point_id, vector.tolist(), entry.to_payload())
        n_bytes = _estimate_bytes(entry, self._dim)
        upsert = qe.UpdateOperation.upsert_points([point])

        def write() -> None:
            self._keeper.apply(self._keeper.writable(n_bytes), upsert)

        # Inline unless a write is running or the disk is due a measurement (a walk).
        if not self._threads.write_inline(write, (point_id,), self._read, self._disk.fresh):
            await self._write(write, (point_id,), self._read)

    async def delete(self, selector: EntryFilter) -> int:
        """Delete what `selector` matches.

        Raises:
            StoreNotWritableError: the store is closed, or the disk has no room left.
        """
        edge_filter = _edge_filter(filters.entry_conditions(selector))
        return await self._write(lambda: self._keeper.delete_matching(edge_filter), None)

    async def count(self, selector: EntryFilter) -> int:
        """Entries `selector` matches; 0 while the store is closed (disk full)."""
        shard = self._shard
        if shard is None:
            return 0
        edge_filter = _edge_filter(filters.entry_conditions(selector))
        return await self._run(lambda: shard.count(qe.CountRequest(exact=True, filter=edge_filter)))

    async def tenants(self, limit: int) -> list[str]:
        """The tenants that have entries (at most `limit`); none while the store is closed."""
        shard = self._shard
        return [] if shard is None else await self._run(lambda: _tenants_of(shard, limit))

    async def touch(self, point_ids: Sequence[str], now: float) -> None:
        """Record hit times; skipped while storing is paused (they only order eviction).

        By filter, not by id list: an id deleted since its hit matches nothing, where
        in a list it would fail the whole update.
        """
        chosen = _edge_filter(filters.id_conditions(point_ids))
        operation = qe.UpdateOperation.set_payload_by_filter(chosen, {"last_hit_at": now})

        def write() -> None:
            if self._shard is not None and self._disk.fits(DELETE_BYTES, self._disk.min_free_bytes):
                self._keeper.apply(self._shard, operation)
                self._memo.touch(point_ids, now)

        await self._write(write, ())

    async def add_observations(self, items: Sequence[tuple[str, Observation]]) -> None:
        """Add observations to entries' evidence; see `LookupStore.add_observations`.

        Raises:
            StoreNotWritableError: storing is paused (disk full) or the store is closed.
        """
        grouped = group_observations(items)
        if grouped:
            await self._write(lambda: self._keeper.add_observations(grouped), list(grouped))

    async def evict_least_recent(self, tenant: str, keep: int) -> int:
        tenant_filter = _edge_filter(filters.tenant_conditions(tenant))
        return await self._write(lambda: _evict(self._keeper, self._memo, tenant_filter, keep), ())

    async def maintain(self, min_unindexed: int) -> bool:
        """Upkeep: open a shard left closed once there is room, re-measure the disk
        (storing pauses or resumes), raise the manifest's bound, and rebuild the HNSW
        index once `min_unindexed` points lack it and the disk has room for a copy of
        the shard and its rebuilt segments.

        Returns whether a rebuild was started (`IndexRebuilds`: in a child process on a
        copy, swapped in when done; `rebuilds.wait()` waits for it).

        Raises:
            StartupError: a shard left closed cannot be opened now that there is room.
        """
        rebuilding = self.rebuilds.running
        if self._shard is None and not rebuilding:  # (a swap detaches it for a moment)
            await self._write(self._keeper.open, None)
            return False
        await self._write(self._keeper.record_upkeep, ())
        shard = self._shard
        if rebuilding or shard is None:
            return False
        info = await self._run(shard.info)
        if info.points_count - info.indexed_vectors_count < min_unindexed:
            return False
        if not await self._write(self._keeper.room_to_index, ()):
            log.warning("index rebuild postponed: not enough disk space", path=str(self._path))
            return False
        self.rebuilds.start(info.points_count)
        return True

    async def close(self) -> None:
        """Flush and close the shard, recording its count in the manifest.

        A flush that fails (a full disk) is logged: what the write-ahead log holds
        is replayed at the next start.
        """
        await self.rebuilds.stop()
        if self._shard is not None:
            try:
                await self._write(self._keeper.flush_and_close, None)
            except Exception as error:
                log.warning("cache store not flushed at close", error=repr(error))
        self._threads.shutdown()
