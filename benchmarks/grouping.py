"""Misses at high concurrency, with and without grouping them into `/v1/completions` calls.

Both runs send the same distinct questions (all misses, model named, cache
bypassed so nothing is served from it) through the gRPC API at the same
concurrency, to a simulator answering after a time to first token plus a
time per token. "grouped" gives the catalogue's provider `group_prompts`;
"one call per miss" is the shipped catalogue. The simulator's `/sim/stats`
counts the HTTP requests that reached it.

The simulator decodes a grouped request's prompts side by side (the longest
answer sets its time) and charges nothing for the batch itself, as an idle
vLLM server roughly would; a loaded one slows with batch size, so the
latency column is the best case. The request counts are exact.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.data import data_file
from benchmarks.load import drive
from benchmarks.overhead import distinct_questions
from benchmarks.procs import run_stack
from benchmarks.report import (
    Row,
    bar_plot,
    latency_summary,
    machine_note,
    progress,
    setup_markdown,
    write_setup_report,
)
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc
from service.config import DEFAULTS_DIR

MODEL = "gpt-4o-mini"
PROVIDER = "openai"


def grouped_catalogue(workdir: Path, max_prompts: int, max_in_flight: int) -> Path:
    """The seed catalogue with `group_prompts` on the provider serving `MODEL`."""
    catalogue = yaml.safe_load((DEFAULTS_DIR / "models.example.yaml").read_text())
    for provider in catalogue["providers"]:
        if provider["name"] == PROVIDER:
            provider["group_prompts"] = {"max_prompts": max_prompts, "max_in_flight": max_in_flight}
    path = workdir / "grouped.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    return path


def _simulator_stats(upstream_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{upstream_url.removesuffix('/v1')}/sim/stats") as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


async def _run_phase(target: str, questions: list[str], concurrency: int) -> tuple[Any, float]:
    requests = [
        pb.CompleteRequest(prompt=q, model=MODEL, cache_policy=pb.CACHE_POLICY_BYPASS)
        for q in questions
    ]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SemanticCacheServiceStub(channel)
        return await drive(stub, requests, concurrency, stream=False, label="grouping")


def measure(
    questions: list[str],
    concurrency: int,
    ttft_ms: float,
    ms_per_token: float,
    max_prompts: int,
    max_in_flight: int,
    service_env: dict[str, str],
) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        grouped = {
            "SEMCACHE_CATALOGUE_PATH": str(grouped_catalogue(workdir, max_prompts, max_in_flight))
        }
        for name, env in (("one call per miss", {}), ("grouped", grouped)):
            progress(f"grouping: {name}, {len(questions)} misses at c={concurrency}")
            stack_dir = workdir / name.replace(" ", "-")
            with run_stack(stack_dir, ttft_ms, ms_per_token, {**service_env, **env}) as stack:
                samples, wall_s = asyncio.run(_run_phase(stack.target, questions, concurrency))
                stats = _simulator_stats(stack.upstream_url)
            ok = [s for s in samples if s.outcome != "error"]
            http_requests = stats["by_endpoint"].get("completions", 0) + stats["by_endpoint"].get(
                "chat.completions", 0
            )
            rows.append(
                {
                    "configuration": name,
                    "requests": len(samples),
                    "errors": len(samples) - len(ok),
                    "upstream_http_requests": http_requests,
                    "prompts_per_request": round(stats["prompts_total"] / http_requests, 2)
                    if http_requests
                    else 0,
                    "throughput_rps": round(len(ok) / wall_s, 1),
                    **latency_summary([s.round_trip_ms for s in ok]),
                }
            )
    return rows


COLUMNS = (
    ("configuration", "configuration"),
    ("requests", "misses"),
    ("errors", "errors"),
    ("upstream_http_requests", "upstream HTTP requests"),
    ("prompts_per_request", "prompts per request"),
    ("throughput_rps", "misses/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
)


def markdown(report: dict[str, Any]) -> str:
    """The report: its setup line and one row per configuration."""
    return setup_markdown(report, COLUMNS)


def run(
    out_dir: Path,
    requests: int,
    concurrency: int,
    ttft_ms: float,
    ms_per_token: float,
    max_prompts: int,
    max_in_flight: int,
    service_env: dict[str, str] | None = None,
    data: Path | None = None,
) -> str:
    """Measure both configurations; write grouping.json / .md / .png; return the table.

    Raises:
        MissingDataError: the qqp-style data file is not there.
    """
    questions = distinct_questions(requests, data_file(data))
    rows = measure(
        questions, concurrency, ttft_ms, ms_per_token, max_prompts, max_in_flight, service_env or {}
    )
    setup = (
        f"{requests} distinct misses for {MODEL} at concurrency {concurrency}; simulator"
        f" {ttft_ms:g} ms to first token + {ms_per_token:g} ms/token; grouped: at most"
        f" {max_prompts} prompts per request, {max_in_flight} requests in flight. {machine_note()}."
    )
    table = write_setup_report(out_dir, "grouping", setup, rows, COLUMNS)
    bar_plot(
        out_dir / "grouping.png",
        f"{requests} misses at concurrency {concurrency}",
        "count / per second / ms",
        [str(row["configuration"]) for row in rows],
        {
            "upstream HTTP requests": [float(row["upstream_http_requests"]) for row in rows],
            "misses/s": [float(row["throughput_rps"]) for row in rows],
            "p95 ms": [float(row["p95_ms"]) for row in rows],
        },
    )
    return table
