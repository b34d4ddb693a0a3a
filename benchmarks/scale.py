"""Scale run: lookup latency and memory of the embedded store at 10k, 100k (and 1M) entries.

    semcache bench scale [--sizes 10000 100000] [--with-1m] [--variants ram int8-disk]

Each size and store configuration is built in a child process, then opened
again in a fresh child process and queried, so the memory figures are those
of a process holding only that store (the parent samples each child's
resident memory with psutil). The configurations are the service's own
`SEMCACHE_VECTOR_STORAGE` values (`edge_store.edge_config`; HNSW m=16,
ef_construct=100):

* `ram` (the default): float32 vectors in memory.
* `int8-disk`: original vectors on disk (memory-mapped, `Memory.Cold`), int8
  scalar quantization (quantile 0.99) kept in RAM, searched with rescoring.

Entries: the `a` and `b` questions of qqp_dev (read in place, embedded once in
the parent with the chosen backend), then random unit vectors as synthetic
filler; every point carries a full `CacheEntry` payload of one tenant and
scope, and the service's payload indexes. Queries: the paraphrases of
duplicate pairs, asked through `EdgeVectorStore.search` (the service's own
scoped, TTL-filtered search, `hnsw_ef` 64). Latency is measured as the service
leaves the store (nothing calls `optimize()` on the request path) and after
`optimize()`, in a fresh process that reopens the store. recall@1 is against
an exact search, checked in a third process: the exact search reads every
original vector through the memory map, which no lookup does, and counted in
the lookups' process it made that process's peak resident memory the
benchmark's and not the store's. A child that runs past the time limit is stopped and the
stage it reached is reported; a store stopped during `optimize()` is still
reopened and queried (the "HNSW-indexed" column says how much of it was indexed).

Floors (`benchmarks.floors`), measured in the parent before each size: the
embedder alone on one text (which a real lookup adds on top of the search)
and a no-op gRPC health check through a bare in-process server.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.data import data_file
from benchmarks.floors import FloorRecorder, bare_health_server, floors_markdown, ratio
from benchmarks.load import load_pairs
from benchmarks.report import (
    ProcessSampler,
    Row,
    latency_summary,
    line_plot,
    machine_note,
    markdown_table,
    progress,
    write_results,
)
from service.cache.edge_store import VECTOR_STORAGE
from service.cache.store import SearchQuery
from service.embedding.base import Embedder

SIZES = (10_000, 100_000)
VARIANTS = VECTOR_STORAGE
BATCH = 2_000
QUERIES = 200
RECALL_QUERIES = 50
TENANT, SCOPE = "bench", "scale-scope"


@dataclass(frozen=True)
class Job:
    """One child's work: build the store at `path`, probe its lookups, or check their
    recall."""

    kind: str
    path: Path
    variant: str
    size: int
    real_vectors: Path
    query_vectors: Path


def _payload(index: int, text: str) -> dict[str, Any]:
    from service.cache.store import CacheEntry

    now = time.time()
    entry = CacheEntry(
        tenant=TENANT,
        namespace="default",
        scope=SCOPE,
        model="gpt-4o-mini",
        question=text,
        content=f"Answer number {index}: " + "a cached answer of about forty words " * 5,
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=40,
        cost_usd=0.000026,
        created_at=now,
        expires_at=now + 86_400 * 365,
        last_hit_at=now,
    )
    return entry.to_payload()


def _batches(size: int, real: np.ndarray[Any, Any]) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
    """(first index, vectors) batches: the real vectors, then seeded random unit filler."""
    for start in range(0, size, BATCH):
        count = min(BATCH, size - start)
        rng = np.random.default_rng(start)
        vectors = rng.standard_normal((count, real.shape[1])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        overlap = real[start : start + count]
        vectors[: len(overlap)] = overlap
        yield start, vectors


def _point_id(index: int) -> str:
    return str(uuid.UUID(int=index + 1))


def _insert(shard: Any, size: int, real: np.ndarray[Any, Any], report: Any) -> None:
    import qdrant_edge as qe

    for start, vectors in _batches(size, real):
        points = [
            qe.Point(_point_id(start + i), row, _payload(start + i, f"entry {start + i}"))
            for i, row in enumerate(vectors.tolist())
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
        if start % (BATCH * 25) == 0:
            report("inserting", done=start + len(points))


async def _lookups(store: Any, queries: np.ndarray[Any, Any]) -> list[float]:
    times_ms: list[float] = []
    for vector in queries:
        started = time.perf_counter()
        await store.search_many([SearchQuery(vector, TENANT, SCOPE, time.time(), 5)])
        times_ms.append((time.perf_counter() - started) * 1000)
    return times_ms


def _recall(store: Any, queries: np.ndarray[Any, Any]) -> float:
    """Share of queries whose approximate top-1 (service search params) is the exact top-1."""
    import qdrant_edge as qe

    agree = 0
    for vector in queries:
        ids = []
        for params in (qe.SearchParams(hnsw_ef=64), qe.SearchParams(exact=True)):
            request = qe.QueryRequest(
                limit=1, query=qe.Query.Nearest(vector.tolist()), params=params
            )
            ids.append([p.id for p in store.shard.query(request)])
        agree += ids[0] == ids[1]
    return agree / len(queries)


def _child(job: Job, results: Any) -> None:
    """Entry point of a child process: build or probe, reporting each stage on `results`."""
    started = time.perf_counter()

    def report(stage: str, **values: Any) -> None:
        results.put(
            {"stage": stage, "elapsed_s": round(time.perf_counter() - started, 1), **values}
        )

    try:
        if job.kind == "build":
            _build(job, report)
        elif job.kind == "probe":
            _probe(job, report)
        else:
            _recall_check(job, report)
    except Exception as error:
        report("failed", error=repr(error))
        raise


def _build(job: Job, report: Any) -> None:
    import qdrant_edge as qe

    from service.cache.edge_shard import INDEX_TYPES, create_indexes, edge_config
    from service.cache.edge_store import EdgeVectorStore

    real = np.load(job.real_vectors)
    queries = np.load(job.query_vectors)
    shard = qe.EdgeShard.create(str(job.path), edge_config(real.shape[1], job.variant))
    create_indexes(shard, INDEX_TYPES)
    began = time.perf_counter()
    _insert(shard, job.size, real, report)
    shard.flush()
    shard.close()
    report("inserted", insert_s=round(time.perf_counter() - began, 1))
    store = EdgeVectorStore(job.path, real.shape[1])
    served = asyncio.run(_lookups(store, queries[:50]))
    report("searched unoptimized", unoptimized=latency_summary(served))
    began = time.perf_counter()
    store.shard.optimize()
    report("optimized", optimize_s=round(time.perf_counter() - began, 1))
    asyncio.run(store.close())
    report("done")


def _probe(job: Job, report: Any) -> None:
    from benchmarks.report import rss_mib
    from service.cache.edge_store import EdgeVectorStore

    queries = np.load(job.query_vectors)
    baseline = rss_mib(os.getpid())
    began = time.perf_counter()
    store = EdgeVectorStore(job.path, queries.shape[1])
    opened_s = time.perf_counter() - began
    opened = rss_mib(os.getpid())
    asyncio.run(_lookups(store, queries[:20]))
    times_ms = asyncio.run(_lookups(store, queries))
    after = rss_mib(os.getpid())
    info = store.shard.info()
    report(
        "done",
        open_s=round(opened_s, 2),
        lookup=latency_summary(times_ms),
        rss_baseline_mib=round(baseline, 1),
        rss_opened_mib=round(opened, 1),
        rss_after_queries_mib=round(after, 1),
        segments=info.segments_count,
        points=info.points_count,
        indexed=info.indexed_vectors_count,
    )
    asyncio.run(store.close())


def _recall_check(job: Job, report: Any) -> None:
    """In a process of its own: the exact search reads every original vector, which the
    lookups never do, and would count in the memory measured of the lookups' process."""
    from service.cache.edge_store import EdgeVectorStore

    queries = np.load(job.query_vectors)
    store = EdgeVectorStore(job.path, queries.shape[1])
    report("done", recall_at_1=round(_recall(store, queries[:RECALL_QUERIES]), 3))
    asyncio.run(store.close())


