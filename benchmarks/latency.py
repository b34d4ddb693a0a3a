"""Latency of a miss, an exact hit and a semantic hit through the gRPC API, at concurrency 1.

    semcache bench latency [--pairs 200] [--data FILE]

Questions come from qqp_dev.jsonl (`benchmarks.data`, read in place): for each
duplicate pair, `a` is asked (a miss), asked again (an exact hit), then `b`
is asked (a semantic hit when it clears the guard). Latency is the client's
round trip through the generated stub; the simulator answers with zero
latency, so a miss shows the gateway's own cost plus one HTTP call.

The service's own account of where its time went (`benchmarks.stages`: calls
and mean ms of each stage of its request path over the pairs, from its
metrics endpoint) comes with the service the command starts.

After each pair, the floors are measured call by call, so noise falls on
both (`benchmarks.floors`): one gRPC health check through the same channel,
then `a` embedded alone in this process (the service's backend and threads;
not timed) and `b` embedded alone (timed). `b`'s embedding, like the
service's, comes a moment after `a`'s, on caches warm with the model.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.data import data_file
from benchmarks.floors import FloorRecorder, embedder_from_settings, floors_markdown, ratio
from benchmarks.procs import free_port, run_stack
from benchmarks.report import (
    Row,
    machine_note,
    markdown_table,
    percentile,
    progress,
    service_env_note,
    write_results,
)
from benchmarks.stages import COLUMNS as STAGE_COLUMNS
from benchmarks.stages import StageMeter
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

STATUS_NAMES = {
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_EXACT_HIT: "exact_hit",
    pb.CACHE_STATUS_SEMANTIC_HIT: "semantic_hit",
}
PROGRESS_EVERY = 25


@dataclass
class LatencyResult:
    round_trip_ms: dict[str, list[float]] = field(default_factory=dict)
    service_ms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, response: pb.CompleteResponse, round_trip_ms: float) -> None:
        name = STATUS_NAMES.get(response.cache_status, "other")
        self.round_trip_ms.setdefault(name, []).append(round_trip_ms)
        self.service_ms.setdefault(name, []).append(response.latency_ms)


def load_pairs(path: Path, limit: int) -> list[tuple[str, str]]:
    """Duplicate pairs (a, b), in file order."""
    pairs = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if row["same_answer"]:
                pairs.append((row["a"], row["b"]))
            if len(pairs) == limit:
                break
    return pairs


def _timed(stub: pb_grpc.SemanticCacheServiceStub, text: str, result: LatencyResult) -> None:
    started = time.perf_counter()
    response = stub.Complete(pb.CompleteRequest(prompt=text), timeout=30)
    result.add(response, (time.perf_counter() - started) * 1000)


def _health_ms(health: health_pb2_grpc.HealthStub) -> float:
    started = time.perf_counter()
    health.Check(health_pb2.HealthCheckRequest(), timeout=30)
    return (time.perf_counter() - started) * 1000


def measure(
    target: str,
    pairs: list[tuple[str, str]],
    floors: FloorRecorder,
    stages: StageMeter | None = None,
) -> LatencyResult:
    """Each pair's three calls, then its floors (a health check, `a` embedded untimed,
    `b` embedded), pair by pair; `stages`, if given, read around the pairs."""
    result = LatencyResult()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        for warm_up in ("warm-up question one", "warm-up question one", "warm-up question two"):
            stub.Complete(pb.CompleteRequest(prompt=warm_up), timeout=30)
            _health_ms(health)
            floors.warm_up(warm_up)
        if stages is not None:
            stages.start()
        for done, (a, b) in enumerate(pairs, start=1):
            _timed(stub, a, result)
            _timed(stub, a, result)
            _timed(stub, b, result)
            # The health check right after the service's calls, as the exact hit came
            # right after the miss; then `a` embedded untimed before the timed `b`, as
            # the service embedded `a` (the miss) a moment before its `b`: a `b` alone
            # would run after the service's two embeddings pushed this process's model
            # out of the shared caches, and read slower than the service's did.
            floors.add_health(1, _health_ms(health))
            floors.warm_up(a)
            floors.add_embed(b)
            if done % PROGRESS_EVERY == 0 or done == len(pairs):
                progress(f"latency: {done}/{len(pairs)} pairs")
        if stages is not None:
            stages.stop()
    return result


def summarise(result: LatencyResult, floors: dict[str, Any]) -> list[Row]:
    """One row per outcome: round trip p50/p95, in-service p50, ratios to the floors."""
    health = floors["health"][0]["health_p50_ms"] if floors["health"] else None
    embed = floors["embedder"]["embed_p50_ms"]
    rows: list[Row] = []
    for outcome, values in sorted(result.round_trip_ms.items()):
        p50_ms = round(statistics.median(values), 3)
        row: Row = {
            "outcome": outcome,
            "count": len(values),
            "p50_ms": p50_ms,
            "p95_ms": round(percentile(values, 0.95), 3),
            "service_p50_ms": round(statistics.median(result.service_ms[outcome]), 3),
            "x_health_p50": ratio(p50_ms, health),
        }
        if outcome == "semantic_hit" and health is not None:
            row["over_floor_ms"] = round(p50_ms - health - embed, 3)
        rows.append(row)
    return rows


def targets(rows: list[Row]) -> list[Row]:
    """Exact hit p50 ≤ 1.15× health p50; semantic hit p50 ≤ health + embedding + 1 ms."""
    by = {row["outcome"]: row for row in rows}
    out: list[Row] = []
    exact, semantic = by.get("exact_hit", {}), by.get("semantic_hit", {})
    if isinstance(exact.get("x_health_p50"), float):
        measured = exact["x_health_p50"]
        out.append(
            {
                "target": "exact hit p50 ≤ 1.15× health p50",
                "measured": measured,
                "met": measured <= 1.15,
            }
        )
    if "over_floor_ms" in semantic:
        measured = semantic["over_floor_ms"]
        out.append(
            {
                "target": "semantic hit p50 − (health p50 + embedding p50) ≤ 1.0 ms",
                "measured": measured,
                "met": measured <= 1.0,
            }
        )
    return out


COLUMNS = (
    ("outcome", "outcome"),
    ("count", "requests"),
    ("p50_ms", "round trip p50 ms"),
    ("p95_ms", "round trip p95 ms"),
    ("service_p50_ms", "in service p50 ms"),
    ("x_health_p50", "p50 ÷ health p50"),
    ("over_floor_ms", "p50 − (health p50 + embedding p50) ms"),
)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: floors, outcomes, stages (when measured), targets."""
    stages = report.get("stages") or []
    stage_tables = [
        "In service, by the service's own metrics over the pairs (`lookup` is every"
        " request's whole lookup, the exact hits' included; `embed` (with its thread"
        " hop), `search` and `verify` every lookup that embedded: the misses and the"
        " semantic hits; `route`, `upstream` and `store` (the answer written to the"
        " store) the misses):\n\n" + markdown_table(stages, STAGE_COLUMNS)
    ]
    return "\n\n".join(
        [
            f"Embedding backend: {report['embedding_backend']}. {report['machine']}."
            + service_env_note(report.get("service_env") or {}),
            floors_markdown(report["floors"], "call by call, after each pair"),
            markdown_table(report["rows"], COLUMNS),
            *(stage_tables if stages else []),
            markdown_table(
                report["targets"], (("target", "target"), ("measured", "measured"), ("met", "met"))
            ),
        ]
    )


