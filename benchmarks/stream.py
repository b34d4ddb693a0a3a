"""`semcache bench stream`: a labelled question stream replayed through the real service.

    semcache bench stream --stream FILE [--out DIR] [--max-error-rate 0.01] [--limit N]

Protocol (issue 12, "Measuring it"; `../shared/data/README_stream.md`): the stream's
requests, in file order at concurrency 1, go through the Python client over gRPC to
a `semcache serve` with an EMPTY cache, whose upstream is `semcache simulate-upstream
--answers FILE`: every question of the file is answered with its cluster's canned
answer, `ANSWER[<cluster>]: ...`, so whether an answer is right reads off its tag.
Explorations are judged by the `exact` judge (`SEMCACHE_JUDGE=exact`). Two service
runs, each with a fresh cache, in one command:

- verified: `SEMCACHE_ERROR_BUDGET=true`, `SEMCACHE_MAX_ERROR_RATE=<--max-error-rate>`;
- guard: `SEMCACHE_ERROR_BUDGET=false` (today's near-miss guard alone);

plus, in this process with the same embedder (not through the service), the plain
cosine threshold that serves most at an error rate no higher than the verified run's
(`benchmarks.stream_replay`'s sweep over 0.800..0.995).

Scored from the answers' tags: served share (correct hits / should-hit requests),
served share of reworded questions, error rate (wrong answers / requests; also over
the second half), traps served, exact and semantic hits, explorations (responses
whose `cache_detail` starts with "explore"), and the service's own verification
counters from `GetCacheStats`. Writes `stream.json`, `stream.md` and the learning
curve `stream.png` under `--out`.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.procs import run_stack
from benchmarks.report import machine_note, markdown_table, progress, write_results
from benchmarks.stream_replay import (
    COLUMNS,
    Matrix,
    Outcome,
    Request,
    best_cosine,
    cached_vectors,
    load_stream,
    plot,
    summarise,
    table_rows,
)

PROGRESS_EVERY = 250
TIMEOUT_S = 60.0
JUDGE = "exact"
_TAG = re.compile(r"^\s*ANSWER\[([^\]]+)\]")


@dataclass(frozen=True)
class ServiceRun:
    """One decider run through the service: its name and the settings that make it."""

    name: str
    env: dict[str, str]


def service_runs(max_error_rate: float) -> list[ServiceRun]:
    """The verified decision at `max_error_rate`, then the guard alone; both judge `exact`."""
    return [
        ServiceRun(
            f"verified δ={max_error_rate:g}",
            {
                "SEMCACHE_ERROR_BUDGET": "true",
                "SEMCACHE_MAX_ERROR_RATE": repr(max_error_rate),
                "SEMCACHE_JUDGE": JUDGE,
            },
        ),
        ServiceRun("guard alone", {"SEMCACHE_ERROR_BUDGET": "false", "SEMCACHE_JUDGE": JUDGE}),
    ]


def answer_cluster(content: str) -> str | None:
    """The cluster an answer's `ANSWER[<cluster>]` tag names; None without a tag."""
    match = _TAG.match(content)
    return match.group(1) if match else None


def outcome_of(request: Request, status: str, detail: str, content: str) -> Outcome:
    """What one response did for `request`: its kind, and for a hit whether it was right.

    `status` is the answer's cache status ("exact_hit", "semantic_hit", "miss", ...);
    an upstream answer whose `cache_detail` starts with "explore" is an exploration.
    """
    if status == "exact_hit":
        return Outcome(request, "exact", answer_cluster(content) == request.cluster)
    if status == "semantic_hit":
        return Outcome(request, "semantic", answer_cluster(content) == request.cluster)
    return Outcome(request, "explore" if detail.startswith("explore") else "miss")


def progress_line(name: str, outcomes: Sequence[Outcome], total: int, started: float) -> str:
    """`<name> i/total: served x%, wrong n, explorations m, t s`, for stderr."""
    figures = summarise(name, outcomes)
    return (
        f"{name} {len(outcomes)}/{total}: served {figures['served']:.1%} of should-hit,"
        f" wrong {figures['wrong']}, explorations {figures['explorations']},"
        f" {time.monotonic() - started:.0f} s"
    )


Ask = Callable[[str], tuple[str, str, str]]


def replay(name: str, requests: Sequence[Request], ask: Ask) -> list[Outcome]:
    """Each request asked in order through `ask` (question -> status, detail, content)."""
    outcomes: list[Outcome] = []
    started = time.monotonic()
    for request in requests:
        outcomes.append(outcome_of(request, *ask(request.q)))
        if len(outcomes) % PROGRESS_EVERY == 0 or len(outcomes) == len(requests):
            progress(progress_line(name, outcomes, len(requests), started))
    return outcomes


def verification_rows(stats: Any) -> list[dict[str, Any]]:
    """The service's per-namespace verification counters, as plain dicts."""
    return [asdict(row) for row in stats.verification]


def through_service(
    run: ServiceRun, requests: Sequence[Request], stream: Path, env: dict[str, str]
) -> tuple[list[Outcome], list[dict[str, Any]]]:
    """`requests` through a fresh simulator and service started with `run`'s settings."""
    from semcache_client import SemcacheClient

    with (
        tempfile.TemporaryDirectory() as workdir,
        run_stack(
            Path(workdir),
            extra_env={**env, **run.env},
            simulator_args=("--answers", str(stream)),
        ) as stack,
        SemcacheClient(stack.target, timeout_s=TIMEOUT_S) as client,
    ):
        progress(f"{run.name}: service up at {stack.target}; replaying {len(requests)} requests")

        def ask(question: str) -> tuple[str, str, str]:
            answer = client.complete(question)
            return answer.cache_status.value, answer.cache_detail, answer.content

        outcomes = replay(run.name, requests, ask)
        return outcomes, verification_rows(client.stats())