def run_child(job: Job, time_limit_s: float) -> dict[str, Any]:
    """Run `job` in a fresh process; its last stage's values, peak RSS, and whether it finished."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(job, results))
    process.start()
    merged: dict[str, Any] = {}
    deadline = time.monotonic() + time_limit_s
    with ProcessSampler(process.pid or 0, interval_s=0.25) as sampler:
        while merged.get("stage") not in ("done", "failed") and time.monotonic() < deadline:
            try:
                merged.update(results.get(timeout=1.0))
                progress(f"scale: {job.kind} {job.variant} {job.size}: {_stage(merged)}")
            except queue.Empty:
                if not process.is_alive():
                    break
    if process.is_alive():
        process.kill()
        merged["timed_out_after_s"] = time_limit_s
    process.join()
    usage = sampler.usage().as_row()
    merged["peak_rss_mib"] = usage["rss_max_mib"]
    merged["peak_private_mib"] = usage["private_max_mib"]
    merged["finished"] = merged.get("stage") == "done"
    return merged


def _stage(values: dict[str, Any]) -> str:
    done = f", {values['done']} points" if "done" in values else ""
    return f"{values.get('stage')} after {values.get('elapsed_s')} s{done}"


def embed_vectors(embedder: Embedder, workdir: Path, data: Path) -> tuple[Path, Path]:
    """Embed qqp_dev's questions (entries) and duplicate paraphrases (queries) into .npy files."""
    rows = [json.loads(line) for line in data.open(encoding="utf-8")]
    entries = list(dict.fromkeys(t for r in rows for t in (r["a"], r["b"])))
    asked = [r["b"] for r in rows if r["same_answer"]][:QUERIES]
    # Queries are paraphrases of entries, so they must not be entries themselves.
    entries = [t for t in entries if t not in set(asked)]
    paths = workdir / "real.npy", workdir / "queries.npy"
    for path, texts in zip(paths, (entries, asked), strict=True):
        vectors = np.concatenate(
            [embedder.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        )
        np.save(path, vectors.astype(np.float32))
    return paths


async def _floor_burst(floors: FloorRecorder) -> None:
    async with bare_health_server() as channel:
        await floors.health_burst(channel, 1)
    await floors.embed_burst_async()


def measure(
    embedder: Embedder,
    sizes: Sequence[int],
    variants: Sequence[str],
    time_limit_s: float,
    workdir: Path,
    data: Path,
    floors: FloorRecorder,
) -> list[Row]:
    """Build then probe every (size, variant), floors before each size; one row each."""
    progress("scale: embedding the qqp questions")
    real, queries = embed_vectors(embedder, workdir, data)
    rows: list[Row] = []
    for size in sizes:
        asyncio.run(_floor_burst(floors))
        for variant in variants:
            path = workdir / f"{variant}-{size}"
            build = run_child(Job("build", path, variant, size, real, queries), time_limit_s)
            probe: dict[str, Any] = {}
            recall: dict[str, Any] = {}
            if "insert_s" in build:  # flushed; a build stopped during optimize() still opens
                probe = run_child(Job("probe", path, variant, size, real, queries), time_limit_s)
                recall = run_child(Job("recall", path, variant, size, real, queries), time_limit_s)
            rows.append(_row(size, variant, build, probe, recall, path))
    return rows


def _row(
    size: int,
    variant: str,
    build: dict[str, Any],
    probe: dict[str, Any],
    recall: dict[str, Any],
    path: Path,
) -> Row:
    lookup = probe.get("lookup", {})
    unoptimized = build.get("unoptimized", {})
    opened = probe.get("rss_opened_mib")
    return {
        "size": size,
        "variant": variant,
        "build_finished": build["finished"],
        "build_stage": build.get("stage", ""),
        "build_error": build.get("error", ""),
        "insert_s": build.get("insert_s", ""),
        "optimize_s": build.get("optimize_s", ""),
        "build_peak_rss_mib": build["peak_rss_mib"],
        "build_peak_private_mib": build["peak_private_mib"],
        "unoptimized_p50_ms": unoptimized.get("p50_ms", ""),
        "unoptimized_p95_ms": unoptimized.get("p95_ms", ""),
        "p50_ms": lookup.get("p50_ms", ""),
        "p95_ms": lookup.get("p95_ms", ""),
        "recall_at_1": recall.get("recall_at_1", ""),
        "recall_peak_rss_mib": recall.get("peak_rss_mib", ""),
        "open_s": probe.get("open_s", ""),
        "rss_after_queries_mib": probe.get("rss_after_queries_mib", ""),
        "store_rss_mib": round(probe["rss_after_queries_mib"] - probe["rss_baseline_mib"], 1)
        if opened is not None
        else "",
        "probe_peak_rss_mib": probe.get("peak_rss_mib", ""),
        "probe_peak_private_mib": probe.get("peak_private_mib", ""),
        "disk_mib": round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)
        if path.exists()
        else "",
        "segments": probe.get("segments", ""),
        "indexed_vectors": probe.get("indexed", ""),
    }


