"""Success rate and latency with 30% of upstream calls failing, resilience on vs off.

Both runs use the same simulator settings (every model answers HTTP 500 to a
seeded 30% of calls) and the same distinct questions, so every request is a
miss that must reach a provider. "On" is the shipped configuration: retries
with backoff, fallback chains, circuit breakers. "Off" makes one attempt at
one model: `SEMCACHE_RETRY_MAX_ATTEMPTS=1`, a catalogue copy without
fallbacks, and a breaker that never opens.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.procs import run_stack
from benchmarks.report import (
    machine_note,
    percentile,
    progress,
    setup_markdown,
    write_setup_report,
)
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.config import DEFAULTS_DIR


def _catalogue_without_fallbacks(workdir: Path) -> Path:
    catalogue = yaml.safe_load((DEFAULTS_DIR / "models.example.yaml").read_text())
    for model in catalogue["models"]:
        model["fallbacks"] = []
    path = workdir / "no-fallbacks.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    return path


PROGRESS_EVERY = 50


def _drive(target: str, requests: int) -> dict[str, Any]:
    latencies_ms: list[float] = []
    attempts: list[int] = []
    failures: dict[str, int] = {}
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        for i in range(requests):
            request = pb.CompleteRequest(prompt=f"Resilience probe {i}: what is item {i}?")
            started = time.perf_counter()
            try:
                answer = stub.Complete(request, timeout=30)
            except grpc.RpcError as error:
                code = error.code().name
                failures[code] = failures.get(code, 0) + 1
                continue
            latencies_ms.append((time.perf_counter() - started) * 1000)
            attempts.append(answer.upstream_attempts)
            if (i + 1) % PROGRESS_EVERY == 0:
                progress(f"resilience: {i + 1}/{requests} requests")
    return _summary(requests, latencies_ms, attempts, failures)


def _summary(
    requests: int, latencies_ms: list[float], attempts: list[int], failures: dict[str, int]
) -> dict[str, Any]:
    ordered = sorted(latencies_ms)
    return {
        "requests": requests,
        "succeeded": len(ordered),
        "success_pct": round(100 * len(ordered) / requests, 2),
        "p50_ms": round(statistics.median(ordered), 1) if ordered else None,
        "p95_ms": round(percentile(ordered, 0.95), 1) if ordered else None,
        "mean_attempts": round(statistics.fmean(attempts), 2) if attempts else None,
        "failures": failures,
    }


COLUMNS = (
    ("configuration", "configuration"),
    ("requests", "requests"),
    ("success_pct", "success %"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("mean_attempts", "mean upstream attempts"),
    ("failures", "failures"),
)


def markdown(report: dict[str, Any]) -> str:
    """The report: its setup line and one row per configuration."""
    return setup_markdown(report, COLUMNS)


def _failures(failures: dict[str, int]) -> str:
    return ", ".join(f"{code} {count}" for code, count in sorted(failures.items())) or "-"


def run(out: Path, requests: int, error_rate: float, ttft_ms: float) -> str:
    """Run both configurations; write resilience.json and resilience.md; return the table."""
    fault = ("--fault", f"*:error_rate={error_rate}", "--seed", "7")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        off_env = {
            "SEMCACHE_RETRY_MAX_ATTEMPTS": "1",
            "SEMCACHE_BREAKER_FAILURES": "1000000",
            "SEMCACHE_CATALOGUE_PATH": str(_catalogue_without_fallbacks(workdir)),
        }
        for name, env in (("resilience on", {}), ("resilience off", off_env)):
            progress(f"resilience: {name}, {requests} requests")
            with run_stack(workdir / name.replace(" ", "-"), ttft_ms, 1.0, env, fault) as stack:
                summary = _drive(stack.target, requests)
                failures = _failures(summary.pop("failures"))
                rows.append({"configuration": name, **summary, "failures": failures})
    setup = (
        f"{error_rate * 100:g}% of upstream calls fail (HTTP 500, seeded); {requests} distinct"
        f" questions (all misses); simulator {ttft_ms:g} ms to first token + 1 ms/token."
        f" {machine_note()}."
    )
    return write_setup_report(out, "resilience", setup, rows, COLUMNS)