def cosine_baseline(
    requests: Sequence[Request], embed: Callable[[Sequence[str]], Matrix], model_id: str,
    max_error_rate: float,
) -> tuple[float, list[Outcome]]:  # fmt: skip
    """The best plain threshold at an error rate <= `max_error_rate`, in process."""
    vectors = cached_vectors([r.q for r in requests], embed, model_id)
    return best_cosine(requests, vectors, max_error_rate)


def run(
    out_dir: Path,
    stream: Path,
    max_error_rate: float,
    limit: int | None,
    embedder: Any,
    env: dict[str, str],
) -> str:
    """Replay, score, write stream.json / stream.md / stream.png under `out_dir`; the table."""
    requests = load_stream(stream)[:limit] if limit else load_stream(stream)
    results: dict[str, list[Outcome]] = {}
    verification: dict[str, list[dict[str, Any]]] = {}
    for service_run in service_runs(max_error_rate):
        outcomes, rows = through_service(service_run, requests, stream, env)
        results[service_run.name], verification[service_run.name] = outcomes, rows
    verified_error = summarise("", next(iter(results.values())))["error_rate"]
    progress(f"cosine sweep in process at error rate <= {verified_error:.2%}")
    threshold, cosine = cosine_baseline(requests, embedder.embed, embedder.model_id, verified_error)
    results[f"cosine {threshold:.3f} (in process)"] = cosine
    report = build_report(stream, requests, results, verification, max_error_rate, threshold)
    report["embedding_model"] = embedder.model_id
    table = markdown(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(results, out_dir / "stream.png", _block(len(requests)), f"{stream.name}: learning curve")
    write_results(out_dir, "stream", report, table)
    return table


def _block(requests: int) -> int:
    """Blocks of the learning curve: ten over the stream, at least 10 requests each."""
    return max(10, requests // 10)


def build_report(
    stream: Path,
    requests: Sequence[Request],
    results: dict[str, list[Outcome]],
    verification: dict[str, list[dict[str, Any]]],
    max_error_rate: float,
    threshold: float,
) -> dict[str, Any]:
    """The JSON report: stream facts, one row per decider and part, the service's counters."""
    return {
        "stream": stream.name,
        "requests": len(requests),
        "should_hit": sum(r.should_hit for r in requests),
        "reworded": sum(r.reworded for r in requests),
        "traps": sum(r.trap for r in requests),
        "max_error_rate": max_error_rate,
        "judge": JUDGE,
        "cosine_threshold": threshold,
        "machine": machine_note(),
        "rows": table_rows(results),
        "verification": verification,
        "targets": targets(table_rows(results), max_error_rate),
    }


def targets(rows: Sequence[dict[str, Any]], max_error_rate: float) -> list[dict[str, Any]]:
    """Issue 12's stream targets for the verified run (its first two rows), met or not."""
    whole, second = rows[0], rows[1]
    checks = [
        (f"error rate ≤ {max_error_rate:.1%} (whole stream)", whole["error_rate"], "≤"),
        (f"error rate ≤ {max_error_rate:.1%} (2nd half)", second["error_rate"], "≤"),
        ("reworded questions served ≥ 50%", whole["reworded_served"], "≥"),
        ("explorations ≤ 10% of requests", whole["exploration_share"], "≤"),
    ]
    bounds = [max_error_rate, max_error_rate, 0.5, 0.1]
    return [
        {
            "target": name,
            "measured": f"{value:.2%}",
            "met": "yes" if (value <= bound if op == "≤" else value >= bound) else "no",
        }
        for (name, value, op), bound in zip(checks, bounds, strict=True)
    ]


def _counters_line(name: str, rows: Sequence[dict[str, Any]]) -> str:
    explored = sum(r.get("explored", 0) for r in rows)
    audits = sum(r.get("audits", 0) for r in rows)
    same = sum(r.get("judged_same", 0) for r in rows)
    wrong = sum(r.get("judged_wrong", 0) for r in rows)
    return f"- {name}: {explored} explored ({audits} audits), judged {same} same and {wrong} wrong"


def markdown(report: dict[str, Any]) -> str:
    """The README block: what was replayed, the table, the targets, the service's counters."""
    counters = "\n".join(_counters_line(n, rows) for n, rows in report["verification"].items())
    return "\n\n".join(
        [
            f"{report['requests']} requests of `{report['stream']}` ({report['should_hit']}"
            f" should-hit, {report['reworded']} reworded, {report['traps']} traps), concurrency"
            f" 1, empty cache, through gRPC to `semcache serve` over `semcache simulate-upstream"
            f" --answers`, judge `{report['judge']}`; embedder {report.get('embedding_model', '')}."
            f" The cosine row is computed in process with the same embedder (the best plain"
            f" threshold at an error rate no higher than the verified run's), not through the"
            f" service. {report['machine']}.",
            markdown_table(report["rows"], COLUMNS),
            markdown_table(
                report["targets"],
                (("target", "target (verified run)"), ("measured", "measured"), ("met", "met")),
            ),
            "The service's verification counters (`GetCacheStats`):\n\n" + counters,
            "Learning curve: `docs/bench/stream.png`.",
        ]
    )