COLUMNS = (
    ("size", "entries"),
    ("variant", "store"),
    ("insert_s", "insert s"),
    ("optimize_s", "optimize s"),
    ("build_peak_rss_mib", "build peak RSS MiB"),
    ("build_peak_private_mib", "build peak private MiB"),
    ("unoptimized_p50_ms", "as served p50 ms"),
    ("unoptimized_p95_ms", "as served p95 ms"),
    ("p50_ms", "reopened p50 ms"),
    ("p95_ms", "reopened p95 ms"),
    ("recall_at_1", "recall@1"),
    ("store_rss_mib", "store RSS MiB"),
    ("probe_peak_rss_mib", "query process peak RSS MiB"),
    ("probe_peak_private_mib", "query process peak private MiB"),
    ("recall_peak_rss_mib", "recall check peak RSS MiB"),
    ("disk_mib", "disk MiB"),
    ("indexed_vectors", "HNSW-indexed"),
    ("build_stage", "build reached"),
    ("x_embed_p50", "reopened p50 ÷ embedding p50"),
    ("x_health_p50", "reopened p50 ÷ health p50"),
)


def targets(rows: Sequence[Row]) -> list[Row]:
    """Lookup p50 at 1M ≤ 2× that at 10k; 1M entries in < 2 GiB (per variant, if measured)."""
    out: list[Row] = []
    for variant in sorted({r["variant"] for r in rows}):
        by_size = {r["size"]: r for r in rows if r["variant"] == variant}
        big, small = by_size.get(1_000_000), by_size.get(10_000)
        if big and small and big["p50_ms"] != "" and small["p50_ms"] != "":
            ratio = round(big["p50_ms"] / small["p50_ms"], 2)
            out.append(
                {"target": f"p50 1M ≤ 2× p50 10k ({variant})", "measured": ratio, "met": ratio <= 2}
            )
        for key, kind in (("probe_peak_private_mib", "private"), ("probe_peak_rss_mib", "RSS")):
            if big and big[key] != "":
                met = big[key] < 2048
                out.append(
                    {"target": f"1M < 2 GiB {kind} ({variant})", "measured": big[key], "met": met}
                )
    return out


