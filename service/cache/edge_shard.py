"""Opening a Qdrant Edge shard, and noticing when one comes back with entries missing.

Qdrant Edge loads whatever it finds: a shard whose `segments` directory was
deleted loads, replays its write-ahead log, and serves the few entries the log
still held, without a word. So the store keeps evidence beside the shard, a
small manifest (`<shard>.manifest.json`): the vector size, the embedding model
it was last opened with (when known) and a lower bound on the entries the shard
holds. Opening compares the two.

The bound must stay a lower bound, or a normal crash would raise a false
alarm. Entries only ever add to it after they were written (the write-ahead
log brings back every written entry after a SIGKILL, so the count after a kill
is at least the bound), and before any deletion the bound is lowered to what
will be left (or the manifest removed if it cannot be rewritten). A store
without a manifest (new, or written by an older version) is checked only for
a missing `segments` directory.

Opening also compares an existing shard with what this version creates
(`store_schema`): its vectors (from the engine's `edge_config.json`, or the
manifest's size) and its payload indexes; a missing index is created. A change
of embedding model is a warning, not a refusal: cache keys carry the model id,
so entries of the old model are never served under the new one, only left to
expire (and served again if the old model comes back).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as qe
import structlog

from service.cache.store_schema import (
    INDEX_TYPES,
    VectorSpec,
    index_conflicts,
    missing_indexes,
    schema_error,
    type_name,
    vector_differences,
)
from service.errors import StartupError

log = structlog.get_logger(__name__)

MANIFEST_FORMAT = 1

VECTOR_STORAGE: tuple[str, ...] = ("ram", "int8-disk")
"""How a new shard keeps its vectors: `ram` (float32 in memory), or `int8-disk`
(int8 scalar-quantized copies in memory, the float32 originals memory-mapped
from disk and read to rescore the best candidates: about a quarter of the
memory, for a recall@1 of about 0.98)."""


def edge_config(
    dim: int, storage: str = "ram", search_threads: int = 1, index_after_points: int | None = None
) -> qe.EdgeConfig:
    """The shard configuration for `dim`-sized cosine vectors kept as `storage` says,
    searching on `search_threads` threads (0: the engine's default, one per CPU), and
    indexing once `index_after_points` points lack an index (None: the engine's default,
    10 MB of vectors: 6,667 at 384 dimensions)."""
    hnsw = qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000)
    threads = search_threads or None
    threshold_kb = indexing_threshold_kb(dim, index_after_points)
    optimizers = (
        None if threshold_kb is None else qe.EdgeOptimizersConfig(indexing_threshold=threshold_kb)
    )
    if storage == "ram":
        vectors = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
        return qe.EdgeConfig(
            vectors=vectors, hnsw_config=hnsw, optimizers=optimizers, max_search_threads=threads
        )
    if storage == "int8-disk":
        quantization = qe.ScalarQuantizationConfig(
            qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned
        )
        vectors = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine, memory=qe.Memory.Cold)
        return qe.EdgeConfig(
            vectors=vectors,
            hnsw_config=hnsw,
            quantization_config=quantization,
            optimizers=optimizers,
            max_search_threads=threads,
        )
    raise ValueError(f"unknown vector storage {storage!r}: use one of {', '.join(VECTOR_STORAGE)}")


def indexing_threshold_kb(dim: int, points: int | None) -> int | None:
    """The engine's indexing threshold (KB of float32 vectors) for `points` of `dim`
    (None: none of ours, the engine's default or the shard's own).

    The engine indexes a segment once its vectors outgrow this; left at its
    default (10 MB), it ignored the service's own setting below 6,667 points and
    then indexed everything that had piled up at once: `semcache bench indexing`
    (README, "Index rebuilds") measured pauses of up to 5.0 s every 8,000 points
    that way, against at most 2.3 s every 2,000 following
    `SEMCACHE_INDEX_AFTER_POINTS`, up to 40,000.
    """
    if points is None:
        return None
    return max(1, points * dim * 4 // 1024)  # rounded down: indexed by `points` at the latest


def shard_exists(path: Path) -> bool:
    """Whether `path` holds a shard (complete or not)."""
    return (path / "edge_config.json").exists() or any(path.glob("segments*"))


def open_shard(
    path: Path,
    dim: int,
    storage: str,
    search_threads: int = 1,
    index_after_points: int | None = None,
) -> qe.EdgeShard:
    """The shard in `path`, created (with `storage`) if there is none; an existing
    shard keeps the storage it was created with, searches on `search_threads`, and
    indexes after `index_after_points` (None: a new shard the engine's default, an
    existing one what it has).

    Raises:
        StartupError: the engine cannot load the shard (locked by another
            process, or unreadable); the message says which and what to do.
    """
    if not shard_exists(path):
        path.mkdir(parents=True, exist_ok=True)
        config = edge_config(dim, storage, search_threads, index_after_points)
        shard = qe.EdgeShard.create(str(path), config)
        create_indexes(shard, INDEX_TYPES)
        return shard
    tune(path, search_threads, indexing_threshold_kb(dim, index_after_points))
    try:
        return qe.EdgeShard.load(str(path))
    except Exception as error:
        raise _load_error(path, error) from error


def tune(path: Path, search_threads: int, indexing_threshold: int | None) -> None:
    """Record `search_threads` (0: the engine's default) and the `indexing_threshold`
    (KB; None: leave the shard's own) in the shard's `edge_config.json` before it is
    loaded, where the engine reads them.

    `EdgeShard.load(path, config)` would set them too, but it overwrites the whole
    configuration, storage included, with what it is given: a shard created with
    another storage would silently change. Only these keys are rewritten here,
    atomically; if the file cannot be read or written, the shard keeps what it has
    (with a warning): they are speed settings, not correctness ones.
    """
    config_path = path / "edge_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            return
        tuned = dict(config)
        if search_threads:
            tuned["max_search_threads"] = search_threads
        else:
            tuned.pop("max_search_threads", None)
        if indexing_threshold is not None:
            optimizers = dict(tuned.get("optimizers") or {})
            optimizers["indexing_threshold"] = indexing_threshold
            tuned["optimizers"] = optimizers
        if tuned == config:
            return
        temporary = config_path.with_name(config_path.name + ".tmp")
        temporary.write_text(json.dumps(tuned), encoding="utf-8")
        os.replace(temporary, config_path)
    except (OSError, ValueError) as error:
        log.warning(
            "cache store tuning not set; the shard keeps its own",
            path=str(path),
            error=repr(error),
        )


def _load_error(path: Path, error: Exception) -> StartupError:
    if "WouldBlock" in str(error):
        return StartupError(
            f"the cache store {path} is in use by another process (is a second semcache"
            " serving this SEMCACHE_DATA_DIR?): stop it or point SEMCACHE_DATA_DIR elsewhere"
        )
    if "Permission denied" in str(error) or "os error 13" in str(error):
        # Found from outside: a healthy store this user may not read or write was called
        # damaged, and the advice (move it away) would have thrown a good cache out.
        return StartupError(
            f"the cache store {path} cannot be opened: this user may not read or write"
            f" some of its files ({error}); give the user that runs semcache read and write"
            " access to the whole folder (chown -R / chmod -R), or set SEMCACHE_DATA_DIR to"
            " a folder it may write"
        )
    return StartupError(
        f"the cache store {path} cannot be opened ({error}): move it away to start with an"
        " empty cache, or restore it from a backup"
    )


def create_indexes(shard: qe.EdgeShard, names: Iterable[str]) -> None:
    """Create the payload indexes `names` (of `INDEX_TYPES`) that lookups and deletions
    filter on; `tenant`'s is a tenant index."""
    for name in names:
        if name == "tenant":
            schema: qe.KeywordIndexParams | qe.PayloadSchemaType = qe.KeywordIndexParams(
                is_tenant=True
            )
        elif INDEX_TYPES[name] == "keyword":
            schema = qe.PayloadSchemaType.Keyword
        else:
            schema = qe.PayloadSchemaType.Float
        shard.update(qe.UpdateOperation.create_field_index(name, schema))


def ensure_indexes(shard: qe.EdgeShard, shard_path: Path) -> None:
    """Check the payload indexes of the shard just loaded, creating missing ones.

    Raises:
        StoreSchemaError: an index has another type than the one lookups rely on.
    """
    found = {name: type_name(info.data_type) for name, info in shard.info().payload_schema.items()}
    conflicts = index_conflicts(found)
    if conflicts:
        raise schema_error(f"the cache store {shard_path}", "SEMCACHE_DATA_DIR", conflicts)
    missing = missing_indexes(found)
    if missing:
        log.info("payload indexes created on the cache store", path=str(shard_path), fields=missing)
        create_indexes(shard, missing)


@dataclass(frozen=True)
class Damage:
    """What opening found wrong: entries the manifest vouches for that are gone."""

    missing_entries: int
    detail: str


class Manifest:
    """The evidence file beside the shard in `shard_path`: `entries_min` is its bound,
    `vector_size` and `embedding_model` (None = unknown) what it records them as."""

    def __init__(self, shard_path: Path, vector_size: int, embedding_model: str | None) -> None:
        self.path = shard_path.with_name(shard_path.name + ".manifest.json")
        self.entries_min: int | None = None
        self.vector_size, self.embedding_model = vector_size, embedding_model

    def read(self) -> dict[str, Any] | None:
        """The manifest's content, or None when there is none (or it is unreadable).
        A recorded model is kept when this opening does not know its own."""
        try:
            content = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("cache store manifest unreadable; ignored", error=repr(error))
            return None
        if not isinstance(content, dict):
            return None
        if self.embedding_model is None and isinstance(content.get("embedding_model"), str):
            self.embedding_model = content["embedding_model"]
        return content

    def write(self, entries_min: int) -> None:
        """Record `entries_min`; if that fails, remove the manifest (no evidence beats
        false evidence) and log a warning."""
        content: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "entries_min": entries_min,
            "vector_size": self.vector_size,
        }
        if self.embedding_model is not None:
            content["embedding_model"] = self.embedding_model
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
    shard_path: Path, manifest: dict[str, Any] | None, count: int, lost_segments: bool
) -> Damage | None:
    """What is wrong with the shard just opened holding `count` entries, or None."""
    expected = int(manifest.get("entries_min", 0)) if manifest else 0
    if lost_segments:
        detail = f"its segments directory {shard_path / 'segments'} was missing"
        return Damage(max(0, expected - count), detail)
    if count < expected:
        return Damage(expected - count, f"it holds {count} entries where {expected} were stored")
    return None


def _shard_vectors(
    shard_path: Path, manifest: dict[str, Any] | None
) -> dict[str, VectorSpec] | None:
    """The vectors of the shard in `shard_path` as its engine configuration records
    them, else as the manifest does (its size only), else None (unknown)."""
    try:
        config = json.loads((shard_path / "edge_config.json").read_text(encoding="utf-8"))
        return {
            str(name): VectorSpec(int(params["size"]), type_name(params["distance"]))
            for name, params in config["vectors"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = manifest.get("vector_size") if manifest else None
        return None if recorded is None else {"": VectorSpec(int(recorded), "cosine")}


def check_vectors(shard_path: Path, manifest: dict[str, Any] | None, dim: int) -> None:
    """Refuse a shard whose vectors differ from what this version creates (before
    loading it: a refused shard is left untouched).

    Raises:
        StoreSchemaError: another vector size than `dim`, another distance than
            cosine, or named vectors.
    """
    differences = vector_differences(_shard_vectors(shard_path, manifest), dim)
    if differences:
        raise schema_error(f"the cache store {shard_path}", "SEMCACHE_DATA_DIR", differences)


def check_model(shard_path: Path, manifest: dict[str, Any] | None, model: str | None) -> None:
    """Warn when the shard was last opened with another embedding model than `model`
    (either unknown: nothing to compare)."""
    recorded = manifest.get("embedding_model") if manifest else None
    if recorded is None or model is None or recorded == model:
        return
    log.warning(
        f"the cache store {shard_path} was last opened with embedding model {recorded!r}:"
        f" its entries are not served under {model!r} (cache keys carry the model id) and"
        " are left to expire or be evicted; they serve again if that model comes back."
        " To start clean, point SEMCACHE_DATA_DIR elsewhere or delete the store",
        path=str(shard_path),
        recorded_model=recorded,
        model=model,
    )
