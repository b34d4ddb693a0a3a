"""The embedded store's memo of parsed entries (issue 13's exact path).

An exact hit reads its entry from the memo, not the shard; and no write, whatever
its kind, and even one whose caller gave up, leaves a stale entry to be read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe

from service.cache.edge_store import EdgeVectorStore
from service.cache.entry_memo import EntryMemo
from service.cache.semantic import EvictionSchedule
from service.cache.store import CacheEntry, EntryFilter
from service.cache.verify.evidence import Observation
from service.errors import StoreNotWritableError
from tests.test_store import entry, search, unit

DIM = 16
ID = "00000000-0000-0000-0000-000000000001"
OTHER = "00000000-0000-0000-0000-000000000002"


class _CountingShard:
    """The real shard, counting fetches by id and the payloads read from its searches."""

    def __init__(self, shard: qe.EdgeShard) -> None:
        self._shard = shard
        self.retrieved = 0  # on the thread that made it (the event loop's)
        self.on_other_threads = 0
        self.payloads_read = 0

    def retrieve(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is self._thread:
            self.retrieved += 1
        else:
            self.on_other_threads += 1
        return self._shard.retrieve(*args, **kwargs)

    def query_batch(self, batch: qe.QueryBatchRequest) -> Any:
        return [[_CountedPoint(p, self) for p in found] for found in self._shard.query_batch(batch)]

    _thread = threading.current_thread()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)


class _CountedPoint:
    """A search's point, counting reads of its payload on `shard`."""

    def __init__(self, point: qe.ScoredPoint, shard: _CountingShard) -> None:
        self.id, self.score, self._point, self._shard = point.id, point.score, point, shard

    @property
    def payload(self) -> Any:
        self._shard.payloads_read += 1
        return self._point.payload


def _answer(content: str, tenant: str = "t") -> CacheEntry:
    return replace(entry(tenant), content=content)


async def _write_thread_done(store: EdgeVectorStore) -> None:
    await asyncio.get_running_loop().run_in_executor(store._threads.writes, lambda: None)


async def _content(store: EdgeVectorStore, point_id: str = ID) -> str | None:
    got = await store.get(point_id)
    return None if got is None else got.content


async def test_a_repeated_fetch_by_id_reads_the_shard_once(tmp_path: Path) -> None:
    written = EdgeVectorStore(tmp_path / "shard", DIM)
    await written.upsert(ID, unit(1), _answer("a"))
    await written.close()
    store = EdgeVectorStore(tmp_path / "shard", DIM)  # reopened: nothing kept yet
    try:
        counting = _CountingShard(store.shard)
        store._keeper.shard = counting  # type: ignore[assignment]
        first, second = await store.get(ID), await store.get(ID)
    finally:
        store._keeper.shard = counting._shard
        await store.close()
    assert first is not None and second is not None
    assert first.content == second.content == "a"
    assert counting.retrieved == 1


async def test_an_entry_just_stored_is_served_without_reading_the_shard(tmp_path: Path) -> None:
    """An upsert keeps what it wrote, exactly as a read of the shard gives it, read
    back on the event loop once the upsert's caller has carried on (a hand-off to
    the write thread cost more, and a read before returning delayed a miss's reply)."""
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        counting = _CountingShard(store.shard)
        store._keeper.shard = counting  # type: ignore[assignment]
        stored = replace(_answer("a"), context="earlier turn", context_vector=(0.25, 0.5))
        await store.upsert(ID, unit(1), stored)
        assert counting.retrieved == 0  # read back after the caller carried on
        await asyncio.sleep(0)
        assert counting.retrieved == 1  # next on the event loop
        await _write_thread_done(store)
        kept = await store.get(ID)
        assert counting.retrieved == 1
        assert counting.on_other_threads == 0  # no hand-off to the write thread
        (record,) = store.shard.retrieve([ID], with_payload=True, with_vector=False)
    finally:
        store._keeper.shard = counting._shard
        await store.close()
    assert record.payload is not None
    assert kept == CacheEntry.from_payload(record.payload)
    assert kept is not None and (kept.context, kept.context_vector) == ("earlier turn", (0.25, 0.5))