def add_ratios(rows: Sequence[Row], floors: dict[str, Any]) -> None:
    """Each reopened store's lookup p50 over one embedding and a no-op gRPC call (in place)."""
    health = floors["health"][0]["health_p50_ms"] if floors["health"] else None
    for row in rows:
        row["x_embed_p50"] = ratio(row["p50_ms"], floors["embedder"]["embed_p50_ms"])
        row["x_health_p50"] = ratio(row["p50_ms"], health)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: what the entries are, floors, every store, the 1M targets."""
    return "\n\n".join(
        [
            f"Entries: qqp_dev questions embedded with {report['embedding_model']}, the rest"
            f" random unit vectors (synthetic). {report['machine']}.",
            floors_markdown(report["floors"]),
            markdown_table(report["rows"], COLUMNS),
            markdown_table(
                report["targets"], (("target", "target"), ("measured", "measured"), ("met", "met"))
            )
            if report["targets"]
            else "Targets at 1M: not measured in this run (1M is behind --with-1m).",
        ]
    )


def run(
    out_dir: Path,
    embedder: Embedder,
    sizes: Sequence[int] = SIZES,
    variants: Sequence[str] = VARIANTS,
    time_limit_s: float = 600.0,
    data: Path | None = None,
) -> str:
    """Measure; write scale.json / scale.md / scale.png under `out_dir`, return the table.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    path = data_file(data)
    floors = FloorRecorder(embedder, [b for _, b in load_pairs(path, 50)])
    with tempfile.TemporaryDirectory() as workdir:
        rows = measure(embedder, sizes, variants, time_limit_s, Path(workdir), path, floors)
    report: dict[str, Any] = {
        "machine": machine_note(),
        "embedding_model": embedder.model_id,
        "time_limit_s": time_limit_s,
        "floors": floors.report(),
        "rows": rows,
        "targets": targets(rows),
    }
    add_ratios(rows, report["floors"])
    table = markdown(report)
    write_results(out_dir, "scale", report, table)
    _plot(rows, out_dir)
    return table


def _plot(rows: Sequence[Row], out_dir: Path) -> None:
    latency: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for key, label in (("p50_ms", "reopened"), ("unoptimized_p50_ms", "as served")):
            if row[key] != "":
                latency.setdefault(f"{row['variant']} {label}", []).append((row["size"], row[key]))
    line_plot(
        out_dir / "scale.png",
        "Store lookup p50 vs entries",
        "entries",
        "ms",
        latency,
        log_x=True,
        log_y=True,
    )
