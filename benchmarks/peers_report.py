"""The tables of `semcache bench peers`: each (phase, gateway) row, semcache beside the peer.

Kept apart from `benchmarks.peers` (which starts processes and sends calls):
`semcache bench readme` renders a results file with this module's `markdown`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from benchmarks.floors import floors_markdown, health_of, ratio
from benchmarks.load import Sample
from benchmarks.report import Row, latency_summary, markdown_table, service_env_note

SEMCACHE_DOORS = ("semcache gRPC", "semcache HTTP")
DIRECT = "direct to the simulator"
# phase key -> (label, outcome every cache gateway must give, is it sequential)
PHASES = {
    "bypass": ("bypassed call", "bypass", True),
    "miss": ("miss", "miss", True),
    "exact_hit_c1": ("exact hit", "exact_hit", True),
    "exact_hit_cN": ("exact hit", "exact_hit", False),
}


class HasPid(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...


@dataclass
class PhaseTally:
    """What every gateway saw in one phase: samples in prompt order, wall time, CPU.

    CPU is the process's: when gateways share a process (semcache's two doors)
    in one window, each is given the process's CPU and all their requests.
    """

    samples: dict[str, list[Sample]]
    wall_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_requests: dict[str, int] = field(default_factory=dict)
    cpu_shared: dict[str, bool] = field(default_factory=dict)

    def add_cpu(
        self,
        gateways: Sequence[HasPid],
        before: Mapping[int, float],
        after: Mapping[int, float],
        served: Mapping[str, int],
    ) -> None:
        """Add each process's CPU between `before` and `after`, over the requests it served."""
        for pid in {g.pid for g in gateways if g.pid is not None}:
            group = [g for g in gateways if g.pid == pid]
            requests = sum(served[g.name] for g in group)
            for gateway in group:
                name = gateway.name
                self.cpu_s[name] = self.cpu_s.get(name, 0.0) + after[pid] - before[pid]
                self.cpu_requests[name] = self.cpu_requests.get(name, 0) + requests
                self.cpu_shared[name] = len(group) > 1


def _expected(phase: str, gateway: str) -> str:
    return "direct" if gateway == DIRECT else PHASES[phase][1]


def _kept(samples: Sequence[Sample], expected: str) -> list[int]:
    return [i for i, sample in enumerate(samples) if sample.outcome == expected]


def _added_ms(tally: PhaseTally, gateway: str, phase: str) -> float | str:
    """Median over prompts of (gateway − direct) round trip, over the prompts every
    gateway answered as expected (found from outside: semcache's semantic hits were left
    out of its misses while the peer kept all of its own); "" if none."""
    mine, direct = tally.samples[gateway], tally.samples.get(DIRECT, [])
    if not direct or gateway == DIRECT:
        return ""
    everyone = set(range(len(direct)))
    for name, samples in tally.samples.items():
        everyone &= set(_kept(samples, _expected(phase, name)))
    diffs = [mine[i].round_trip_ms - direct[i].round_trip_ms for i in sorted(everyone)]
    return round(statistics.median(diffs), 3) if diffs else ""


def phase_row(phase: str, gateway: str, tally: PhaseTally, concurrency: int) -> Row:
    """One gateway in one phase: latency, added latency, hits/s, CPU per 1,000 requests."""
    samples, expected = tally.samples[gateway], _expected(phase, gateway)
    kept = [samples[i].round_trip_ms for i in _kept(samples, expected)]
    wall_s = tally.wall_s.get(gateway, 0.0)
    cpu_requests = tally.cpu_requests.get(gateway, 0)
    return {
        "phase": phase,
        "what": PHASES[phase][0],
        "gateway": gateway,
        "concurrency": concurrency,
        "requests": len(samples),
        "left_out": len(samples) - len(kept),
        "left_out_as": dict(Counter(s.outcome for s in samples if s.outcome != expected)),
        **latency_summary(kept),
        "added_ms": _added_ms(tally, gateway, phase),
        "per_s": round(len(kept) / wall_s, 1) if wall_s else "",
        "cpu_s_per_1k": round(1000 * tally.cpu_s[gateway] / cpu_requests, 3)
        if cpu_requests
        else "",
        "cpu_scope": ("process, both doors" if tally.cpu_shared.get(gateway) else "alone")
        if cpu_requests
        else "",
    }


def phase_rows(
    phases: Mapping[str, PhaseTally], concurrency: int, floors: dict[str, Any]
) -> list[Row]:
    """Every (phase, gateway) row, with ratios to the health floor at its concurrency."""
    rows: list[Row] = []
    for phase, tally in phases.items():
        c = 1 if PHASES[phase][2] else concurrency
        health = health_of(floors, c)
        for gateway in tally.samples:
            row = phase_row(phase, gateway, tally, c)
            row["x_health_p50"] = ratio(row["p50_ms"], health.get("health_p50_ms"))
            row["x_health_rps"] = ratio(row["per_s"], health.get("health_rps"))
            rows.append(row)
    return rows


def _find(rows: Sequence[Row], phase: str, gateway: str) -> Row:
    return next((r for r in rows if (r["phase"], r["gateway"]) == (phase, gateway)), {})


