"""semcache's lookup vs the seed article's reference cache, at 1k, 10k and 100k entries.

    semcache bench compare [--sizes 1000 10000 100000] [--queries 200] [--warmup 20]

Both caches hold the same entries and are asked the same query vectors.
Entries: the `a` of qqp_dev's duplicate pairs (read in place, embedded once
with the chosen backend), then filler up to the size: random unit vectors
(seeded) under the texts "filler entry N" — synthetic, and stated as such.
Queries: the pairs' `b`s, so most have a real near neighbour.

semcache is measured through the full in-process `SemanticCache.lookup` path
(normalise, exact lookup by id, embedding through the batcher, scoped ANN
search on Qdrant Edge, near-miss guard at the service defaults), with the
embedder memoised so both sides use the same precomputed query vectors; the
time is the lookup's wall time. It is measured as the service leaves the
store (no `optimize()` call; fresh points sit in an appendable, unindexed
segment) and, at sizes above the HNSW full-scan threshold, again after
`optimize()` built the index. The reference is
`benchmarks.baselines.reference_cache` (a Python loop of numpy cosines,
threshold 0.75 = the service's floor); a vectorised numpy matrix product is
shown too, as what brute force costs without the loop.

Every lookup is treated alike: the same first `warmup` queries are asked
once unmeasured, then every one of the `queries` is measured, on each side.
Floors (`benchmarks.floors`), measured before each size: the embedder alone
on one text (which a real lookup adds, and which all rows here skip) and a
no-op gRPC health check through a bare in-process server.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.baselines.reference_cache import ReferenceSemanticCache, Vector
from benchmarks.data import data_file
from benchmarks.floors import (
    FloorRecorder,
    bare_health_server,
    floors_markdown,
    ratio,
)
from benchmarks.load import load_pairs
from benchmarks.quality import MemoEmbedder
from benchmarks.report import (
    Row,
    latency_summary,
    line_plot,
    machine_note,
    markdown_table,
    progress,
    write_results,
)
from service.cache.edge_store import EdgeVectorStore
from service.cache.guard import NearMissGuard
from service.cache.semantic import Answer, Lookup, SemanticCache
from service.domain import ChatMessage, CompletionRequest
from service.embedding.base import Embedder
from service.embedding.batcher import EmbeddingBatcher

SIZES = (1_000, 10_000, 100_000)
FLOOR = 0.75
WARMUP = 20


@dataclass(frozen=True)
class Corpus:
    """Entries (texts and unit vectors) and queries (texts and vectors) for one size."""

    texts: list[str]
    vectors: np.ndarray[Any, np.dtype[np.float32]]
    queries: list[str]
    query_vectors: np.ndarray[Any, np.dtype[np.float32]]
    real_entries: int


def _request(text: str) -> CompletionRequest:
    return CompletionRequest(messages=(ChatMessage("user", text),), tenant="bench", namespace="cmp")


def filler(n: int, dim: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """`n` random unit vectors."""
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def build_corpus(
    memo: MemoEmbedder, pairs: Sequence[tuple[str, str]], size: int, queries: int
) -> Corpus:
    real = list(pairs[: min(size, len(pairs))])
    texts = [a for a, _ in real]
    vectors = memo.embed(texts).astype(np.float32)
    extra = size - len(texts)
    if extra > 0:
        texts += [f"filler entry {i}" for i in range(extra)]
        vectors = np.concatenate([vectors, filler(extra, memo.dim, seed=size)])
    asked = [b for _, b in real[:queries]]
    return Corpus(texts, vectors, asked, memo.embed(asked).astype(np.float32), len(real))


def measure_reference(corpus: Corpus, warmup: int) -> tuple[list[float], list[int]]:
    """Lookup times (ms) of the reference cache, and its best index per query (-1: none)."""
    cache = ReferenceSemanticCache(threshold=FLOOR)
    for text, vector in zip(corpus.texts, corpus.vectors, strict=True):
        cache.add(text, vector, f"answer to {text}")
    for vector in corpus.query_vectors[:warmup]:
        cache.lookup(vector)
    times_ms: list[float] = []
    found: list[int] = []
    for vector in tqdm(corpus.query_vectors, desc="reference", leave=False, mininterval=0.5):
        begun = time.perf_counter()
        match = cache.lookup(vector)
        times_ms.append((time.perf_counter() - begun) * 1000)
        found.append(match.index if match is not None else -1)
    return times_ms, found


def _matmul_best(vectors: Vector, vector: Vector) -> int:
    scores = vectors @ vector
    best = int(np.argmax(scores))
    return best if scores[best] >= FLOOR else -1


def measure_matmul(corpus: Corpus, warmup: int) -> tuple[list[float], list[int]]:
    """Lookup times (ms) of a vectorised brute force (matrix-vector product, argmax), and finds."""
    for vector in corpus.query_vectors[:warmup]:
        _matmul_best(corpus.vectors, vector)
    times_ms: list[float] = []
    found: list[int] = []
    for vector in corpus.query_vectors:
        begun = time.perf_counter()
        found.append(_matmul_best(corpus.vectors, vector))
        times_ms.append((time.perf_counter() - begun) * 1000)
    return times_ms, found


async def _populate(cache: SemanticCache, corpus: Corpus, chunk: int = 1000) -> None:
    async def put(text: str, vector: Vector) -> None:
        lookup = Lookup(cache.key_for(_request(text)), vector=vector)
        await cache.store_answer(lookup, Answer(f"answer to {text}", "bench", "stop", 1, 1, 0.0))

    pairs = list(zip(corpus.texts, corpus.vectors, strict=True))
    for start in tqdm(range(0, len(pairs), chunk), desc="populate", leave=False):
        await asyncio.gather(*(put(t, v) for t, v in pairs[start : start + chunk]))


async def _lookups(cache: SemanticCache, queries: Sequence[str]) -> tuple[list[float], list[str]]:
    times_ms: list[float] = []
    answers: list[str] = []
    for query in tqdm(queries, desc="semcache", leave=False, mininterval=0.5):
        begun = time.perf_counter()
        lookup = await cache.lookup(_request(query))
        times_ms.append((time.perf_counter() - begun) * 1000)
        answers.append(lookup.hit.entry.content if lookup.hit is not None else "")
    return times_ms, answers


async def measure_semcache(
    memo: MemoEmbedder, corpus: Corpus, workdir: Path, warmup: int
) -> list[Row]:
    """Lookup times through `SemanticCache.lookup`, before and (if it matters) after optimize."""
    store = EdgeVectorStore(workdir, memo.dim)
    batcher = EmbeddingBatcher(memo)
    cache = SemanticCache(store, batcher, NearMissGuard(FLOOR, 0.79), search_limit=5)
    rows: list[Row] = []
    try:
        begun = time.perf_counter()
        await _populate(cache, corpus)
        populate_s = time.perf_counter() - begun
        await _lookups(cache, corpus.queries[:warmup])
        times_ms, answers = await _lookups(cache, corpus.queries)
        rows.append(
            _semcache_row("semcache (as served, no optimize)", times_ms, answers, populate_s)
        )
        if len(corpus.texts) >= 10_000:
            begun = time.perf_counter()
            await store._run(store.shard.optimize)  # the service itself never calls it
            optimize_s = time.perf_counter() - begun
            await _lookups(cache, corpus.queries[:warmup])
            times_ms, answers = await _lookups(cache, corpus.queries)
            rows.append(_semcache_row("semcache (after optimize)", times_ms, answers, optimize_s))
    finally:
        await cache.close()
        await batcher.close()
        await store.close()
    return rows


def _semcache_row(name: str, times_ms: list[float], answers: list[str], build_s: float) -> Row:
    return {
        "lookup": name,
        "queries": len(times_ms),
        **latency_summary(times_ms),
        "hits": sum(1 for a in answers if a),
        "build_s": round(build_s, 1),
        "_answers": answers,
    }


def _same(answers: Sequence[str], reference: Sequence[str]) -> str:
    both = [i for i, a in enumerate(reference) if a and answers[i]]
    return f"{sum(answers[i] == reference[i] for i in both)}/{len(both)}"


def _brute_rows(corpus: Corpus, warmup: int) -> tuple[list[Row], list[str]]:
    reference_ms, found = measure_reference(corpus, warmup)
    ref_answers = [f"answer to {corpus.texts[i]}" if i >= 0 else "" for i in found]
    matmul_ms, matmul_found = measure_matmul(corpus, warmup)
    matmul_answers = [f"answer to {corpus.texts[i]}" if i >= 0 else "" for i in matmul_found]
    rows: list[Row] = [
        {
            "lookup": "reference (Python loop)",
            "queries": len(reference_ms),
            **latency_summary(reference_ms),
            "hits": sum(1 for a in ref_answers if a),
            "same_hit_as_reference": _same(ref_answers, ref_answers),
        },
        {
            "lookup": "numpy matmul brute force",
            "queries": len(matmul_ms),
            **latency_summary(matmul_ms),
            "hits": sum(1 for a in matmul_answers if a),
            "same_hit_as_reference": _same(matmul_answers, ref_answers),
        },
    ]
    return rows, ref_answers


async def compare_size(
    memo: MemoEmbedder, corpus: Corpus, workdir: Path, warmup: int, floors: FloorRecorder
) -> list[Row]:
    """Every lookup on one corpus; one row each, with the speed-up over the reference."""
    async with bare_health_server() as channel:
        await floors.health_burst(channel, 1)
    await floors.embed_burst_async()
    progress(f"compare: {len(corpus.texts)} entries, {len(corpus.queries)} queries")
    rows, ref_answers = _brute_rows(corpus, warmup)
    for row in await measure_semcache(memo, corpus, workdir, warmup):
        row["same_hit_as_reference"] = _same(row.pop("_answers"), ref_answers)
        rows.append(row)
    reference_p50 = rows[0]["p50_ms"]
    for row in rows:
        row["size"] = len(corpus.texts)
        row["speedup_vs_reference_p50"] = (
            round(reference_p50 / row["p50_ms"], 1) if row["p50_ms"] else ""
        )
    return rows


COLUMNS = (
    ("size", "entries"),
    ("lookup", "lookup"),
    ("queries", "queries"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("hits", "hits"),
    ("same_hit_as_reference", "same entry as reference / both hit"),
    ("speedup_vs_reference_p50", "× faster than reference (p50)"),
    ("x_embed_p50", "p50 ÷ embedding p50"),
    ("x_health_p50", "p50 ÷ health p50"),
    ("build_s", "populate / optimize s"),
)


def add_ratios(rows: Sequence[Row], floors: dict[str, Any]) -> None:
    """Each lookup's p50 over one embedding and over a no-op gRPC round trip (in place)."""
    health = floors["health"][0]["health_p50_ms"] if floors["health"] else None
    for row in rows:
        row["x_embed_p50"] = ratio(row["p50_ms"], floors["embedder"]["embed_p50_ms"])
        row["x_health_p50"] = ratio(row["p50_ms"], health)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: what the entries are, floors, every lookup at every size."""
    note = (
        f"Entries: up to {report['real_entries']} real qqp questions, the rest random unit"
        f" vectors (synthetic filler). Embedder: {report['embedding_model']}. Every lookup:"
        f" {report['warmup']} warm-up queries, then {report['queries']} measured."
        f" {report['machine']}."
    )
    return "\n\n".join(
        [note, floors_markdown(report["floors"]), markdown_table(report["rows"], COLUMNS)]
    )


def run(
    out_dir: Path,
    embedder: Embedder,
    sizes: Sequence[int] = SIZES,
    queries: int = 200,
    warmup: int = WARMUP,
    data: Path | None = None,
) -> str:
    """Compare at each size; write compare.json / compare.md / compare.png, return the table.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    pairs = load_pairs(data_file(data))
    memo = MemoEmbedder(embedder)
    progress(f"compare: embedding {2 * len(pairs)} questions once")
    memo.warm([text for pair in pairs for text in pair])
    floors = FloorRecorder(embedder, [b for _, b in pairs])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in sizes:
            corpus = build_corpus(memo, pairs, size, queries)
            rows += asyncio.run(
                compare_size(memo, corpus, Path(workdir) / str(size), warmup, floors)
            )
    report: dict[str, Any] = {
        "machine": machine_note(),
        "embedding_model": embedder.model_id,
        "real_entries": min(len(pairs), max(sizes)),
        "queries": min(queries, len(pairs)),
        "warmup": warmup,
        "floors": floors.report(),
        "rows": rows,
    }
    add_ratios(rows, report["floors"])
    table = markdown(report)
    write_results(out_dir, "compare", report, table)
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        series.setdefault(row["lookup"], []).append((row["size"], row["p50_ms"]))
    line_plot(
        out_dir / "compare.png",
        "Lookup p50 vs entries",
        "entries",
        "ms",
        series,
        log_x=True,
        log_y=True,
    )
    return table