async def test_a_failed_upsert_keeps_nothing(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        await store.upsert(ID, unit(1), _answer("old"))

        def refuse(n_bytes: int, deletion: bool = False) -> qe.EdgeShard:
            raise StoreNotWritableError("full")

        store._keeper.writable = refuse  # type: ignore[method-assign]
        with pytest.raises(StoreNotWritableError):
            await store.upsert(ID, unit(1), _answer("new"))
        assert await _content(store) == "old"
    finally:
        del store._keeper.writable
        await store.close()


async def test_hit_times_keep_hot_entries_kept(tmp_path: Path) -> None:
    """Hit times are written for every entry hit in the last half second: the kept
    entries take the new time rather than being dropped and read again."""
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        await store.upsert(ID, unit(1), _answer("a"))
        await _write_thread_done(store)
        counting = _CountingShard(store.shard)
        store._keeper.shard = counting  # type: ignore[assignment]
        before = await store.get(ID)
        assert before is not None
        await store.touch([ID, OTHER], before.last_hit_at + 5.0)
        after = await store.get(ID)
        assert counting.retrieved == 0
        (record,) = store.shard.retrieve([ID], with_payload=True, with_vector=False)
    finally:
        store._keeper.shard = counting._shard
        await store.close()
    assert after is not None and record.payload is not None
    assert after.last_hit_at == before.last_hit_at + 5.0
    assert after.last_hit_at == pytest.approx(record.payload["last_hit_at"], abs=1e-6)
    assert replace(after, last_hit_at=0.0) == replace(before, last_hit_at=0.0)


async def test_memo_off_reads_the_shard_every_time(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard", DIM, memo_entries=0)
    try:
        await store.upsert(ID, unit(1), _answer("a"))
        counting = _CountingShard(store.shard)
        store._keeper.shard = counting  # type: ignore[assignment]
        await store.get(ID)
        await store.get(ID)
    finally:
        store._keeper.shard = counting._shard
        await store.close()
    assert counting.retrieved == 2


async def test_every_kind_of_write_is_seen_by_the_next_fetch(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        await store.upsert(ID, unit(1), _answer("old"))
        assert await _content(store) == "old"
        await store.upsert(ID, unit(1), _answer("new"))
        assert await _content(store) == "new"
        got = await store.get(ID)
        assert got is not None

        observation = Observation(
            at_s=got.created_at, obs_id="o1", score=1.0, same=False, feedback=True
        )
        await store.add_observations([(ID, observation)])
        got = await store.get(ID)
        assert got is not None
        assert got.evidence.observations == frozenset({observation})

        await store.touch([ID], got.last_hit_at + 60.0)
        touched = await store.get(ID)
        assert touched is not None
        assert touched.last_hit_at == got.last_hit_at + 60.0

        await store.delete(EntryFilter(tenant="t"))
        assert await store.get(ID) is None
    finally:
        await store.close()


async def test_an_eviction_is_seen_by_the_next_fetch(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        await store.upsert(ID, unit(1), _answer("evicted"))
        await store.upsert(OTHER, unit(2), _answer("kept"))
        await store.touch([OTHER], entry("t").last_hit_at + 60.0)
        assert await store.get(ID) is not None
        assert await store.get(OTHER) is not None
        counting = _CountingShard(store.shard)
        store._keeper.shard = counting  # type: ignore[assignment]
        assert await store.evict_least_recent("t", keep=1) == 1
        assert await store.get(ID) is None
        assert await _content(store, OTHER) == "kept"  # still kept: only ID was read
        assert counting.retrieved == 1
    finally:
        store._keeper.shard = counting._shard
        await store.close()


async def test_a_write_whose_caller_gave_up_still_drops_the_old_entry(tmp_path: Path) -> None:
    """A write goes on on its thread after its caller is cancelled; what the memo
    held must go when the write lands, not when (or if) the caller resumes."""
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    entered, release = threading.Event(), threading.Event()
    writable = store._keeper.writable

    def slow_writable(n_bytes: int, deletion: bool = False) -> qe.EdgeShard:
        entered.set()
        release.wait(10)
        return writable(n_bytes, deletion)

    try:
        await store.upsert(ID, unit(1), _answer("old"))
        assert await _content(store) == "old"  # now kept
        store._keeper.writable = slow_writable  # type: ignore[method-assign]
        store._disk.fresh = lambda: False  # type: ignore[method-assign]  # the write thread's
        write = asyncio.ensure_future(store.upsert(ID, unit(1), _answer("new")))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        write.cancel()  # the write thread is inside it: it will land
        await asyncio.gather(write, return_exceptions=True)
        release.set()
        store._keeper.writable = writable  # type: ignore[method-assign]
        await store.upsert(OTHER, unit(2), _answer("x"))  # the write thread is past it
        assert await _content(store) == "new"
    finally:
        release.set()
        await store.close()


def test_a_read_that_raced_a_write_is_not_kept() -> None:
    memo = EntryMemo(8)
    generation = memo.generation  # taken before the store read
    memo.forget([ID])  # a write to the entry finished meanwhile
    memo.keep(ID, _answer("read before the write"), generation)
    assert memo.get(ID) is None
    memo.keep(ID, _answer("read after"), memo.generation)
    assert (kept := memo.get(ID)) is not None and kept.content == "read after"


def test_a_write_to_another_entry_also_stops_a_racing_read_being_kept() -> None:
    """The generation is one counter: a write by filter names no ids, and a read
    cannot know which ids such a write changed."""
    memo = EntryMemo(8)
    generation = memo.generation
    memo.clear()
    memo.keep(ID, _answer("a"), generation)
    assert len(memo) == 0


def test_the_memo_keeps_at_most_its_size_dropping_the_oldest() -> None:
    memo = EntryMemo(2)
    for index in range(3):
        memo.keep(str(index), _answer(str(index)), memo.generation)
    assert len(memo) == 2
    assert memo.get("0") is None
    assert memo.get("2") is not None
    off = EntryMemo(0)
    off.keep(ID, _answer("a"), off.generation)
    assert off.get(ID) is None


def test_a_tenant_is_counted_for_eviction_every_hundredth_of_its_limit() -> None:
    """Each count walks the tenant's entries: not one per stored answer."""
    schedule = EvictionSchedule(1000)
    due = [schedule.due("t") for _ in range(30)]
    assert [index for index, now in enumerate(due, 1) if now] == [10, 20, 30]
    assert schedule.due("other") is False  # each tenant has its own count
    small = EvictionSchedule(50)
    assert all(small.due("t") for _ in range(5))
    assert not any(EvictionSchedule(0).due("t") for _ in range(200))


class _WriterNoting:
    """The store's `writable`, noting the thread each write ran on."""

    def __init__(self, store: EdgeVectorStore) -> None:
        self._writable = store._keeper.writable
        self.threads: list[threading.Thread] = []

    def __call__(self, n_bytes: int, deletion: bool = False) -> qe.EdgeShard:
        self.threads.append(threading.current_thread())
        return self._writable(n_bytes, deletion)


async def test_a_lone_upsert_runs_on_the_callers_thread(tmp_path: Path) -> None:
    """Qdrant Edge holds the GIL through a write: the write thread only added two
    hand-offs to a miss's store."""
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    noting = _WriterNoting(store)
    store._keeper.writable = noting  # type: ignore[method-assign]
    try:
        await store.upsert(ID, unit(1), _answer("a"))
        assert await _content(store) == "a"
    finally:
        del store._keeper.writable
        await store.close()
    assert noting.threads == [threading.current_thread()]


async def test_an_upsert_waits_its_turn_behind_a_running_write_or_a_due_measurement(
    tmp_path: Path,
) -> None:
    """Writes stay one at a time (the disk accounting is not thread-safe), and the
    walk of the store's files that a measurement makes never runs on the caller's thread."""
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    noting = _WriterNoting(store)
    store._keeper.writable = noting  # type: ignore[method-assign]
    try:
        with store._threads.lock:  # as a write on the write thread holds it
            queued = asyncio.ensure_future(store.upsert(ID, unit(1), _answer("a")))
            await asyncio.sleep(0.05)
            assert not queued.done() and noting.threads == []
        await queued
        store._disk.fresh = lambda: False  # type: ignore[method-assign]
        await store.upsert(OTHER, unit(2), _answer("b"))
    finally:
        del store._keeper.writable
        await store.close()
    assert len(noting.threads) == 2
    assert threading.current_thread() not in noting.threads


async def test_a_search_takes_kept_entries_without_reading_their_payloads(
    tmp_path: Path,
) -> None:
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        await store.upsert(ID, unit(1), replace(_answer("a"), context="c", context_vector=(0.5,)))
        await store.upsert(OTHER, unit(2), _answer("b"))
        await asyncio.sleep(0)  # the read-backs of the upserts, next on the loop
        counting = _CountingShard(store.shard)
        store._keeper.shard = counting  # type: ignore[assignment]
        found = await search(store, unit(1), "t", "s", time.time(), 5)
        store._keeper.shard = counting._shard
        records = store.shard.retrieve([ID, OTHER], with_payload=True, with_vector=False)
    finally:
        store._keeper.shard = counting._shard
        await store.close()
    assert counting.payloads_read == 0
    read = {str(r.id): CacheEntry.from_payload(r.payload or {}) for r in records}
    assert {f.point_id: f.entry for f in found} == read
    assert found[0].point_id == ID and found[0].similarity == pytest.approx(1.0, abs=1e-5)


async def test_a_search_builds_entries_it_does_not_keep_and_keeps_none(tmp_path: Path) -> None:
    """Entries found by search are not kept: searches would push the exact hits'
    entries out of the memo."""
    written = EdgeVectorStore(tmp_path / "shard", DIM)
    await written.upsert(ID, unit(1), _answer("a"))
    await written.close()
    store = EdgeVectorStore(tmp_path / "shard", DIM)  # reopened: nothing kept yet
    try:
        found = await search(store, unit(1), "t", "s", time.time(), 5)
        assert [f.entry.content for f in found] == ["a"]
        assert len(store._memo) == 0
    finally:
        await store.close()


async def test_every_kind_of_write_is_seen_by_the_next_search(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard", DIM)

    async def found() -> list[CacheEntry]:
        return [f.entry for f in await search(store, unit(1), "t", "s", time.time(), 5)]

    try:
        await store.upsert(ID, unit(1), _answer("old"))
        assert [e.content for e in await found()] == ["old"]
        await store.upsert(ID, unit(1), _answer("new"))
        (got,) = await found()
        assert got.content == "new"
        observation = Observation(
            at_s=got.created_at, obs_id="o1", score=1.0, same=False, feedback=True
        )
        await store.add_observations([(ID, observation)])
        (got,) = await found()
        assert got.evidence.observations == frozenset({observation})
        await store.touch([ID], got.last_hit_at + 60.0)
        (touched,) = await found()
        assert touched.last_hit_at == got.last_hit_at + 60.0
        await store.delete(EntryFilter(tenant="t"))
        assert await found() == []
    finally:
        await store.close()
