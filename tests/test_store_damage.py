"""A damaged embedded store is reported at start, and a normal crash is not damage.

Qdrant Edge loads a shard whose `segments` directory was deleted and serves
what its write-ahead log still holds (1 of 30 entries, silently); the store's
manifest makes that loud: a warning and a metric, or a refusal to start.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from semcache_simulator import UpstreamSimulator
from service._proto.semcache.v1 import semcache_pb2 as pb
from service.cache.edge_store import EdgeVectorStore
from service.cache.store import CacheEntry, EntryFilter
from service.embedding.base import Embedder
from tests.conftest import make_settings, start_service

DIM = 16
REPO = Path(__file__).resolve().parents[1]


def _entry(tenant: str = "t") -> CacheEntry:
    now = time.time()
    return CacheEntry(tenant, "ns", "s", "m", "q", "a", "stop", 1, 1, 0.0, now, now + 3600, now)


async def _fill(path: Path, count: int) -> list[str]:
    store = EdgeVectorStore(path, DIM)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rng = np.random.default_rng(0)
    for point_id in ids:
        await store.upsert(point_id, rng.standard_normal(DIM).astype(np.float32), _entry())
    await store.close()
    return ids


async def _count(store: EdgeVectorStore) -> int:
    return await store.count(EntryFilter())


async def test_deleted_segments_start_with_a_warning_and_a_count(tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    await _fill(shard, 30)
    shutil.rmtree(shard / "segments")
    with capture_logs() as logs:
        store = EdgeVectorStore(shard, DIM, on_damage="warn")
    try:
        left = await _count(store)
        assert left < 30
        assert store.health().missing_entries == 30 - left
    finally:
        await store.close()
    damaged = [e for e in logs if e["log_level"] == "error" and "damaged" in e["event"]]
    assert damaged and "segments" in damaged[0]["event"]


async def test_deleted_segments_refuse_to_start_when_asked(tmp_path: Path) -> None:
    from service.errors import StartupError, StoreDamagedError

    shard = tmp_path / "shard"
    await _fill(shard, 30)
    shutil.rmtree(shard / "segments")
    before = sorted(p.relative_to(shard) for p in shard.rglob("*"))
    with pytest.raises(StoreDamagedError, match=r"segments directory .* was missing") as raised:
        EdgeVectorStore(shard, DIM, on_damage="refuse")
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, StartupError)
    # Found from outside: the refused store had been changed first (a new segments
    # directory, payload indexes); restoring it from a backup must be a plain copy.
    assert sorted(p.relative_to(shard) for p in shard.rglob("*")) == before


async def test_a_deleted_shard_beside_its_manifest_is_damage(tmp_path: Path) -> None:
    from service.errors import StoreDamagedError

    shard = tmp_path / "shard"
    await _fill(shard, 30)
    shutil.rmtree(shard)
    with pytest.raises(StoreDamagedError, match="holds 0 entries where 30 were stored"):
        EdgeVectorStore(shard, DIM, on_damage="refuse")


async def test_deletions_keep_the_manifest_a_lower_bound(tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    ids = await _fill(shard, 30)
    store = EdgeVectorStore(shard, DIM, on_damage="refuse")
    await store.delete(EntryFilter(tenant="t"))
    await store.close()
    store = EdgeVectorStore(shard, DIM, on_damage="refuse")  # no alarm: 0 of 0
    try:
        assert await _count(store) == 0
        assert await store.get(ids[0]) is None
    finally:
        await store.close()


_KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time, uuid
    import numpy as np
    from pathlib import Path
    from service.cache.edge_store import EdgeVectorStore
    from service.cache.store import CacheEntry, EntryFilter

    async def main():
        store = EdgeVectorStore(Path(sys.argv[1]), 16)
        rng = np.random.default_rng(1)
        now = time.time()
        for i in range(40):
            tenant = "gone" if i < 10 else "kept"
            entry = CacheEntry(tenant, "ns", "s", "m", "q", "a", "stop", 1, 1, 0.0, now,
                               now + 3600, now)
            await store.upsert(str(uuid.uuid4()), rng.standard_normal(16).astype("float32"),
                               entry)
        await store.delete(EntryFilter(tenant="gone"))
        print("acknowledged", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def test_sigkill_after_writes_and_deletions_is_not_damage(tmp_path: Path) -> None:
    shard = tmp_path / "shard"
    await _fill(shard, 30)  # a manifest vouching for 30
    killed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _KILLED_WRITER, str(shard)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    assert "acknowledged" in killed.stdout
    with capture_logs() as logs:
        store = EdgeVectorStore(shard, DIM, on_damage="refuse")
    try:
        assert await _count(store) == 30 + 30  # every acknowledged write replayed
        assert store.health().missing_entries == 0
    finally:
        await store.close()
    assert not [e for e in logs if e["log_level"] in ("error", "warning")]


async def test_service_reports_missing_entries_in_stats_and_metrics(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path
) -> None:
    settings = make_settings("edge", tmp_path / "data", simulator.base_url)
    service = await start_service(embedder, simulator, settings)
    for i in range(30):
        await service.stub.Complete(pb.CompleteRequest(prompt=f"Tell me fact number {i}"))
    await service.close()
    shutil.rmtree(tmp_path / "data" / settings.qdrant_collection / "segments")

    service = await start_service(embedder, simulator, settings)
    try:
        stats = await service.stub.GetCacheStats(pb.GetCacheStatsRequest())
        assert stats.entries < 30
        assert stats.store_missing_entries == 30 - stats.entries
        gauge = service.app.metrics.registry.get_sample_value("semcache_store_missing_entries")
        assert gauge == 30 - stats.entries
    finally:
        await service.close()
