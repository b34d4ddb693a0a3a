"""Two services side by side: the defaults, and the same with some settings changed.

    semcache bench ab --setting NAME=VALUE [--setting ...] [--pairs 200] [--rounds 2]

Side A starts with the benchmark's settings (`--embedding-backend`,
`--error-budget`), side B with the same plus each `--setting`; each has its
own simulator (zero latency) and an empty store, and both run side by side,
so the machine's noise falls on both. The pairs are dealt out over `--rounds`
rounds, each with two fresh services, the side started first alternating
round by round: with the same settings on both sides, the service started
second read faster, so one round alone would credit B with it. Questions come from
qqp_dev.jsonl as in `bench latency`: each duplicate pair's `a` is asked (a
miss), asked again (an exact hit), then `b` (a semantic hit when accepted),
at concurrency 1, one side's three calls then the other's, the side going
first turning pair by pair; after each pair, one gRPC health check on each
side's channel, in the same order.

Each side's rows give every outcome's round trip and in-service p50, and the
p50 as a ratio to that side's own health check. The B − A column is paired: the
median, over the calls both sides answered with the same outcome, of B's round
trip minus A's for the same question.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.data import data_file
from benchmarks.floors import ratio
from benchmarks.latency import STATUS_NAMES, load_pairs
from benchmarks.procs import run_stack
from benchmarks.report import (
    Row,
    machine_note,
    markdown_table,
    percentile,
    progress,
    rotated,
    service_env_note,
    write_results,
)
from service._proto.semcache.v1 import semcache_pb2 as pb
from service._proto.semcache.v1 import semcache_pb2_grpc as pb_grpc

SIDES = ("A", "B")
PROGRESS_EVERY = 25


class SettingError(ValueError):
    """A `--setting` that is not NAME=VALUE with NAME one of the service's settings."""


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """`--setting NAME=VALUE` arguments as a dict.

    Raises:
        SettingError: one is not NAME=VALUE, or NAME is no `SEMCACHE_` setting.
    """
    from service.config import Settings

    known = {f"SEMCACHE_{name.upper()}" for name in Settings.model_fields}
    settings: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SettingError(f"--setting {pair!r}: give NAME=VALUE, e.g. SEMCACHE_TTL_S=60")
        if name not in known:
            raise SettingError(
                f"--setting {name}: not a setting of the service (see the README's settings"
                " table; names start with SEMCACHE_)"
            )
        settings[name] = value
    if not settings:
        raise SettingError("give at least one --setting NAME=VALUE for side B")
    return settings


@dataclass
class Side:
    """One side's calls: outcome and round trip for each, in asking order."""

    outcomes: list[str] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)
    service_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)

    def ask(self, stub: pb_grpc.SemanticCacheServiceStub, text: str) -> None:
        started = time.perf_counter()
        response = stub.Complete(pb.CompleteRequest(prompt=text), timeout=30)
        self.round_trip_ms.append((time.perf_counter() - started) * 1000)
        self.outcomes.append(STATUS_NAMES.get(response.cache_status, "other"))
        self.service_ms.append(response.latency_ms)

    def check(self, health: health_pb2_grpc.HealthStub) -> None:
        started = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        self.health_ms.append((time.perf_counter() - started) * 1000)


def measure(targets: dict[str, str], pairs: list[tuple[str, str]], sides: dict[str, Side]) -> None:
    """Every pair's three calls on each side, then a health check on each, into
    `sides`; the side going first turns pair by pair."""
    with contextlib.ExitStack() as stack:
        channels = {n: stack.enter_context(grpc.insecure_channel(t)) for n, t in targets.items()}
        stubs = {n: pb_grpc.SemanticCacheServiceStub(c) for n, c in channels.items()}
        health = {n: health_pb2_grpc.HealthStub(c) for n, c in channels.items()}
        for name in sides:  # the same warm-up for both, left out of the figures
            warm = Side()
            for text in ("warm-up question one", "warm-up question one", "warm-up two"):
                warm.ask(stubs[name], text)
            warm.check(health[name])
        for done, (a, b) in enumerate(pairs, start=1):
            order = rotated(list(targets), done)
            for name in order:
                for text in (a, a, b):
                    sides[name].ask(stubs[name], text)
            for name in order:
                sides[name].check(health[name])
            if done % PROGRESS_EVERY == 0 or done == len(pairs):
                progress(f"ab: {done}/{len(pairs)} pairs of this round")


