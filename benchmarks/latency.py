"""Latency of a miss, an exact hit and a semantic hit through the gRPC API, at concurrency 1.

Questions come from ../shared/data/qqp_dev.jsonl (read in place): for each
duplicate pair, `a` is asked (a miss), asked again (an exact hit), then `b`
is asked (a semantic hit when it clears the threshold). Latency is the
client's round trip through the generated stub; the simulator answers with
zero latency, so a miss shows the gateway's own cost plus one HTTP call.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.procs import run_stack
from benchmarks.report import percentile
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp_dev.jsonl"
STATUS_NAMES = {
    pb.CACHE_STATUS_MISS: "miss",
    pb.CACHE_STATUS_EXACT_HIT: "exact_hit",
    pb.CACHE_STATUS_SEMANTIC_HIT: "semantic_hit",
}


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
    with path.open() as lines:
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


def measure(target: str, pairs: list[tuple[str, str]]) -> LatencyResult:
    result = LatencyResult()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        for warm_up in ("warm-up question one", "warm-up question one", "warm-up question two"):
            stub.Complete(pb.CompleteRequest(prompt=warm_up), timeout=30)
        for a, b in pairs:
            _timed(stub, a, result)
            _timed(stub, a, result)
            _timed(stub, b, result)
    return result


def summarise(result: LatencyResult) -> list[dict[str, float | int | str]]:
    rows: list[dict[str, float | int | str]] = []
    for outcome, values in sorted(result.round_trip_ms.items()):
        rows.append(
            {
                "outcome": outcome,
                "count": len(values),
                "p50_ms": round(statistics.median(values), 2),
                "p95_ms": round(percentile(values, 0.95), 2),
                "service_p50_ms": round(statistics.median(result.service_ms[outcome]), 2),
            }
        )
    return rows


def markdown(rows: list[dict[str, float | int | str]]) -> str:
    lines = [
        "| outcome | requests | round trip p50 (ms) | round trip p95 (ms) | in service p50 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['outcome']} | {row['count']} | {row['p50_ms']} | {row['p95_ms']}"
            f" | {row['service_p50_ms']} |"
        )
    return "\n".join(lines)


def run(out_dir: Path, pairs: int, data: Path, target: str | None, env: dict[str, str]) -> str:
    """Measure, write latency.json and latency.md under `out_dir`, return the table."""
    questions = load_pairs(data, pairs)
    if target is not None:
        result = measure(target, questions)
    else:
        with (
            tempfile.TemporaryDirectory() as workdir,
            run_stack(Path(workdir), extra_env=env) as stack,
        ):
            result = measure(stack.target, questions)
    rows = summarise(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latency.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    (out_dir / "latency.md").write_text(table + "\n")
    return table
