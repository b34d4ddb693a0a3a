"""The embedded store indexes when `SEMCACHE_INDEX_AFTER_POINTS` says.

Left at its own default, Qdrant Edge indexes a segment only once 10 MB of
vectors lack an index (6,667 points at 384 dimensions): the setting then did
nothing below that, and each rebuild indexed everything that had piled up at
once, holding the interpreter lock (and so the whole service) longer.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe

from service.cache.edge_shard import indexing_threshold_kb, open_shard
from service.cache.edge_store import EdgeVectorStore
from service.cache.factory import build_store
from tests.conftest import make_settings
from tests.test_store import DIM, entry, unit

POINTS = 120


def _config(path: Path) -> dict[str, Any]:
    loaded = json.loads((path / "edge_config.json").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _add(shard: qe.EdgeShard, n: int) -> None:
    points = [qe.Point(str(uuid.uuid4()), unit(i).tolist(), {"tenant": "t"}) for i in range(n)]
    shard.update(qe.UpdateOperation.upsert_points(points))


@pytest.mark.parametrize("storage", ["ram", "int8-disk"])
def test_a_shard_indexes_once_index_after_points_lack_an_index(
    tmp_path: Path, storage: str
) -> None:
    followed = open_shard(tmp_path / "followed", DIM, storage, index_after_points=POINTS)
    default = open_shard(tmp_path / "default", DIM, storage)
    try:
        for shard in (followed, default):
            _add(shard, POINTS)
            shard.optimize()
        assert followed.info().indexed_vectors_count == POINTS
        assert default.info().indexed_vectors_count == 0  # 10 MB is far off
    finally:
        followed.close()
        default.close()


def test_reopening_changes_the_indexing_threshold_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    open_shard(path, DIM, "int8-disk").close()
    open_shard(path, DIM, "int8-disk").close()  # the engine rewrites its file at a load
    before = _config(path)
    assert "optimizers" not in before

    shard = open_shard(path, DIM, "ram", index_after_points=POINTS)
    _add(shard, POINTS)
    shard.optimize()
    assert shard.info().indexed_vectors_count == POINTS
    shard.close()
    after = _config(path)
    assert after.pop("optimizers")["indexing_threshold"] == indexing_threshold_kb(DIM, POINTS)
    assert after == before  # the storage it was created with stays

    open_shard(path, DIM, "ram").close()  # None: what the shard has
    assert _config(path)["optimizers"]["indexing_threshold"] == indexing_threshold_kb(DIM, POINTS)


async def test_the_service_store_follows_the_setting(tmp_path: Path) -> None:
    settings = make_settings("edge", tmp_path, "http://127.0.0.1:9/v1", index_after_points=300)
    store = await build_store(settings, DIM)
    assert isinstance(store, EdgeVectorStore)
    await store.upsert(str(uuid.uuid4()), unit(1), entry("t"))
    await store.close()
    optimizers = _config(tmp_path / settings.qdrant_collection)["optimizers"]
    assert optimizers["indexing_threshold"] == indexing_threshold_kb(DIM, 300)
    assert indexing_threshold_kb(384, 2000) == 3000  # 2,000 float32 vectors of 384
