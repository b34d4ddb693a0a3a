"""How the embedded store searches (issue 13): on the caller's thread, with the
engine's search pool sized by `SEMCACHE_STORE_SEARCH_THREADS`.

Qdrant Edge holds the GIL through a whole search, so a read thread bought no
parallelism, only hand-offs; and its default pool (one thread per CPU) made each
search dearer on a small machine. Both are checked here by what the store does,
never by how long it takes.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe

from service.cache.edge_store import EdgeVectorStore
from service.cache.factory import build_store
from service.cache.store import CacheEntry, SearchQuery
from tests.conftest import make_settings
from tests.test_store import entry, unit

DIM = 16


def _entry(question: str) -> CacheEntry:
    return replace(entry("t"), question=question)


def _config(path: Path) -> dict[str, Any]:
    loaded = json.loads((path / "edge_config.json").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


class _ThreadNotingShard:
    """The real shard, noting the thread each search ran on."""

    def __init__(self, shard: qe.EdgeShard) -> None:
        self._shard = shard
        self.search_threads: list[threading.Thread] = []

    def query_batch(self, batch: qe.QueryBatchRequest) -> Any:
        self.search_threads.append(threading.current_thread())
        return self._shard.query_batch(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)


async def test_a_search_runs_on_the_callers_thread(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "shard", DIM)
    try:
        await store.upsert("00000000-0000-0000-0000-000000000001", unit(1), _entry("q"))
        noting = _ThreadNotingShard(store.shard)
        store._keeper.shard = noting  # type: ignore[assignment]
        found = await store.search_many([SearchQuery(unit(1), "t", "s", time.time(), 3)])
    finally:
        store._keeper.shard = noting._shard
        await store.close()
    assert [entry.entry.question for entry in found[0]] == ["q"]
    assert noting.search_threads == [threading.current_thread()]


async def test_a_new_shard_searches_on_the_configured_threads(tmp_path: Path) -> None:
    settings = make_settings("edge", tmp_path, "http://127.0.0.1:9/v1", store_search_threads=1)
    store = await build_store(settings, DIM)
    await store.close()
    assert _config(tmp_path / "semcache")["max_search_threads"] == 1

    settings = make_settings(
        "edge", tmp_path / "other", "http://127.0.0.1:9/v1", store_search_threads=0
    )
    store = await build_store(settings, DIM)
    await store.close()
    assert "max_search_threads" not in _config(tmp_path / "other" / "semcache")


@pytest.mark.parametrize("storage", ["ram", "int8-disk"])
async def test_reopening_changes_the_search_threads_and_nothing_else(
    tmp_path: Path, storage: str
) -> None:
    path = tmp_path / "shard"
    store = EdgeVectorStore(path, DIM, storage=storage, search_threads=0)
    await store.upsert("00000000-0000-0000-0000-000000000002", unit(2), _entry("kept"))
    await store.close()
    store = EdgeVectorStore(path, DIM, storage=storage, search_threads=0)
    await store.close()  # the engine rewrites its configuration at a load: compare after one
    before = _config(path)
    assert "max_search_threads" not in before

    store = EdgeVectorStore(path, DIM, storage="ram", search_threads=2)
    try:
        found = await store.search_many([SearchQuery(unit(2), "t", "s", time.time(), 3)])
    finally:
        await store.close()
    after = _config(path)
    assert after.pop("max_search_threads") == 2
    assert after == before  # the storage it was created with stays
    assert [entry.entry.question for entry in found[0]] == ["kept"]
