"""Shared helpers of the load, overhead, compare, GPTCache and scale benchmarks.

Percentiles, a Markdown table from rows, writing a result folder (JSON +
Markdown), bar and line plots, and a sampler of a process's CPU and memory.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

Row = dict[str, Any]


T = TypeVar("T")


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """`items` in the order of turn `turn`: each turn starts one further along, so over
    `len(items)` turns every item runs first, second, ... once (side-by-side runs)."""
    shift = turn % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-quantile (0-1) of `values` by linear interpolation; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean of a list of milliseconds, rounded to 0.001 ms."""
    return {
        "p50_ms": round(percentile(values_ms, 0.50), 3),
        "p95_ms": round(percentile(values_ms, 0.95), 3),
        "p99_ms": round(percentile(values_ms, 0.99), 3),
        "mean_ms": round(sum(values_ms) / len(values_ms), 3) if values_ms else 0.0,
    }


def markdown_table(rows: Sequence[Row], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of `rows`; `columns` are (key, header) pairs, numbers right-aligned."""
    header = "| " + " | ".join(title for _, title in columns) + " |"
    align = "|" + "|".join("---:" if _numeric(rows, key) else "---" for key, _ in columns) + "|"
    lines = [header, align]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key, "")) for key, _ in columns) + " |")
    return "\n".join(lines)


def _numeric(rows: Sequence[Row], key: str) -> bool:
    return any(
        isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool) for row in rows
    )


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The `semcache bench ...` command this process runs, as a user would type it."""
    words = list(sys.argv[1:] if argv is None else argv)
    if "bench" in words:
        words = words[words.index("bench") + 1 :]
    return "semcache bench " + shlex.join(words)


def service_env_note(env: Mapping[str, str], why: str = "") -> str:
    """The sentence a report gives the settings it started the service with ("" for
    none); `why`, when given, follows them in brackets."""
    if not env:
        return ""
    settings = ", ".join(f"`{k}={v}`" for k, v in env.items())
    return f" Service started with {settings}" + (f" ({why})" if why else "") + "."


def progress(message: str) -> None:
    """One progress line on stderr, so a long run shows it is alive."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def write_results(out_dir: Path, name: str, data: Mapping[str, Any], markdown: str) -> None:
    """Write `<name>.json` and `<name>.md` under `out_dir` (created if missing).

    The JSON gets the command line that produced it (`command`) and the code it ran
    (`code`: the commit, and whether the tree had uncommitted changes) unless it has them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"command": command_line(), "code": code_version(), **data}
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    header = f"Command: `{data['command']}` (code: {data['code']})"
    (out_dir / f"{name}.md").write_text(f"{header}\n\n{markdown}\n")


