"""Opening a Qdrant Edge shard, and noticing when one comes back with entries missing.

Qdrant Edge loads whatever it finds: a shard whose `segments` directory was
deleted loads, replays its write-ahead log, and serves the few entries the log
still held, without a word. So the store keeps evidence beside the shard, a
small manifest (`<shard>.manifest.json`): the vector size and a lower bound on
the entries the shard holds. Opening compares the two.

The bound must stay a lower bound, or a normal crash would raise a false
alarm. Entries only ever add to it after they were written (the write-ahead
log brings back every written entry after a SIGKILL, so the count after a kill
is at least the bound), and before any deletion the bound is lowered to what
will be left (or the manifest removed if it cannot be rewritten). A store
without a manifest (new, or written by an older version) is checked only for
a missing `segments` directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import qdrant_edge as qe
import structlog

from service.cache.store import FLOAT_FIELDS, KEYWORD_FIELDS
from service.errors import StartupError

log = structlog.get_logger(__name__)

MANIFEST_FORMAT = 1

VECTOR_STORAGE: tuple[str, ...] = ("ram", "int8-disk")
"""How a new shard keeps its vectors: `ram` (float32 in memory), or `int8-disk`
(int8 scalar-quantized copies in memory, the float32 originals memory-mapped
from disk and read to rescore the best candidates: about a quarter of the
memory, for a recall@1 of about 0.98)."""


def edge_config(dim: int, storage: str = "ram") -> qe.EdgeConfig:
    """The shard configuration for `dim`-sized cosine vectors kept as `storage` says."""
    hnsw = qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000)
    if storage == "ram":
        vectors = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
        return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw)
    if storage == "int8-disk":
        quantization = qe.ScalarQuantizationConfig(
            qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned
        )
        vectors = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=qe.Memory.Cold)
        return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw, quantization_config=quantization)
    raise ValueError(f"unknown vector storage {storage!r}: use one of {', '.join(VECTOR_STORAGE)}")


def shard_exists(path: Path) -> bool:
    """Whether `path` holds a shard (complete or not)."""
    return (path / "edge_config.json").exists() or any(path.glob("segments*"))


def open_shard(path: Path, dim: int, storage: str) -> qe.EdgeShard:
    """The shard in `path`, created (with `storage`) if there is none; an existing
    shard keeps the storage it was created with.

    Raises:
        StartupError: the engine cannot load the shard (locked by another
            process, or unreadable); the message says which and what to do.
    """
    if not shard_exists(path):
        path.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(str(path), edge_config(dim, storage))
        create_indexes(shard)
        return shard
    try:
        return qe.EdgeShard.load(str(path))
    except Exception as error:
        raise _load_error(path, error) from error


def _load_error(path: Path, error: Exception) -> StartupError:
    if "WouldBlock" in str(error):
        return StartupError(
            f"the cache store {path} is in use by another process (is a second semcache"
            " serving this SEMCACHE_DATA_DIR?): stop it or point SEMCACHE_DATA_DIR elsewhere"
        )
    return StartupError(
        f"the cache store {path} cannot be opened ({error}): move it away to start with an"
        " empty cache, or restore it from a backup"
    )


def create_indexes(shard: qe.EdgeShard) -> None:
    """The payload indexes every lookup and deletion filters on."""
    shard.update(
        qe.UpdateOperation.create_field_index("tenant", qe.KeywordIndexParams(is_tenant=True))
    )
    for name in KEYWORD_FIELDS[1:]:
        shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
    for name in FLOAT_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Float))


@dataclass(frozen=True)
class Damage:
    """What opening found wrong: entries the manifest vouches for that are gone."""

    missing_entries: int
    detail: str


class Manifest:
    """The evidence file beside the shard in `shard_path`; `entries_min` is its bound."""

    def __init__(self, shard_path: Path) -> None:
        self.path = shard_path.with_name(shard_path.name + ".manifest.json")
        self.entries_min: int | None = None

    def read(self) -> dict[str, int] | None:
        """The manifest's content, or None when there is none (or it is unreadable)."""
        try:
            content = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("cache store manifest unreadable; ignored", error=repr(error))
            return None
        return content if isinstance(content, dict) else None

    def write(self, entries_min: int, dim: int) -> None:
        """Record `entries_min`; if that fails, remove the manifest (no evidence beats
        false evidence) and log a warning."""
        content = {"format": MANIFEST_FORMAT, "entries_min": entries_min, "vector_size": dim}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text(json.dumps(content), encoding="utf-8")
            os.replace(temporary, self.path)
            self.entries_min = entries_min
        except OSError as error:
            log.warning("cache store manifest not written; removed", error=repr(error))
            for stale in (temporary, self.path):
                stale.unlink(missing_ok=True)
            self.entries_min = None


def segments_missing(path: Path) -> bool:
    """Whether `path` holds a shard whose segments are gone (check before loading:
    loading makes a new, empty segments directory)."""
    segments = path / "segments"
    has_segments = segments.is_dir() and any(segments.iterdir())
    return (path / "edge_config.json").exists() and not has_segments


def find_damage(
    shard_path: Path, manifest: dict[str, int] | None, count: int, lost_segments: bool
) -> Damage | None:
    """What is wrong with the shard just opened holding `count` entries, or None."""
    expected = int(manifest.get("entries_min", 0)) if manifest else 0
    if lost_segments:
        detail = f"its segments directory {shard_path / 'segments'} was missing"
        return Damage(max(0, expected - count), detail)
    if count < expected:
        return Damage(expected - count, f"it holds {count} entries where {expected} were stored")
    return None


def check_vector_size(shard_path: Path, manifest: dict[str, int] | None, dim: int) -> None:
    """Refuse a store written for another embedding size.

    Raises:
        StartupError: the manifest records another vector size than `dim`.
    """
    recorded = manifest.get("vector_size") if manifest else None
    if recorded is not None and int(recorded) != dim:
        raise StartupError(
            f"the cache store {shard_path} holds {recorded}-dimensional vectors but the"
            f" embedding model makes {dim}-dimensional ones: point SEMCACHE_DATA_DIR elsewhere"
        )
