"""The gateway's overhead on a miss: the simulator called directly vs through semcache.

    semcache bench overhead [--requests 300]

The simulator answers with zero latency. For each of `requests` distinct
questions (qqp questions, read in place, each made unique by a numbered
prefix) three calls are made in turn, the order turning from one question to
the next (so no call always follows another), after the same three warm-up
questions on every side, so load from other processes falls on all of them
alike: straight to the simulator with a thin HTTP client (aiohttp,
JSON read as bytes, a stream read line by line: like the generated gRPC stub,
no typed models, so the difference is the gateway's and not the clients';
the `openai` SDK's own models cost more than the gateway adds), through
semcache as a plain request (a miss: the full path of exact lookup, embedding,
ANN search, upstream call, store), and through semcache with
CACHE_POLICY_BYPASS (no lookup, no store). The same is done streaming. The
overhead is reported as the difference of the p50s and as the median of the
per-question differences; calls that were not misses are left out and counted.

After each question's three calls, a gRPC health check through the same
channel and the question embedded alone in this process (the service's
backend and threads) measure the floors, call by call (`benchmarks.floors`).

The service runs with its embedding memo off: the streamed phase asks the
questions the unary phase asked, and with the memo on its misses reused the
unary phase's vectors, so a streamed miss was timed without its embedding.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2_grpc
from tqdm import tqdm

from benchmarks.data import data_file
from benchmarks.floors import FloorRecorder, floors_markdown, health_check_ms, ratio
from benchmarks.load import Sample, call_stream, call_unary
from benchmarks.procs import embedding_memo_off, run_stack
from benchmarks.report import (
    Row,
    latency_summary,
    machine_note,
    markdown_table,
    progress,
    rotated,
    service_env_note,
    write_results,
)
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

MODEL = "gpt-4o-mini"
VARIANTS = ("direct", "semcache_miss", "semcache_bypass")
# Why the report states the memo setting it starts semcache with.
MEMO_OFF_WHY = (
    "both phases ask the same questions, and the embedding memo would let the streamed"
    " misses reuse the unary phase's vectors"
)


def distinct_questions(n: int, path: Path) -> list[str]:
    """`n` different questions, numbered to stay distinct.

    Every `a` of the file, and the `b` of pairs that are not duplicates (a
    duplicate's `b` would be a semantic hit on its `a`).
    """
    seen: dict[str, None] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            seen[row["a"]] = None
            if not row["same_answer"]:
                seen[row["b"]] = None
            if len(seen) >= n:
                break
    return [f"Q{i}: {question}" for i, question in enumerate(list(seen)[:n])]


async def direct_call(
    session: aiohttp.ClientSession, upstream_url: str, prompt: str, stream: bool
) -> Sample:
    """One chat completion straight to the simulator, timed like the gRPC calls: the
    whole reply read, a stream's first event when its first `data:` line arrives."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first_ms = 0.0
    async with session.post(f"{upstream_url}/chat/completions", json=body) as response:
        if stream:
            async for line in response.content:
                if not first_ms and line.startswith(b"data:"):
                    first_ms = (time.perf_counter() - started) * 1000
        else:
            await response.read()
        outcome = "direct" if response.status == 200 else "error"
    return Sample(outcome, (time.perf_counter() - started) * 1000, first_event_ms=first_ms)


async def measure(
    target: str, upstream_url: str, prompts: Sequence[str], stream: bool, floors: FloorRecorder
) -> dict[str, list[Sample]]:
    """The three variants and the floors, interleaved question by question, at concurrency 1."""
    namespace = f"overhead-{uuid.uuid4().hex[:8]}-{'s' if stream else 'u'}"
    call = call_stream if stream else call_unary
    results: dict[str, list[Sample]] = {name: [] for name in VARIANTS}
    async with (
        grpc.aio.insecure_channel(target) as channel,
        aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as session,
    ):
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def one(variant: str, prompt: str) -> Sample:
            if variant == "direct":
                return await direct_call(session, upstream_url, prompt, stream)
            bypass = (
                pb.CACHE_POLICY_BYPASS if variant == "semcache_bypass" else pb.CACHE_POLICY_DEFAULT
            )
            return await call(
                stub, pb.CompleteRequest(prompt=prompt, namespace=namespace, cache_policy=bypass)
            )

        for warm_up in range(3):  # the same warm-up for every side
            for variant in VARIANTS:
                await one(variant, f"warm-up {warm_up}")
        label = f"overhead {'stream' if stream else 'unary'}"
        progress(f"{label}: {len(prompts)} questions, three calls and the floors each")
        for index, prompt in enumerate(
            tqdm(prompts, desc=label, unit="q", leave=False, mininterval=0.5)
        ):
            # The order turns question by question, so no side always follows another
            # (a bypass a miss of the same question, the direct call an embedding).
            for variant in rotated(VARIANTS, index):
                results[variant].append(await one(variant, prompt))
            floors.add_health(1, await health_check_ms(health))
            await asyncio.to_thread(floors.add_embed, prompt)
    return results


EXPECTED = {"direct": "direct", "semcache_miss": "miss", "semcache_bypass": "bypass"}


def summarise(results: dict[str, list[Sample]], mode: str) -> list[Row]:
    """One row per variant: latency, and its overhead over the direct call."""
    kept = [
        i
        for i in range(len(results["direct"]))
        if all(results[v][i].outcome == EXPECTED[v] for v in VARIANTS)
    ]
    direct = [results["direct"][i].round_trip_ms for i in kept]
    direct_p50 = statistics.median(direct) if direct else 0.0
    rows: list[Row] = []
    for variant in VARIANTS:
        times = [results[variant][i].round_trip_ms for i in kept]
        paired = [t - d for t, d in zip(times, direct, strict=True)]
        rows.append(
            {
                "mode": mode,
                "variant": variant,
                "requests": len(times),
                "left_out": len(results[variant]) - len(times),
                **latency_summary(times),
                "first_event_p50_ms": round(
                    statistics.median([results[variant][i].first_event_ms for i in kept] or [0]),
                    3,
                ),
                "service_p50_ms": round(
                    statistics.median([results[variant][i].service_ms for i in kept] or [0]), 3
                ),
                "overhead_p50_ms": round(statistics.median(times) - direct_p50, 3)
                if times
                else 0.0,
                "overhead_paired_p50_ms": round(statistics.median(paired), 3) if paired else 0.0,
            }
        )
    return rows


COLUMNS = (
    ("mode", "mode"),
    ("variant", "variant"),
    ("requests", "requests"),
    ("left_out", "left out"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("first_event_p50_ms", "first event p50 ms"),
    ("service_p50_ms", "in-service p50 ms"),
    ("overhead_p50_ms", "overhead (p50 diff) ms"),
    ("overhead_paired_p50_ms", "overhead (paired median) ms"),
    ("x_health_p50", "p50 ÷ health p50"),
    ("overhead_x_embed_p50", "overhead ÷ embedding p50"),
)
TARGET_COLUMNS = (("target", "target"), ("measured", "measured ms"), ("met", "met"))


def add_ratios(rows: Sequence[Row], floors: dict[str, Any]) -> None:
    """Each row's p50 over the health floor, its overhead over one embedding (in place)."""
    health = floors["health"][0]["health_p50_ms"] if floors["health"] else None
    embed = floors["embedder"]["embed_p50_ms"] or None
    for row in rows:
        row["x_health_p50"] = ratio(row["p50_ms"], health)
        if row["variant"] != "direct":
            row["overhead_x_embed_p50"] = ratio(row["overhead_paired_p50_ms"], embed)


def targets(rows: Sequence[Row], floors: dict[str, Any]) -> list[Row]:
    """A miss adds ≤ one embedding + 2 ms over the direct call; a bypass adds ≤ 1.5 ms."""
    embed_ms = floors["embedder"]["embed_p50_ms"]
    out: list[Row] = []
    for row in rows:
        if row["variant"] == "semcache_miss":
            bound, label = embed_ms + 2.0, "one embedding p50 + 2 ms"
        elif row["variant"] == "semcache_bypass":
            bound, label = 1.5, "1.5 ms"
        else:
            continue
        out.append(
            {
                "target": f"{row['variant']} adds ≤ {label} ({row['mode']}; ≤ {bound:.2f} ms)",
                "measured": row["overhead_paired_p50_ms"],
                "met": row["overhead_paired_p50_ms"] <= bound,
            }
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: floors, the variants, the targets."""
    return "\n\n".join(
        [
            f"Embedding backend: {report['embedding_backend']}. {report['machine']}."
            + service_env_note(report.get("service_env") or {}, MEMO_OFF_WHY),
            floors_markdown(report["floors"], "call by call, after each question's calls"),
            markdown_table(report["rows"], COLUMNS),
            markdown_table(report["targets"], TARGET_COLUMNS),
        ]
    )


def run(
    out_dir: Path, requests: int, env: dict[str, str] | None = None, data: Path | None = None
) -> str:
    """Measure, write overhead.json / overhead.md / overhead.png under `out_dir`.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    from benchmarks.floors import embedder_from_settings
    from benchmarks.report import bar_plot

    env = embedding_memo_off(env or {})  # both phases ask the same questions
    prompts = distinct_questions(requests, data_file(data))
    embedder, workers = embedder_from_settings(env.get("SEMCACHE_EMBEDDING_BACKEND"))
    floors = FloorRecorder(embedder, prompts, workers)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as workdir, run_stack(Path(workdir), extra_env=env) as stack:
        for stream in (False, True):
            results = asyncio.run(
                measure(stack.target, stack.upstream_url, prompts, stream, floors)
            )
            rows += summarise(results, "stream" if stream else "unary")
    report: dict[str, Any] = {
        "embedding_backend": embedder.model_id,
        "service_env": dict(sorted(env.items())),
        "machine": machine_note(),
        "floors": floors.report(),
        "rows": rows,
    }
    add_ratios(rows, report["floors"])
    report["targets"] = targets(rows, report["floors"])
    table = markdown(report)
    write_results(out_dir, "overhead", report, table)
    modes = ["unary", "stream"]
    series = {
        variant: [
            next(r["p50_ms"] for r in rows if (r["mode"], r["variant"]) == (m, variant))
            for m in modes
        ]
        for variant in VARIANTS
    }
    bar_plot(
        out_dir / "overhead.png",
        "Miss latency: direct vs through semcache (p50)",
        "ms",
        modes,
        series,
    )
    return table
