"""`semcache bench targets`: every target's figure in every run, from the benchmarks' own reports.

The benchmarks themselves are replaced by reports written here (they are
tested in test_bench_smoke.py); no timing is asserted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks.targets import SUITE, bench_args, markdown, run
from tests.conftest import run_bench_cli

REPO = Path(__file__).resolve().parent.parent
MISS = "semcache_miss adds ≤ one embedding p50 + 2 ms"


def _report(name: str, run_index: int) -> dict[str, Any]:
    """What `semcache bench <name>` writes, cut to what the targets read."""
    health = [{"concurrency": 64, "health_p50_ms": 9.0}, {"concurrency": 1, "health_p50_ms": 0.5}]
    floors = {"health": health, "embedder": {"embed_p50_ms": 2.0 + run_index}}
    targets: dict[str, list[dict[str, Any]]] = {
        "latency": [
            {"target": "exact hit p50 ≤ 1.15× health p50", "measured": [1.1, 1.2][run_index],
             "met": run_index == 0},
        ],
        "overhead": [
            {"target": f"{MISS} (unary; ≤ {4 + run_index:.2f} ms)", "measured": 4.5,
             "met": run_index == 1},
        ],
        "peers": [
            {"target": "semcache gRPC: exact hit p50 at c=1 ≥ 5× lower than the peer's",
             "peer_over_semcache": 6.0 + run_index, "met": True},
        ],
    }  # fmt: skip
    return {
        "command": f"semcache bench {name} --pairs 7 --out /tmp/x{run_index}",
        "machine": "2 CPU cores",
        "floors": floors,
        "targets": targets[name],
    }


class _Benchmarks:
    """Stands in for the benchmarks' processes: notes each call, returns a report."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, name: str, args: Sequence[str], out_dir: Path) -> dict[str, Any]:
        runs_so_far = sum(1 for called, _ in self.calls if called == name)
        self.calls.append((name, list(args)))
        return _report(name, runs_so_far)


def test_each_round_runs_every_benchmark_in_turn_and_each_target_keeps_every_run(
    tmp_path: Path,
) -> None:
    benchmarks = _Benchmarks()
    args = {"latency": ["--pairs", "7"], "overhead": [], "peers": []}

    table = run(tmp_path, 2, args, benchmarks)

    assert [name for name, _ in benchmarks.calls] == ["latency", "overhead", "peers"] * 2
    assert benchmarks.calls[0] == ("latency", ["--pairs", "7"])
    report = json.loads((tmp_path / "targets.json").read_text())
    by_name = {row["benchmark"]: row for row in report["targets"]}
    assert by_name["latency"]["values"] == [1.1, 1.2]
    assert by_name["latency"]["met"] == [True, False] and by_name["latency"]["met_runs"] == 1
    assert by_name["latency"]["median"] == 1.15
    # overhead's bound follows its run's floor: one target, its bound kept per run
    assert by_name["overhead"]["target"] == f"{MISS} (unary)"
    assert by_name["overhead"]["bounds"] == [4.0, 5.0]
    assert by_name["peers"]["values"] == [6.0, 7.0]
    assert report["rounds"][1]["latency"]["embed_p50_ms"] == 3.0
    assert report["rounds"][0]["latency"]["health_p50_ms"] == 0.5  # the c=1 floor
    assert report["rounds"][0]["latency"]["command"] == "semcache bench latency --pairs 7"
    assert f"| overhead | {MISS} (unary) | 4.500 (≤ 4.00) | 4.500 (≤ 5.00) | 4.500 |" in table
    assert "| 1 of 2 |" in table and "| 2 of 2 |" in table
    assert table == markdown(report)


def test_a_target_a_run_lacks_shows_a_dash(tmp_path: Path) -> None:
    def runner(name: str, args: Sequence[str], out_dir: Path) -> dict[str, Any]:
        report = _report(name, 0)
        if out_dir.name.startswith("1-"):
            report["targets"] = []
        return report

    table = run(tmp_path, 2, {"latency": []}, runner)

    assert "| latency | exact hit p50 ≤ 1.15× health p50 | 1.100 | — | 1.100 | 1 of 2 |" in table


def test_arguments_are_the_defaults_then_the_common_ones_then_each_benchmarks_own() -> None:
    args = bench_args(["latency", "load"], {"load": " --requests 500"}, ["--data", "q.jsonl"])

    assert args["latency"] == ["--data", "q.jsonl"]
    assert args["load"] == [*SUITE["load"], "--data", "q.jsonl", "--requests", "500"]
    with pytest.raises(ValueError, match="peers"):
        bench_args(["latency"], {"peers": "--rounds 2"}, [])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--args", "load"], "NAME=ARGS"),
        (["--args", "peers=--rounds 2"], "does not include"),
        (["--runs", "0"], "at least 1"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    result = run_bench_cli("targets", *args, "--out", str(tmp_path))

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert says in result.stderr


def test_a_benchmark_that_fails_stops_the_run_with_its_reason_and_no_traceback(
    tmp_path: Path,
) -> None:
    result = run_bench_cli(
        "targets",
        "--runs",
        "2",
        "--out",
        str(tmp_path),
        env={"SEMCACHE_BENCH_DATA_DIR": str(tmp_path)},
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "qqp_dev.jsonl" in result.stderr  # the benchmark's own one line
    assert "semcache bench targets: `semcache bench latency` failed (exit 1)" in result.stderr
    assert not (tmp_path / "targets.json").exists()