def run(
    out_dir: Path, pairs: int, data: Path | None, target: str | None, env: dict[str, str]
) -> str:
    """Measure, write latency.json and latency.md under `out_dir`, return the tables.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    questions = load_pairs(data_file(data), pairs)
    embedder, workers = embedder_from_settings(env.get("SEMCACHE_EMBEDDING_BACKEND"))
    floors = FloorRecorder(embedder, [b for _, b in questions], workers)
    stages: StageMeter | None = None
    if target is not None:
        result = measure(target, questions, floors)
    else:
        metrics_port = free_port()
        stages = StageMeter(metrics_port)
        stack_env = {**env, "SEMCACHE_METRICS_PORT": str(metrics_port)}
        with (
            tempfile.TemporaryDirectory() as workdir,
            run_stack(Path(workdir), extra_env=stack_env) as stack,
        ):
            result = measure(stack.target, questions, floors, stages)
    report: dict[str, Any] = {
        "embedding_backend": embedder.model_id,
        "service_env": dict(sorted(env.items())) if target is None else {},
        "machine": machine_note(),
        "floors": floors.report(),
    }
    report["rows"] = summarise(result, report["floors"])
    report["stages"] = stages.rows() if stages is not None else []
    report["targets"] = targets(report["rows"])
    table = markdown(report)
    write_results(out_dir, "latency", report, table)
    return table