def summarise(sides: dict[str, Side]) -> list[Row]:
    """One row per side and outcome, with B − A paired over the calls alike."""
    a, b = sides["A"], sides["B"]
    rows: list[Row] = []
    for outcome in sorted(set(a.outcomes) | set(b.outcomes)):
        alike = [
            b.round_trip_ms[i] - a.round_trip_ms[i]
            for i, (x, y) in enumerate(zip(a.outcomes, b.outcomes, strict=True))
            if x == y == outcome
        ]
        for name, side in sides.items():
            rows.append(_row(name, outcome, side, alike))
    return rows


def _row(name: str, outcome: str, side: Side, alike: list[float]) -> Row:
    taken = [i for i, o in enumerate(side.outcomes) if o == outcome]
    if not taken:
        return {"side": name, "outcome": outcome, "count": 0}
    round_trips = [side.round_trip_ms[i] for i in taken]
    p50 = round(statistics.median(round_trips), 3)
    row: Row = {
        "side": name,
        "outcome": outcome,
        "count": len(taken),
        "p50_ms": p50,
        "p95_ms": round(percentile(round_trips, 0.95), 3),
        "service_p50_ms": round(statistics.median(side.service_ms[i] for i in taken), 3),
        "x_health_p50": ratio(p50, statistics.median(side.health_ms)),
        "alike": len(alike),
    }
    if name == "B" and alike:
        row["b_minus_a_ms"] = round(statistics.median(alike), 3)
    return row


def health_rows(sides: dict[str, Side]) -> list[Row]:
    """Each side's own health-check floor."""
    return [
        {
            "side": name,
            "checks": len(side.health_ms),
            "p50_ms": round(statistics.median(side.health_ms), 3),
            "p95_ms": round(percentile(side.health_ms, 0.95), 3),
        }
        for name, side in sides.items()
    ]


COLUMNS = (
    ("side", "side"),
    ("outcome", "outcome"),
    ("count", "calls"),
    ("p50_ms", "round trip p50 ms"),
    ("p95_ms", "round trip p95 ms"),
    ("service_p50_ms", "in service p50 ms"),
    ("x_health_p50", "p50 ÷ own health p50"),
    ("alike", "calls alike on both sides"),
    ("b_minus_a_ms", "B − A, paired median ms"),
)
HEALTH_COLUMNS = (
    ("side", "side"),
    ("checks", "health checks"),
    ("p50_ms", "round trip p50 ms"),
    ("p95_ms", "round trip p95 ms"),
)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: what each side ran with, their floors, their outcomes."""
    changed = ", ".join(f"`{k}={v}`" for k, v in report["settings_b"].items())
    return "\n\n".join(
        [
            f"Embedding backend: {report['embedding_backend']}. {report['machine']}."
            + service_env_note(report.get("service_env") or {}, "both sides")
            + f" Side B also with {changed}. {report['pairs']} duplicate pairs over"
            f" {report['rounds']} rounds of two fresh services (the side started first"
            " alternating), each pair asked on both sides at concurrency 1, the side going"
            " first turning pair by pair.",
            "Floors, one health check on each side after each pair:\n\n"
            + markdown_table(report["health"], HEALTH_COLUMNS),
            markdown_table(report["rows"], COLUMNS),
        ]
    )


def run(
    out_dir: Path,
    settings_b: dict[str, str],
    pairs: int,
    data: Path | None,
    env: dict[str, str],
    rounds: int = 2,
) -> str:
    """Measure, write ab.json and ab.md under `out_dir`, return the tables.

    Raises:
        MissingDataError: the qqp-style data file is not there.
        ServiceExited: a side's service did not start (e.g. a value it refuses).
    """
    questions = load_pairs(data_file(data), pairs)
    sides = {name: Side() for name in SIDES}
    for turn in range(rounds):
        chunk = questions[turn::rounds]
        progress(f"ab: round {turn + 1} of {rounds}, {rotated(SIDES, turn)[0]} started first")
        with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
            targets = {}
            for name in rotated(SIDES, turn):
                side_env = {**env, **(settings_b if name == "B" else {})}
                where = Path(workdir) / name
                where.mkdir()
                targets[name] = stack.enter_context(run_stack(where, extra_env=side_env)).target
            measure(targets, chunk, sides)
    report: dict[str, Any] = {
        "embedding_backend": env.get("SEMCACHE_EMBEDDING_BACKEND", "onnx-int8"),
        "service_env": dict(sorted(env.items())),
        "settings_b": settings_b,
        "pairs": len(questions),
        "rounds": rounds,
        "machine": machine_note(),
        "health": health_rows(sides),
        "rows": summarise(sides),
    }
    table = markdown(report)
    write_results(out_dir, "ab", report, table)
    return table
