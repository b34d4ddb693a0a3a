"""Tables, targets and plots of the load benchmark (`benchmarks.load`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import Row, bar_plot, line_plot, markdown_table

ZIPF_COLUMNS = (
    ("mode", "mode"),
    ("concurrency", "concurrency"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("throughput_rps", "req/s"),
    ("hit_rate", "hit rate"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("cost_saved_usd", "saved $"),
    ("cost_spent_usd", "spent $"),
    ("cpu_mean_pct", "service CPU %"),
    ("rss_max_mib", "service RSS MiB"),
)
OUTCOME_COLUMNS = (
    ("mode", "mode"),
    ("concurrency", "concurrency"),
    ("outcome", "outcome"),
    ("count", "count"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("service_p50_ms", "in-service p50 ms"),
)
HIT_COLUMNS = (
    ("phase", "asked"),
    ("mode", "mode"),
    ("concurrency", "concurrency"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("distinct_prompts", "distinct"),
    ("hit_rate", "hit rate"),
    ("throughput_rps", "req/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("cpu_mean_pct", "service CPU %"),
    ("rss_max_mib", "service RSS MiB"),
)


def outcome_rows(zipf: Sequence[Row]) -> list[Row]:
    """One row per (phase, outcome) from the phases' `by_outcome` breakdowns."""
    return [
        {"mode": r["mode"], "concurrency": r["concurrency"], "outcome": outcome, **stats}
        for r in zipf
        for outcome, stats in r["by_outcome"].items()
    ]


def _hit(rows: Sequence[Row], phase: str, mode: str, concurrency: int) -> Row | None:
    for row in rows:
        if (row["phase"], row["mode"], row["concurrency"]) == (phase, mode, concurrency):
            return row
    return None


def targets(hits: Sequence[Row]) -> list[Row]:
    """The issue's latency and throughput targets, met or not, from the hit phases."""
    exact_1 = _hit(hits, "exact_hit", "unary", 1)
    semantic_1 = _hit(hits, "semantic_hit", "unary", 1)
    semantic_64 = _hit(hits, "semantic_hit", "unary", 64)
    checks: list[tuple[str, Row | None, str, float, bool]] = []
    if exact_1:
        checks.append(("exact hit p50 ≤ 1 ms (c=1)", exact_1, "p50_ms", 1.0, False))
    if semantic_1:
        checks.append(("semantic hit p50 ≤ 3 ms (c=1)", semantic_1, "p50_ms", 3.0, False))
    if semantic_64:
        checks.append(("semantic hits/s ≥ 500 (c=64)", semantic_64, "throughput_rps", 500, True))
        checks.append(("semantic hit p99 ≤ 50 ms (c=64)", semantic_64, "p99_ms", 50.0, False))
    return [
        {
            "target": label,
            "measured": row[key] if row else "",
            "met": (row[key] >= bound) if at_least else (row[key] <= bound),
        }
        for label, row, key, bound, at_least in checks
        if row is not None
    ]


def markdown(results: dict[str, Any]) -> str:
    """The report: Zipf phases, their latency by outcome, hit phases, targets."""
    return "\n\n".join(
        [
            f"Embedding backend: {results['embedding_backend']}. {results['machine']}.",
            "Zipf workload (each phase in a fresh namespace):",
            markdown_table(results["zipf"], ZIPF_COLUMNS),
            "Latency by cache outcome (client round trip):",
            markdown_table(outcome_rows(results["zipf"]), OUTCOME_COLUMNS),
            "Hits only (exact: the cached `a`s again; semantic: paraphrases that hit, NO_STORE):",
            markdown_table(results["hits"], HIT_COLUMNS),
            "Targets:",
            markdown_table(
                results["targets"], (("target", "target"), ("measured", "measured"), ("met", "met"))
            ),
        ]
    )


def plot(results: dict[str, Any], out_dir: Path) -> None:
    """Throughput and p99 against concurrency, per workload and mode."""
    throughput: dict[str, list[tuple[float, float]]] = {}
    p99: dict[str, list[tuple[float, float]]] = {}
    for row in [*results["zipf"], *results["hits"]]:
        label = f"{row['phase']} {row['mode']}"
        throughput.setdefault(label, []).append((row["concurrency"], row["throughput_rps"]))
        p99.setdefault(label, []).append((row["concurrency"], row["p99_ms"]))
    line_plot(
        out_dir / "load_throughput.png",
        "Throughput",
        "concurrency",
        "requests/s",
        throughput,
        log_x=True,
    )
    line_plot(
        out_dir / "load_p99.png", "p99 latency", "concurrency", "ms", p99, log_x=True, log_y=True
    )
    by_outcome = outcome_rows([r for r in results["zipf"] if r["mode"] == "unary"])
    sweep = sorted({r["concurrency"] for r in by_outcome})
    p50 = {(r["outcome"], r["concurrency"]): r["p50_ms"] for r in by_outcome}
    series = {
        outcome: [p50.get((outcome, c), 0.0) for c in sweep]
        for outcome in sorted({r["outcome"] for r in by_outcome})
    }
    groups = [f"c={c}" for c in sweep]
    bar_plot(
        out_dir / "load_p50_by_outcome.png",
        "Zipf unary: p50 by outcome",
        "ms",
        groups,
        series,
        log_y=True,
    )
