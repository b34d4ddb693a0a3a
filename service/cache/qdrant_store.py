"""Qdrant server backend, through qdrant-client's async client.

Points at a Qdrant server or cluster (`SEMCACHE_QDRANT_URL`), or at
qdrant-client's in-process `:memory:` mode, which the test suite uses to run
the same tests as against the embedded backend.

Replicas share one collection: evidence goes one observation per payload key
(`store.evidence_update`), so replicas adding observations at once lose none.

An existing collection is compared with what this version creates
(`store_schema`): other vectors or a payload index of another type refuse to
start; a missing payload index is created.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable, Sequence

import structlog
from qdrant_client import AsyncQdrantClient, models

from service.cache import filters
from service.cache.store import (
    CacheEntry,
    EntryFilter,
    EvidenceUpdate,
    ScoredEntry,
    SearchQuery,
    StoreHealth,
    Vector,
    evidence_update,
    group_observations,
    scored_entries,
)
from service.cache.store_schema import (
    INDEX_TYPES,
    VectorSpec,
    index_conflicts,
    missing_indexes,
    schema_error,
    type_name,
    vector_differences,
)
from service.cache.verify.evidence import Observation
from service.urls import shown_url

log = structlog.get_logger(__name__)

_INT8_IN_RAM = models.ScalarQuantization(
    scalar=models.ScalarQuantizationConfig(
        type=models.ScalarType.INT8, quantile=0.99, always_ram=True
    )
)


def _qdrant_condition(condition: filters.Condition) -> models.Condition:
    if isinstance(condition, filters.HasIds):
        ids: list[models.ExtendedPointId] = list(condition.point_ids)
        return models.HasIdCondition(has_id=ids)
    if isinstance(condition, filters.Equals):
        return models.FieldCondition(
            key=condition.key, match=models.MatchValue(value=condition.value)
        )
    return models.FieldCondition(
        key=condition.key, range=models.Range(**{condition.op: condition.value})
    )


def _qdrant_filter(conditions: Sequence[filters.Condition]) -> models.Filter:
    """`conditions` (all must hold) as a qdrant-client filter."""
    return models.Filter(must=[_qdrant_condition(c) for c in conditions])


def _collection_vectors(info: models.CollectionInfo) -> dict[str, VectorSpec]:
    """The collection's dense vectors by name ("" = the unnamed one)."""
    vectors = info.config.params.vectors
    if vectors is None:
        return {}
    named = vectors if isinstance(vectors, dict) else {"": vectors}
    return {name: VectorSpec(p.size, type_name(p.distance)) for name, p in named.items()}


def _collection_indexes(info: models.CollectionInfo) -> dict[str, str]:
    """The collection's payload indexes: field -> type (lower case)."""
    return {name: type_name(index.data_type) for name, index in info.payload_schema.items()}


async def _create_indexes(client: AsyncQdrantClient, collection: str, names: Iterable[str]) -> None:
    """Create the payload indexes `names` (of `INDEX_TYPES`); `tenant`'s is a tenant index."""
    for name in names:
        schema: models.PayloadSchemaType | models.KeywordIndexParams
        if name == "tenant":
            schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
        elif INDEX_TYPES[name] == "keyword":
            schema = models.PayloadSchemaType.KEYWORD
        else:
            schema = models.PayloadSchemaType.FLOAT
        await client.create_payload_index(collection, name, schema)


async def _check_collection(
    client: AsyncQdrantClient, collection: str, dim: int, local: bool
) -> None:
    """Refuse an existing `collection` that differs from what this version creates;
    create the payload indexes it lacks (in-process mode has none to create).

    Raises:
        StoreSchemaError: other vectors, or a payload index of another type.
    """
    info = await client.get_collection(collection)
    indexes = _collection_indexes(info)
    differences = vector_differences(_collection_vectors(info), dim) + index_conflicts(indexes)
    if differences:
        where = f"the Qdrant collection {collection!r}"
        raise schema_error(where, "SEMCACHE_QDRANT_COLLECTION", differences)
    missing = missing_indexes(indexes)
    if missing and not local:
        log.info("payload indexes created", collection=collection, fields=missing)
        await _create_indexes(client, collection, missing)


def _normal_id(point_id: object) -> str:
    """A point id as Qdrant answers it: UUIDs in lower-case hyphenated form."""
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        return str(point_id)


