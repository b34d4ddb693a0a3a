"""Issue 13's speed targets, each benchmark that checks them run several times in turn.

    semcache bench targets [--runs 3] [--with-peers] [--args NAME=ARGS ...] --out DIR

One run of a benchmark says little on a shared machine: a target's ratio
moves by a few hundredths from one run to the next, and the floors it is
measured against drift within the hour. This command runs `latency`,
`overhead`, `load` (unary, at concurrency 1 and 64: the phases its targets
read) and, with `--with-peers`, `peers`, each as its own `semcache bench`
process starting its own service, one after the other, and that round
`--runs` times: every benchmark's runs are spread over the same stretch of
time. It writes `targets.json` / `targets.md`: each target's figure in
every run, how many runs met it, and each run's floors (the gRPC health
check's round trip and one embedding, at concurrency 1), so the README's
ranges come from this command and not from runs kept by hand.

`--args NAME=ARGS` adds arguments to one benchmark's command line, after
its defaults here (`--args "load=--requests 500"`). `--data` and
`--embedding-backend` go to every one. The benchmarks' own reports are not
kept; run one alone with `--out` for its full tables.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.floors import health_of
from benchmarks.procs import CLI
from benchmarks.report import Row, machine_note, markdown_table, progress, write_results

# Each benchmark's arguments here: `load` runs only the phases its targets read.
SUITE: dict[str, tuple[str, ...]] = {
    "latency": (),
    "overhead": (),
    "load": ("--modes", "unary", "--concurrency", "1", "64"),
    "peers": (),
}
# A bound that follows a run's own floor, as `overhead` writes it into a target's name.
_BOUND = re.compile(r"; ≤ ([0-9.]+) ms\)$")

FLOOR_COLUMNS = (
    ("run", "run"),
    ("benchmark", "benchmark"),
    ("health", "health check p50 ms, c=1"),
    ("embed", "embedding p50 ms"),
)
TARGET_COLUMNS = (("benchmark", "benchmark"), ("target", "target"))

Runner = Callable[[str, Sequence[str], Path], dict[str, Any]]


class BenchFailedError(RuntimeError):
    """A benchmark's process failed; its own message went to stderr."""


def run_bench(name: str, args: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """Run `semcache bench <name> <args> --out <out_dir>` as its own process; its report.

    Raises:
        BenchFailedError: the process exited with an error.
    """
    argv = [*CLI, "bench", name, *args, "--out", str(out_dir)]
    finished = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False)
    if finished.returncode != 0:
        raise BenchFailedError(f"`semcache bench {name}` failed (exit {finished.returncode})")
    report: dict[str, Any] = json.loads((out_dir / f"{name}.json").read_text(encoding="utf-8"))
    return report


def bench_args(
    names: Sequence[str], extra: Mapping[str, str], common: Sequence[str]
) -> dict[str, list[str]]:
    """Each benchmark's arguments: its defaults here, `common`, then its `--args` words.

    Raises:
        ValueError: `extra` names a benchmark this command does not run.
    """
    unknown = sorted(set(extra) - set(names))
    if unknown:
        raise ValueError(
            f"--args names {', '.join(unknown)}, which this run does not include"
            f" (it runs {', '.join(names)})"
        )
    return {name: [*SUITE[name], *common, *shlex.split(extra.get(name, ""))] for name in names}


def measure(
    runs: int, args: Mapping[str, Sequence[str]], runner: Runner = run_bench
) -> list[dict[str, Any]]:
    """`runs` rounds of every benchmark in `args`, in turn; what each run said of the
    targets and its floors."""
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="semcache-targets-") as scratch:
        for index in range(runs):
            one: dict[str, Any] = {}
            for name, words in args.items():
                progress(f"targets: run {index + 1} of {runs}: {name}")
                report = runner(name, words, Path(scratch) / f"{index}-{name}")
                one[name] = _kept(report)
            rounds.append(one)
    return rounds