def setup_markdown(report: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    """A report of the common shape: its setup line, then one table row per row."""
    return f"{report['setup']}\n\n{markdown_table(report['rows'], columns)}"


def write_setup_report(
    out_dir: Path, name: str, setup: str, rows: list[Row], columns: Sequence[tuple[str, str]]
) -> str:
    """Write `<name>.json` / `.md` of the common shape (`setup`, `rows`); return the table."""
    report = {"setup": setup, "rows": rows}
    table = setup_markdown(report, columns)
    write_results(out_dir, name, report, table)
    return table


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_plot(
    path: Path,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    log_y: bool = False,
) -> None:
    """Grouped bars: one group per label in `groups`, one bar per series in each group."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(1, len(series))), 4.2))
    width = 0.8 / max(1, len(series))
    for index, (label, values) in enumerate(series.items()):
        offsets = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        axis.bar(offsets, values, width, label=label)
    axis.set_xticks(range(len(groups)), groups)
    _finish(fig, axis, path, title, ylabel, log_y)


def line_plot(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    log_x: bool = False,
    log_y: bool = False,
) -> None:
    """One line per series of (x, y) points."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6.4, 4.2))
    for label, points in series.items():
        axis.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    axis.set_xlabel(xlabel)
    if log_x:
        axis.set_xscale("log")
    _finish(fig, axis, path, title, ylabel, log_y)


def _finish(fig: Any, axis: Any, path: Path, title: str, ylabel: str, log_y: bool) -> None:
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    if log_y:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


@dataclass
class ResourceUsage:
    """CPU (percent of one core) and resident memory of a process over a window.

    The mean CPU is the process's CPU time over the window's wall time; the
    maximum is the busiest sampling interval. RSS counts memory-mapped file
    pages too (a store's mmapped segments); `private` is RSS less the shared,
    file-backed part: what the process alone holds.
    """

    cpu_mean_pct: float = 0.0
    cpu_max_pct: float = 0.0
    rss_mean_mib: float = 0.0
    rss_max_mib: float = 0.0
    private_max_mib: float = 0.0
    samples: int = 0

    def as_row(self) -> Row:
        if not self.samples:
            keys = ("cpu_mean_pct", "cpu_max_pct", "rss_mean_mib", "rss_max_mib", "private_max_mib")
            return dict.fromkeys(keys, "")
        return {
            "cpu_mean_pct": round(self.cpu_mean_pct, 1),
            "cpu_max_pct": round(self.cpu_max_pct, 1),
            "rss_mean_mib": round(self.rss_mean_mib, 1),
            "rss_max_mib": round(self.rss_max_mib, 1),
            "private_max_mib": round(self.private_max_mib, 1),
        }


@dataclass
class ProcessSampler:
    """Samples a process (by pid) with psutil on a background thread while in a `with` block.

    CPU is in percent of one core, so a process busy on two cores reads 200.
    Windows under `paused()` (a benchmark's own floor calls between requests)
    are left out of the mean CPU, both their CPU time and their wall time; the
    0.1 s samples behind the maximum and the memory figures still span them.
    """

    pid: int
    interval_s: float = 0.1
    _cpu: list[float] = field(default_factory=list)
    _rss: list[float] = field(default_factory=list)
    _private: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _process: Any = None
    _started: tuple[float, float] = (0.0, 0.0)
    _cpu_mean_pct: float = 0.0
    _paused: tuple[float, float] = (0.0, 0.0)  # wall s and CPU s left out so far

    def __enter__(self) -> ProcessSampler:
        import psutil

        process = self._process = psutil.Process(self.pid)
        process.cpu_percent(None)
        self._started = (time.perf_counter(), _cpu_s(process))
        self._thread = threading.Thread(target=self._loop, args=(process,), daemon=True)
        self._thread.start()
        return self

    def _loop(self, process: Any) -> None:
        import psutil

        stopped = False
        while not stopped:  # one last sample after the stop, so a short window gets one too
            stopped = self._stop.wait(self.interval_s)
            try:
                self._cpu.append(process.cpu_percent(None))
                memory = process.memory_info()
                self._rss.append(memory.rss / 2**20)
                self._private.append((memory.rss - memory.shared) / 2**20)
            except psutil.NoSuchProcess:  # the process ended; keep what was sampled
                return

    def __exit__(self, *_: object) -> None:
        import psutil

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        wall_s = time.perf_counter() - self._started[0] - self._paused[0]
        with contextlib.suppress(psutil.NoSuchProcess):
            cpu_s = _cpu_s(self._process) - self._started[1] - self._paused[1]
            self._cpu_mean_pct = 100 * cpu_s / wall_s if wall_s > 0 else 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the block's wall time and the process's CPU time meanwhile out of the mean."""
        import psutil

        started = (time.perf_counter(), _cpu_s(self._process))
        try:
            yield
        finally:
            with contextlib.suppress(psutil.NoSuchProcess):
                wall_s = time.perf_counter() - started[0]
                cpu_s = _cpu_s(self._process) - started[1]
                self._paused = (self._paused[0] + wall_s, self._paused[1] + cpu_s)

    def usage(self) -> ResourceUsage:
        if not self._cpu:
            return ResourceUsage()
        return ResourceUsage(
            cpu_mean_pct=self._cpu_mean_pct,
            cpu_max_pct=max(self._cpu),
            rss_mean_mib=sum(self._rss) / len(self._rss),
            rss_max_mib=max(self._rss),
            private_max_mib=max(self._private),
            samples=len(self._cpu),
        )


def _cpu_s(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` now, in MiB."""
    import psutil

    return float(psutil.Process(pid).memory_info().rss / 2**20)


def code_version() -> str:
    """The commit the benchmark ran ("abc1234", "abc1234 with uncommitted changes"), or
    "unknown" outside a git checkout (found from outside: results that predated the code
    they sat beside could not be told from current ones)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=7", "HEAD")
    if not commit:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "service", "benchmarks")
    return f"{commit} with uncommitted changes" if dirty else commit


def machine_note() -> str:
    """One line on the machine a result was taken on: cores, CPU model and int8 kernel
    family (the embedder's speed and vectors follow it), load average."""
    import os

    from service.embedding.cpu import cpu_model, int8_kernels

    load_1, load_5, _ = os.getloadavg()
    return (
        f"{os.cpu_count()} CPU cores ({cpu_model()}, int8 kernels {int8_kernels()});"
        f" load average {load_1:.1f} (1 min) / {load_5:.1f} (5 min)"
        f" at {time.strftime('%Y-%m-%d %H:%M:%S')}; the machine was shared with other work"
    )