def _evidence_operations(
    point_id: models.ExtendedPointId, update: EvidenceUpdate
) -> list[models.UpdateOperation]:
    """`update` as payload operations on `point_id`, by filter: a point deleted since
    it was read matches nothing, where by id the server would fail (or create)."""
    chosen = _qdrant_filter(filters.id_conditions([str(point_id)]))
    operations: list[models.UpdateOperation] = []
    if update.set_keys:
        set_payload = models.SetPayload(payload=update.set_keys, filter=chosen)
        operations.append(models.SetPayloadOperation(set_payload=set_payload))
    if update.delete_keys:
        delete = models.DeletePayload(keys=list(update.delete_keys), filter=chosen)
        operations.append(models.DeletePayloadOperation(delete_payload=delete))
    return operations


def _client(
    url: str, api_key: str | None, prefer_grpc: bool, timeout_s: float
) -> AsyncQdrantClient:
    """The client for `url` (":memory:": qdrant-client's local mode)."""
    if url == ":memory:":
        return AsyncQdrantClient(location=":memory:")
    if api_key and url.startswith("http://"):
        log.warning(
            "the Qdrant API key travels over plain http; use https:// for"
            " SEMCACHE_QDRANT_URL outside a trusted network",
            url=shown_url(url),
        )
    return AsyncQdrantClient(
        url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=int(max(1, timeout_s))
    )