def _kept(report: Mapping[str, Any]) -> dict[str, Any]:
    floors = report["floors"]
    return {
        "command": _without_out(report.get("command", "")),
        "machine": report.get("machine", ""),
        "health_p50_ms": health_of(floors, 1).get("health_p50_ms"),
        "embed_p50_ms": floors["embedder"].get("embed_p50_ms"),
        "targets": [
            {"target": row["target"], "measured": _measured(row), "met": bool(row["met"])}
            for row in report.get("targets") or []
        ],
    }


def _without_out(command: str) -> str:
    words = shlex.split(command)
    if "--out" in words:
        at = words.index("--out")
        del words[at : at + 2]
    return shlex.join(words)


def _measured(row: Mapping[str, Any]) -> float:
    value = row["measured"] if "measured" in row else row["peer_over_semcache"]
    return float(value)


def summarise(rounds: Sequence[Mapping[str, Any]]) -> list[Row]:
    """One row per target: its figure in each run (None where a run lacks it), the bound
    where the run set its own, how many runs met it, and the median."""
    rows: dict[tuple[str, str], Row] = {}
    for index, one in enumerate(rounds):
        for name, kept in one.items():
            for target in kept["targets"]:
                label = target["target"]
                key = (name, _BOUND.sub(")", label))
                row = rows.setdefault(
                    key,
                    {"benchmark": name, "target": key[1], "values": [None] * len(rounds),
                     "bounds": [None] * len(rounds), "met": [None] * len(rounds)},
                )  # fmt: skip
                bound = _BOUND.search(label)
                row["values"][index] = target["measured"]
                row["bounds"][index] = float(bound.group(1)) if bound else None
                row["met"][index] = target["met"]
    for row in rows.values():
        present = [value for value in row["values"] if value is not None]
        row["median"] = round(statistics.median(present), 3) if present else None
        row["met_runs"] = sum(1 for met in row["met"] if met)
    return list(rows.values())


def markdown(report: Mapping[str, Any]) -> str:
    """The report: the machine, the commands, each run's floors, every target in every run."""
    rounds = report["rounds"]
    runs = len(rounds)
    commands = "\n".join(
        f"- `{kept['command']}`" for kept in (rounds[0].values() if rounds else [])
    )
    floors = [
        {"run": index + 1, "benchmark": name, "health": kept["health_p50_ms"],
         "embed": kept["embed_p50_ms"]}
        for index, one in enumerate(rounds) for name, kept in one.items()
    ]  # fmt: skip
    table = [
        {"benchmark": row["benchmark"], "target": row["target"],
         **{f"run{i}": _figure(row, i) for i in range(runs)},
         "median": row["median"], "met": f"{row['met_runs']} of {runs}"}
        for row in report["targets"]
    ]  # fmt: skip
    run_columns = [(f"run{i}", f"run {i + 1}") for i in range(runs)]
    return "\n\n".join(
        [
            f"{report['machine']}. Each benchmark ran {runs} times, in turn with the others,"
            " each run starting its own service:",
            commands,
            "Floors, from each run:",
            markdown_table(floors, FLOOR_COLUMNS),
            "Targets: a figure is a ratio (×) or milliseconds, as its target says; a bound in"
            " brackets is the one that run's own embedding floor set.",
            markdown_table(
                table, [*TARGET_COLUMNS, *run_columns, ("median", "median"), ("met", "met")]
            ),
        ]
    )


def _figure(row: Mapping[str, Any], index: int) -> str:
    value = row["values"][index]
    if value is None:
        return "—"
    bound = row["bounds"][index]
    text = f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{text} (≤ {bound:.2f})" if bound is not None else text


def run(
    out_dir: Path, runs: int, args: Mapping[str, Sequence[str]], runner: Runner = run_bench
) -> str:
    """Run the rounds, write targets.json / targets.md under `out_dir`; the tables.

    Raises:
        BenchFailedError: one of the benchmarks failed.
    """
    machine = machine_note()
    rounds = measure(runs, args, runner)
    report: dict[str, Any] = {
        "machine": machine,
        "benchmarks": {name: list(words) for name, words in args.items()},
        "rounds": rounds,
        "targets": summarise(rounds),
    }
    table = markdown(report)
    write_results(out_dir, "targets", report, table)
    return table
