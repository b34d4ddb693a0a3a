"""Tables, targets and plots of the load benchmark (`benchmarks.load`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.floors import floors_markdown, health_of, ratio
from benchmarks.report import Row, bar_plot, line_plot, markdown_table, service_env_note

FLOORS_WHEN = (
    "in bursts before its phases, except the health check at concurrency 1: one after"
    " each request of the phase"
)
RATIO_COLUMNS = (
    ("x_health_p50", "p50 ÷ health p50"),
    ("x_health_rps", "req/s ÷ health checks/s"),
    ("x_embed_rps", "req/s ÷ embedder texts/s"),
)

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
    *RATIO_COLUMNS,
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
    *RATIO_COLUMNS,
    ("over_floor_ms", "p50 − (health p50 + embedding p50) ms"),
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


def add_ratios(report: dict[str, Any]) -> None:
    """Each phase's p50 and rate as ratios to the floors at its concurrency (in place)."""
    floors = report["floors"]
    embed = floors["embedder"]
    for row in [*report["zipf"], *report["hits"]]:
        health = health_of(floors, row["concurrency"])
        row["x_health_p50"] = ratio(row["p50_ms"], health.get("health_p50_ms"))
        row["x_health_rps"] = ratio(row["throughput_rps"], health.get("health_rps"))
        row["x_embed_rps"] = ratio(row["throughput_rps"], embed["embed_texts_per_s"])
        if row["phase"] == "semantic_hit" and health and embed["texts"]:
            floor_ms = health["health_p50_ms"] + embed["embed_p50_ms"]
            row["over_floor_ms"] = round(row["p50_ms"] - floor_ms, 3)


def targets(report: dict[str, Any]) -> list[Row]:
    """Issue 13's ratio targets, met or not, from the unary hit phases and their floors."""
    hits = report["hits"]
    checks: list[tuple[str, Row | None, str, float, bool]] = [
        (
            "exact hit p50 ≤ 1.15× health p50 (c=1)",
            _hit(hits, "exact_hit", "unary", 1),
            "x_health_p50",
            1.15,
            False,
        ),
        (
            "exact hits/s ≥ 0.8× health checks/s (c=64)",
            _hit(hits, "exact_hit", "unary", 64),
            "x_health_rps",
            0.8,
            True,
        ),
        (
            "semantic hit p50 − (health p50 + embedding p50) ≤ 1.0 ms (c=1)",
            _hit(hits, "semantic_hit", "unary", 1),
            "over_floor_ms",
            1.0,
            False,
        ),
        (
            "semantic hits/s ≥ 0.8× embedder texts/s (c=64)",
            _hit(hits, "semantic_hit", "unary", 64),
            "x_embed_rps",
            0.8,
            True,
        ),
    ]
    return [
        {
            "target": label,
            "measured": row[key],
            "met": (row[key] >= bound) if at_least else (row[key] <= bound),
        }
        for label, row, key, bound, at_least in checks
        if row is not None and isinstance(row.get(key), int | float)
    ]


def markdown(results: dict[str, Any]) -> str:
    """The report: floors, Zipf phases, their latency by outcome, hit phases, targets."""
    return "\n\n".join(
        [
            f"Embedding backend: {results['embedding_backend']}. {results['machine']}."
            + service_env_note(results.get("service_env", {})),
            floors_markdown(results["floors"], FLOORS_WHEN),
            "Zipf workload (each phase in a fresh namespace):",
            markdown_table(results["zipf"], ZIPF_COLUMNS),
            "Latency by cache outcome (client round trip):",
            markdown_table(outcome_rows(results["zipf"]), OUTCOME_COLUMNS),
            "Hits only (exact: the cached `a`s again, those stored under their own words;"
            " semantic: paraphrases that hit, NO_STORE):",
            markdown_table(results["hits"], HIT_COLUMNS),
            "Targets (ratios to the floors above):",
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