class QdrantVectorStore:
    """A `VectorStore` on one collection of a Qdrant server (or `:memory:`).

    Build it with `await QdrantVectorStore.open(...)`, which creates the
    collection and its payload indexes when they are missing.
    """

    def __init__(
        self, client: AsyncQdrantClient, collection: str, hnsw_ef: int = 64, *, local: bool = False
    ) -> None:
        self._client = client
        self._local = local
        self._collection = collection
        self._params = models.SearchParams(hnsw_ef=hnsw_ef)

    @classmethod
    async def open(
        cls,
        url: str,
        collection: str,
        dim: int,
        *,
        api_key: str | None = None,
        prefer_grpc: bool = True,
        timeout_s: float = 10.0,
        hnsw_ef: int = 64,
        storage: str = "ram",
    ) -> QdrantVectorStore:
        """Connect, and create `collection` for `dim`-sized cosine vectors if absent,
        keeping them as `storage` says (see `edge_store.VECTOR_STORAGE`).

        Raises:
            StoreSchemaError: the collection exists with other vectors, or a payload
                index of another type (`store_schema`).
        """
        with warnings.catch_warnings():
            # qdrant-client warns in two lines when it cannot ask the server's version;
            # the failure to connect that follows says it in one (start-up errors are one).
            warnings.filterwarnings("ignore", "Failed to obtain server version", UserWarning)
            # Found from outside: its plain-text warning about an API key over http broke
            # the JSON log stream; said once here, in the log's own format.
            warnings.filterwarnings("ignore", "Api key is used with an insecure", UserWarning)
            client = _client(url, api_key, prefer_grpc, timeout_s)
            try:
                return await cls.attach(client, collection, dim, hnsw_ef=hnsw_ef, storage=storage)
            except BaseException:
                await client.close()
                raise

    @classmethod
    async def attach(
        cls,
        client: AsyncQdrantClient,
        collection: str,
        dim: int,
        *,
        hnsw_ef: int = 64,
        storage: str = "ram",
    ) -> QdrantVectorStore:
        """A store over a client already made (replicas in tests share one `:memory:`
        client), creating `collection` as `open` does if it is absent. Closing the
        store closes the client."""
        options = client.init_options
        local = options.get("location") == ":memory:" or options.get("path") is not None
        store = cls(client, collection, hnsw_ef, local=local)
        await store._ensure_collection(dim, storage)
        return store

    async def _ensure_collection(self, dim: int, storage: str) -> None:
        if await self._client.collection_exists(self._collection):
            await _check_collection(self._client, self._collection, dim, self._local)
            return
        on_disk = storage == "int8-disk"
        await self._client.create_collection(
            self._collection,
            vectors_config=models.VectorParams(
                size=dim, distance=models.Distance.COSINE, on_disk=on_disk
            ),
            quantization_config=_INT8_IN_RAM if on_disk else None,
        )
        if not self._local:  # in-process mode has no payload indexes (and warns about them)
            await _create_indexes(self._client, self._collection, INDEX_TYPES)

    async def get(self, point_id: str) -> CacheEntry | None:
        records = await self._client.retrieve(
            self._collection, [point_id], with_payload=True, with_vectors=False
        )
        if not records or records[0].payload is None:
            return None
        return CacheEntry.from_payload(records[0].payload)

    async def search_many(self, queries: Sequence[SearchQuery]) -> list[Sequence[ScoredEntry]]:
        responses = await self._client.query_batch_points(
            self._collection, [self._request(q) for q in queries]
        )
        return [scored_entries(response.points) for response in responses]

    def _request(self, query: SearchQuery) -> models.QueryRequest:
        return models.QueryRequest(
            query=query.vector.tolist(),
            filter=_qdrant_filter(filters.scope_conditions(query)),
            limit=query.limit,
            with_payload=True,
            params=None if self._local else self._params,
        )

    async def upsert(self, point_id: str, vector: Vector, entry: CacheEntry) -> None:
        point = models.PointStruct(id=point_id, vector=vector.tolist(), payload=entry.to_payload())
        await self._client.upsert(self._collection, [point], wait=True)

    async def delete(self, selector: EntryFilter) -> int:
        qdrant_filter = _qdrant_filter(filters.entry_conditions(selector))
        matched = (await self._client.count(self._collection, qdrant_filter, exact=True)).count
        if matched:
            await self._client.delete(
                self._collection, models.FilterSelector(filter=qdrant_filter), wait=True
            )
        return matched

    async def count(self, selector: EntryFilter) -> int:
        qdrant_filter = _qdrant_filter(filters.entry_conditions(selector))
        result = await self._client.count(self._collection, qdrant_filter, exact=True)
        return result.count

    async def tenants(self, limit: int) -> list[str]:
        """The tenants that have entries (at most `limit`)."""
        found = await self._client.facet(self._collection, key="tenant", limit=limit, exact=True)
        return [str(hit.value) for hit in found.hits]

    async def touch(self, point_ids: Sequence[str], now: float) -> None:
        # By filter, not by id list: an id deleted since its hit matches nothing,
        # where in a list it would fail the whole batch.
        selector = models.FilterSelector(filter=_qdrant_filter(filters.id_conditions(point_ids)))
        await self._client.set_payload(
            self._collection, {"last_hit_at": now}, points=selector, wait=False
        )

    async def add_observations(self, items: Sequence[tuple[str, Observation]]) -> None:
        """Add observations to entries' evidence in one read and one batch of payload
        writes; see `LookupStore.add_observations`."""
        grouped = {_normal_id(pid): obs for pid, obs in group_observations(items).items()}
        if not grouped:
            return
        records = await self._client.retrieve(
            self._collection, list(grouped), with_payload=True, with_vectors=False
        )
        operations = [
            operation
            for record in records
            if record.payload is not None
            for operation in _evidence_operations(
                record.id, evidence_update(record.payload, grouped[_normal_id(record.id)])
            )
        ]
        if operations:
            await self._client.batch_update_points(self._collection, operations, wait=True)

    async def evict_least_recent(self, tenant: str, keep: int) -> int:
        tenant_filter = _qdrant_filter(filters.tenant_conditions(tenant))
        count = await self._client.count(self._collection, tenant_filter, exact=True)
        excess = count.count - keep
        if excess <= 0:
            return 0
        oldest, _ = await self._client.scroll(
            self._collection,
            scroll_filter=tenant_filter,
            limit=excess,
            with_payload=False,
            order_by=models.OrderBy(key="last_hit_at", direction=models.Direction.ASC),
        )
        ids: list[models.ExtendedPointId] = [p.id for p in oldest]
        await self._client.delete(self._collection, models.PointIdsList(points=ids), wait=True)
        return len(ids)

    async def maintain(self, min_unindexed: int) -> bool:
        """Nothing to do: a Qdrant server builds its indexes itself."""
        return False

    def health(self) -> StoreHealth:
        """Always writable from here: the server minds its own disk. A write it
        refuses (a full disk included) fails that store only, with a warning."""
        return StoreHealth(writable=True)

    async def close(self) -> None:
        await self._client.close()
