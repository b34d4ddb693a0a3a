"""semcache's lookup vs the seed article's reference cache, at 1k, 10k and 100k entries.

    semcache bench compare [--sizes 1000 10000 100000] [--queries 200]

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
from benchmarks.load import DEFAULT_DATA, load_pairs
from benchmarks.quality import MemoEmbedder
from benchmarks.report import (
    Row,
    latency_summary,
    line_plot,
    machine_note,
    markdown_table,
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
REFERENCE_BUDGET_S = 20.0  # reference lookups per size stop after this much time (at least 5)


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


def measure_reference(corpus: Corpus) -> tuple[list[float], list[int]]:
    """Lookup times (ms) of the reference cache, and its best index per query (-1: none)."""
    cache = ReferenceSemanticCache(threshold=FLOOR)
    for text, vector in zip(corpus.texts, corpus.vectors, strict=True):
        cache.add(text, vector, f"answer to {text}")
    times_ms: list[float] = []
    found: list[int] = []
    started = time.perf_counter()
    for vector in tqdm(corpus.query_vectors, desc="reference", leave=False, mininterval=0.5):
        if len(times_ms) >= 5 and time.perf_counter() - started > REFERENCE_BUDGET_S:
            break
        begun = time.perf_counter()
        match = cache.lookup(vector)
        times_ms.append((time.perf_counter() - begun) * 1000)
        found.append(match.index if match is not None else -1)
    return times_ms, found


def measure_matmul(corpus: Corpus) -> list[float]:
    """Lookup times (ms) of a vectorised brute force: one matrix-vector product and argmax."""
    times_ms: list[float] = []
    for vector in corpus.query_vectors:
        begun = time.perf_counter()
        scores = corpus.vectors @ vector
        int(np.argmax(scores))
        times_ms.append((time.perf_counter() - begun) * 1000)
    return times_ms


async def _populate(cache: SemanticCache, corpus: Corpus, chunk: int = 1000) -> None:
    async def put(text: str, vector: Vector) -> None:
        lookup = Lookup(cache.key_for(_request(text)), vector=vector)
        await cache.store_answer(lookup, Answer(f"answer to {text}", "bench", "stop", 1, 1, 0.0))

    pairs = list(zip(corpus.texts, corpus.vectors, strict=True))
    for start in tqdm(range(0, len(pairs), chunk), desc="populate", leave=False):
        await asyncio.gather(*(put(t, v) for t, v in pairs[start : start + chunk]))


async def _lookups(cache: SemanticCache, corpus: Corpus) -> tuple[list[float], list[str]]:
    times_ms: list[float] = []
    answers: list[str] = []
    for query in tqdm(corpus.queries, desc="semcache", leave=False, mininterval=0.5):
        begun = time.perf_counter()
        lookup = await cache.lookup(_request(query))
        times_ms.append((time.perf_counter() - begun) * 1000)
        answers.append(lookup.hit.entry.content if lookup.hit is not None else "")
    return times_ms, answers


async def measure_semcache(memo: MemoEmbedder, corpus: Corpus, workdir: Path) -> list[Row]:
    """Lookup times through `SemanticCache.lookup`, before and (if it matters) after optimize."""
    store = EdgeVectorStore(workdir, memo.dim)
    batcher = EmbeddingBatcher(memo)
    cache = SemanticCache(store, batcher, NearMissGuard(FLOOR, 0.79), search_limit=5)
    rows: list[Row] = []
    try:
        begun = time.perf_counter()
        await _populate(cache, corpus)
        populate_s = time.perf_counter() - begun
        await _lookups(cache, corpus)  # warm-up pass (page cache, branch predictors)
        times_ms, answers = await _lookups(cache, corpus)
        rows.append(
            _semcache_row("semcache (as served, no optimize)", times_ms, answers, populate_s)
        )
        if len(corpus.texts) >= 10_000:
            begun = time.perf_counter()
            await store._run(store.shard.optimize)  # the service itself never calls it
            optimize_s = time.perf_counter() - begun
            times_ms, answers = await _lookups(cache, corpus)
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


async def compare_size(memo: MemoEmbedder, corpus: Corpus, workdir: Path) -> list[Row]:
    """Every lookup on one corpus; one row each, with the speed-up over the reference."""
    reference_ms, found = measure_reference(corpus)
    ref_answers = [f"answer to {corpus.texts[i]}" if i >= 0 else "" for i in found]
    rows: list[Row] = [
        {
            "lookup": "reference (Python loop)",
            "queries": len(reference_ms),
            **latency_summary(reference_ms),
            "hits": sum(1 for i in found if i >= 0),
        },
        {
            "lookup": "numpy matmul brute force",
            "queries": len(corpus.queries),
            **latency_summary(measure_matmul(corpus)),
        },
    ]
    for row in await measure_semcache(memo, corpus, workdir):
        answers = row.pop("_answers")
        both = [i for i, a in enumerate(ref_answers) if a and answers[i]]
        same = sum(answers[i] == ref_answers[i] for i in both)
        row["same_hit_as_reference"] = f"{same}/{len(both)}"
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
    ("build_s", "populate / optimize s"),
)


def run(out_dir: Path, embedder: Embedder, sizes: Sequence[int] = SIZES, queries: int = 200) -> str:
    """Compare at each size; write compare.json / compare.md / compare.png, return the table."""
    pairs = load_pairs(DEFAULT_DATA)
    memo = MemoEmbedder(embedder)
    memo.warm([text for pair in pairs for text in pair])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in sizes:
            corpus = build_corpus(memo, pairs, size, queries)
            rows += asyncio.run(compare_size(memo, corpus, Path(workdir) / str(size)))
    report: dict[str, Any] = {
        "machine": machine_note(),
        "embedding_model": embedder.model_id,
        "real_entries": min(len(pairs), max(sizes)),
        "rows": rows,
    }
    note = (
        f"Entries: up to {len(pairs)} real qqp questions, the rest random unit vectors"
        f" (synthetic filler). Embedder: {embedder.model_id}. {report['machine']}."
    )
    table = note + "\n\n" + markdown_table(rows, COLUMNS)
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
