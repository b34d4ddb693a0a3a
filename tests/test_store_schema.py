"""Reopening a store that differs from what this version creates refuses to start,
in one line that says what differs, where, and what to do (issue 11).

The stores are made with the engines' own clients (Qdrant Edge, qdrant-client),
as an older semcache or another program would have left them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient, models
from structlog.testing import capture_logs

from service.cache.edge_store import EdgeVectorStore
from service.cache.factory import build_store
from service.cache.qdrant_store import QdrantVectorStore
from service.cache.store import CacheEntry, EntryFilter
from service.errors import StartupError
from tests.conftest import make_settings

DIM = 16
INDEXED = {
    "tenant": "keyword",
    "namespace": "keyword",
    "scope": "keyword",
    "model": "keyword",
    "created_at": "float",
    "expires_at": "float",
    "last_hit_at": "float",
}


def _refused(error: BaseException, *fragments: str) -> None:
    """`error` is the one-line schema refusal and names each of `fragments`."""
    from service.cache.store_schema import StoreSchemaError

    assert isinstance(error, StoreSchemaError) and isinstance(error, StartupError)
    text = str(error)
    assert "\n" not in text
    assert "elsewhere" in text and "delete or migrate" in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def _edge_shard(
    path: Path, vectors: qe.EdgeVectorParams | dict[str, qe.EdgeVectorParams]
) -> qe.EdgeShard:
    path.mkdir(parents=True)
    sparse = {"words": qe.EdgeSparseVectorParams()}
    return qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse))


def _entry() -> CacheEntry:
    now = time.time()
    return CacheEntry("t", "ns", "s", "m", "q", "a", "stop", 1, 1, 0.0, now, now + 3600, now)


def _edge_indexes(shard: qe.EdgeShard) -> dict[str, str]:
    schema = shard.info().payload_schema
    return {name: str(info.data_type).rsplit(".", 1)[-1].lower() for name, info in schema.items()}


@pytest.mark.parametrize(
    ("vectors", "fragments"),
    [
        (qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine), ["8-dimensional", "16-dim"]),
        (qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Dot), ["dot distance, not cosine"]),
        (
            {"dense": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)},
            ["named 'dense'"],
        ),
        ({}, ["no dense vectors"]),
    ],
    ids=["size", "distance", "named", "sparse-only"],
)
def test_an_edge_shard_with_other_vectors_is_refused_untouched(
    tmp_path: Path, vectors: Any, fragments: list[str]
) -> None:
    shard_path = tmp_path / "shard"
    _edge_shard(shard_path, vectors).close()  # no manifest: made by another program
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(StartupError) as raised:
        EdgeVectorStore(shard_path, DIM)
    _refused(raised.value, str(shard_path), "SEMCACHE_DATA_DIR", *fragments)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_edge_payload_index_of_another_type_is_refused(tmp_path: Path) -> None:
    shard_path = tmp_path / "shard"
    shard = _edge_shard(shard_path, qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine))
    operation = qe.UpdateOperation.create_field_index("created_at", qe.PayloadSchemaType.Keyword)
    shard.update(operation)
    shard.close()
    with pytest.raises(StartupError) as raised:
        EdgeVectorStore(shard_path, DIM)
    _refused(raised.value, str(shard_path), "'created_at' is keyword, not float")
    qe.EdgeShard.load(str(shard_path)).close()  # the refused shard was closed (not locked)


async def test_missing_edge_payload_indexes_are_created(tmp_path: Path) -> None:
    shard_path = tmp_path / "shard"
    shard = _edge_shard(shard_path, qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine))
    shard.update(qe.UpdateOperation.create_field_index("scope", qe.PayloadSchemaType.Keyword))
    shard.close()
    with capture_logs() as logs:
        store = EdgeVectorStore(shard_path, DIM)
    try:
        assert _edge_indexes(store.shard) == INDEXED
        await store.upsert(str(uuid.uuid4()), np.ones(DIM, np.float32), _entry())
        assert await store.count(EntryFilter(tenant="t")) == 1
    finally:
        await store.close()
    created = [e for e in logs if e["log_level"] == "info" and "indexes created" in e["event"]]
    assert created and created[0]["fields"] == [f for f in INDEXED if f != "scope"]


def _manifest(shard_path: Path) -> dict[str, Any]:
    content: dict[str, Any] = json.loads(
        shard_path.with_name(shard_path.name + ".manifest.json").read_text()
    )
    return content


def _model_warnings(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["log_level"] == "warning" and "embedding model" in e["event"]]


async def test_another_embedding_model_is_a_warning_recorded_in_the_manifest(
    tmp_path: Path,
) -> None:
    shard_path = tmp_path / "shard"
    await EdgeVectorStore(shard_path, DIM, embedding_model="mini/onnx-int8").close()
    assert _manifest(shard_path)["embedding_model"] == "mini/onnx-int8"
    with capture_logs() as logs:
        store = EdgeVectorStore(shard_path, DIM, embedding_model="mini/st-fp32")
    await store.close()
    (warning,) = _model_warnings(logs)
    assert "'mini/onnx-int8'" in warning["event"] and "'mini/st-fp32'" in warning["event"]
    assert "SEMCACHE_DATA_DIR" in warning["event"]
    assert _manifest(shard_path)["embedding_model"] == "mini/st-fp32"
    with capture_logs() as logs:  # unknown this time: no warning, the record kept
        await EdgeVectorStore(shard_path, DIM).close()
    assert not _model_warnings(logs)
    assert _manifest(shard_path)["embedding_model"] == "mini/st-fp32"


async def test_a_manifest_without_a_model_is_unknown_not_an_error(tmp_path: Path) -> None:
    shard_path = tmp_path / "shard"
    await EdgeVectorStore(shard_path, DIM).close()
    old = {"format": 1, "entries_min": 0, "vector_size": DIM}  # as older versions wrote it
    shard_path.with_name("shard.manifest.json").write_text(json.dumps(old))
    with capture_logs() as logs:
        await EdgeVectorStore(shard_path, DIM, embedding_model="mini/onnx-int8").close()
    assert not _model_warnings(logs)
    assert _manifest(shard_path)["embedding_model"] == "mini/onnx-int8"


async def test_build_store_refuses_an_edge_shard_of_another_size(tmp_path: Path) -> None:
    settings = make_settings("edge", tmp_path, "http://unused", qdrant_collection="cache")
    _edge_shard(
        tmp_path / "cache", qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine)
    ).close()
    with pytest.raises(StartupError) as raised:
        await build_store(settings, DIM)
    _refused(raised.value, str(tmp_path / "cache"), "8-dimensional")


@pytest.mark.parametrize(
    ("vectors", "fragments"),
    [
        (models.VectorParams(size=8, distance=models.Distance.COSINE), ["8-dimensional"]),
        (models.VectorParams(size=DIM, distance=models.Distance.DOT), ["dot distance"]),
        (
            {"dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
            ["named 'dense'"],
        ),
        ({}, ["no dense vectors"]),
    ],
    ids=["size", "distance", "named", "sparse-only"],
)
async def test_a_qdrant_collection_with_other_vectors_is_refused(
    vectors: Any, fragments: list[str]
) -> None:
    client = AsyncQdrantClient(location=":memory:")
    sparse = {"words": models.SparseVectorParams()}
    await client.create_collection("cache", vectors_config=vectors, sparse_vectors_config=sparse)
    with pytest.raises(StartupError) as raised:
        await QdrantVectorStore.attach(client, "cache", DIM)
    _refused(raised.value, "Qdrant collection 'cache'", "SEMCACHE_QDRANT_COLLECTION", *fragments)
    await client.close()


def _reporting_indexes(
    client: AsyncQdrantClient, monkeypatch: pytest.MonkeyPatch, indexes: dict[str, Any]
) -> None:
    """Make `client` (in-process mode, which keeps no payload indexes) report
    `indexes` as a server would."""
    real = client.get_collection

    async def get_collection(name: str) -> models.CollectionInfo:
        info = await real(name)
        schema = {
            field: models.PayloadIndexInfo(data_type=kind, points=0)
            for field, kind in indexes.items()
        }
        return info.model_copy(update={"payload_schema": schema})

    monkeypatch.setattr(client, "get_collection", get_collection)


async def test_a_qdrant_payload_index_of_another_type_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = AsyncQdrantClient(location=":memory:")
    vectors = models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    await client.create_collection("cache", vectors_config=vectors)
    _reporting_indexes(client, monkeypatch, {"tenant": models.PayloadSchemaType.INTEGER})
    with pytest.raises(StartupError) as raised:
        await QdrantVectorStore.attach(client, "cache", DIM)
    _refused(raised.value, "'tenant' is integer, not keyword", "SEMCACHE_QDRANT_COLLECTION")
    await client.close()


async def test_missing_qdrant_payload_indexes_are_created(monkeypatch: pytest.MonkeyPatch) -> None:
    client = AsyncQdrantClient(location=":memory:")
    vectors = models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    await client.create_collection("cache", vectors_config=vectors)
    _reporting_indexes(client, monkeypatch, {"tenant": models.PayloadSchemaType.KEYWORD})
    created: list[tuple[str, Any]] = []

    async def create_payload_index(collection: str, name: str, schema: Any) -> None:
        created.append((name, schema))

    monkeypatch.setattr(client, "create_payload_index", create_payload_index)
    monkeypatch.setitem(client.init_options, "location", None)  # as a server's client
    with capture_logs() as logs:
        store = await QdrantVectorStore.attach(client, "cache", DIM)
    await store.close()
    assert [name for name, _ in created] == [f for f in INDEXED if f != "tenant"]
    assert dict(created)["created_at"] == models.PayloadSchemaType.FLOAT
    assert any(e["log_level"] == "info" and "indexes created" in e["event"] for e in logs)