# metric label -> (phase, row key); lower is better unless the key is per_s
METRICS = (
    ("added latency, bypassed call (paired median ms)", "bypass", "added_ms"),
    ("added latency, miss (paired median ms)", "miss", "added_ms"),
    ("exact hit p50 ms, c=1", "exact_hit_c1", "p50_ms"),
    ("exact hits/s, c=N", "exact_hit_cN", "per_s"),
    ("CPU s per 1,000 exact hits, c=N", "exact_hit_cN", "cpu_s_per_1k"),
    ("CPU s per 1,000 exact hits, c=1 (semcache: both doors)", "exact_hit_c1", "cpu_s_per_1k"),
    ("CPU s per 1,000 bypassed calls (semcache: both doors)", "bypass", "cpu_s_per_1k"),
    ("CPU s per 1,000 misses (semcache: both doors)", "miss", "cpu_s_per_1k"),
)


def comparison(rows: Sequence[Row], peer: str, concurrency: int) -> list[Row]:
    """Each headline figure for both semcache doors and the peer, and semcache ÷ peer."""
    out: list[Row] = []
    for label, phase, key in METRICS:
        peer_value = _find(rows, phase, peer).get(key, "")
        row: Row = {"metric": label.replace("c=N", f"c={concurrency}"), "peer": peer_value}
        for door, column in zip(SEMCACHE_DOORS, ("grpc", "http"), strict=True):
            row[column] = _find(rows, phase, door).get(key, "")
            row[f"{column}_over_peer"] = ratio(row[column], peer_value)
        out.append(row)
    return out


def targets(rows: Sequence[Row], peer: str) -> list[Row]:
    """≥ 5× lower exact-hit p50 at c=1 and ≥ 10× lower added latency on a bypassed call."""
    out: list[Row] = []
    for label, phase, key, times in (
        ("exact hit p50 at c=1", "exact_hit_c1", "p50_ms", 5.0),
        ("added latency on a bypassed call", "bypass", "added_ms", 10.0),
    ):
        peer_value = _find(rows, phase, peer).get(key, "")
        for door in SEMCACHE_DOORS:
            lower_by = ratio(peer_value, _find(rows, phase, door).get(key, ""))
            out.append(
                {
                    "target": f"{door}: {label} ≥ {times:g}× lower than the peer's",
                    "peer_over_semcache": lower_by,
                    "met": isinstance(lower_by, float) and lower_by >= times,
                }
            )
    return out


def build_report(
    phases: Mapping[str, PhaseTally],
    floors: dict[str, Any],
    config: dict[str, Any],
    gateways: list[dict[str, Any]],
    peer: str,
) -> dict[str, Any]:
    """The results file's content (without the command line and the machine note)."""
    rows = phase_rows(phases, config["concurrency"], floors)
    return {
        "peer": peer,
        "config": config,
        "gateways": gateways,
        "floors": floors,
        "rows": rows,
        "comparison": comparison(rows, peer, config["concurrency"]),
        "targets": targets(rows, peer),
    }


ROW_COLUMNS = (
    ("what", "phase"),
    ("gateway", "gateway"),
    ("concurrency", "in flight"),
    ("requests", "requests"),
    ("left_out", "left out"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("added_ms", "added over direct ms"),
    ("per_s", "hits/s"),
    ("cpu_s_per_1k", "CPU s / 1,000"),
    ("cpu_scope", "CPU of"),
    ("x_health_p50", "p50 ÷ health p50"),
    ("x_health_rps", "hits/s ÷ health/s"),
)
COMPARISON_COLUMNS = (
    ("metric", "figure"),
    ("grpc", "semcache gRPC"),
    ("http", "semcache HTTP"),
    ("peer", "peer"),
    ("grpc_over_peer", "gRPC ÷ peer"),
    ("http_over_peer", "HTTP ÷ peer"),
)
TARGET_COLUMNS = (("target", "target"), ("peer_over_semcache", "peer ÷ semcache"), ("met", "met"))


# Why the report states the memo setting it starts semcache with.
_MEMO_OFF_WHY = (
    "its two doors share one process, and the embedding memo would let the second"
    " door asked about a miss reuse the first's embedding"
)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: setup, floors, every row, semcache beside the peer, targets."""
    config = report["config"]
    return "\n\n".join(
        [
            f"Peer: {report['peer']}. semcache embedding backend {report['embedding_backend']}."
            f" {config['requests']} calls per gateway in each sequential phase,"
            f" {config['hit_set']} distinct exact hits, {config['hit_requests']} per gateway at"
            f" c={config['concurrency']} in {config['rounds']} alternating blocks;"
            f" {config['warmup']} warm-up calls each. {report['machine']}."
            + service_env_note(report.get("service_env") or {}, _MEMO_OFF_WHY),
            floors_markdown(
                report["floors"],
                "at concurrency 1 call by call, after each question's calls; at the hit"
                " concurrency in bursts between its blocks",
            ),
            markdown_table(report["rows"], ROW_COLUMNS),
            markdown_table(report["comparison"], COMPARISON_COLUMNS),
            markdown_table(report["targets"], TARGET_COLUMNS),
        ]
    )
