"""What an existing store must match to be reopened, and the error when it does not.

A store outlives the process that made it: a shard under SEMCACHE_DATA_DIR, or a
collection on a Qdrant server that an older semcache (or another program) may
have created. One that differs in what lookups rely on would fail later, on
every write or query, or rank wrongly; so opening compares it with what this
version creates and refuses once, saying what differs (as RedisVL refuses to
reopen an index whose schema differs).

Refused (`StoreSchemaError`): another vector size, another distance than
cosine, named vectors (semcache uses one unnamed vector), and a payload index
of another type than the one a filter relies on. Created, with an info line: a
payload index that is missing. Not checked: how vectors are kept (memory, disk,
quantized: a store keeps what it was created with) and HNSW parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.cache.store import FLOAT_FIELDS, KEYWORD_FIELDS
from service.errors import StartupError

DISTANCE = "cosine"
INDEX_TYPES: Mapping[str, str] = {
    **{name: "keyword" for name in KEYWORD_FIELDS},
    **{name: "float" for name in FLOAT_FIELDS},
}
"""The payload index each filtered field needs (`tenant`'s is also a tenant index)."""


class StoreSchemaError(StartupError):
    """An existing store differs from what this version creates: vector size,
    distance, vector name, or the type of a payload index."""


@dataclass(frozen=True)
class VectorSpec:
    """One vector of a store as found: its size and distance (lower case)."""

    size: int
    distance: str


def vector_differences(vectors: Mapping[str, VectorSpec] | None, dim: int) -> list[str]:
    """What in `vectors` (dense vectors by name, "" = unnamed; None = unknown) differs
    from one unnamed `dim`-sized cosine vector."""
    if vectors is None:
        return []
    named = sorted(name for name in vectors if name)
    if named:
        names = ", ".join(repr(name) for name in named)
        return [f"its vectors are named {names} where semcache uses one unnamed vector"]
    spec = vectors.get("")
    if spec is None:
        return ["it holds no dense vectors"]
    found = []
    if spec.size != dim:
        found.append(
            f"it holds {spec.size}-dimensional vectors but the embedding model makes"
            f" {dim}-dimensional ones"
        )
    if spec.distance != DISTANCE:
        found.append(f"its vectors are compared by {spec.distance} distance, not {DISTANCE}")
    return found


def index_conflicts(indexes: Mapping[str, str]) -> list[str]:
    """The payload indexes in `indexes` (field -> type, lower case) of the wrong type."""
    return [
        f"its payload index on {name!r} is {indexes[name]}, not {wanted}"
        for name, wanted in INDEX_TYPES.items()
        if name in indexes and indexes[name] != wanted
    ]


def missing_indexes(indexes: Iterable[str]) -> list[str]:
    """The fields needing an index that `indexes` lacks, in `INDEX_TYPES` order."""
    present = set(indexes)
    return [name for name in INDEX_TYPES if name not in present]


def schema_error(where: str, setting: str, differences: Iterable[str]) -> StoreSchemaError:
    """The one-line refusal for the store `where` (its setting named for the way out)."""
    return StoreSchemaError(
        f"{where} was not created for this configuration: {'; '.join(differences)};"
        f" point {setting} elsewhere to start an empty cache, or delete or migrate it"
    )


def type_name(value: object) -> str:
    """An engine enum (`Distance.Cosine`, `PayloadSchemaType.Keyword`, `Distance.DOT`
    whose value is "Dot") as the lower-case name used here."""
    raw = getattr(value, "value", value)
    return str(raw).rsplit(".", 1)[-1].lower()
