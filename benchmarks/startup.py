"""`semcache bench startup`: how long `semcache serve` takes to start serving.

Each run spawns a fresh process with a fresh data directory and measures the
wall time from spawning it to the first health check that answers SERVING
(`grpc.health.v1.Health/Check`, the probe Docker and Kubernetes use). The
poller tries to connect every 5 ms, then asks the health service with
wait-for-ready, so it adds a few ms at most. Three configurations and two
floors, run in turn within each round, the order turning from round to round,
so load from other processes falls on all alike:

* `serve`: an upstream configured (a closed port: nothing calls it while
  starting), the gRPC door only, every other setting at its default;
* `serve + HTTP door`: the same with `SEMCACHE_HTTP_PORT` set;
* `serve --simulate`: the quick start, the built-in simulator as upstream.

The ONNX file is cached and the files are in the page cache: one unmeasured
warm-up run of each configuration comes first (it exports the ONNX file if
the cache has none). A restart of a deployed service is this case.

Floors, spawned and polled the same way in every round: the smallest Python
gRPC server (`import grpc`, a grpc.aio server with the health service set to
SERVING; what any Python gRPC service pays before its own work), and the bare
interpreter (`python -c pass`, to exit). Each configuration is reported as a
ratio to the gRPC floor. The service's JSON log gives where its time goes:
up to "loading embedding model" (interpreter, imports, settings, key and TLS
checks, the simulator), from there to "semcache serving" (model, store, app,
doors), and from that line to the health check seen. One more run under
`python -X importtime` lists the packages whose imports cost the most.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.procs import free_port, stop
from benchmarks.report import (
    Row,
    machine_note,
    markdown_table,
    progress,
    rotated,
    write_results,
)

TIMEOUT_S = 120.0
WARMUP_TIMEOUT_S = 600.0
_POLL_S = 0.005
_UPSTREAM = "http://127.0.0.1:9/v1"  # discard port: the start-up /models probe is refused
_CLI = ("-m", "service.cli", "serve")
# The floor: the least a Python gRPC service does before answering SERVING.
GRPC_FLOOR = """
import asyncio, sys
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()

asyncio.run(main())
"""
_UPSTREAM_KEYS = ("SEMCACHE_UPSTREAM_BASE_URL", "OPENAI_BASE_URL")


@dataclass(frozen=True)
class Configuration:
    """One way of starting the service: extra arguments and settings."""

    name: str
    args: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    http_door: bool = False


CONFIGURATIONS = (
    Configuration("serve", settings={"SEMCACHE_UPSTREAM_BASE_URL": _UPSTREAM}),
    Configuration(
        "serve + HTTP door", settings={"SEMCACHE_UPSTREAM_BASE_URL": _UPSTREAM}, http_door=True
    ),
    Configuration("serve --simulate", args=("--simulate",)),
)
FLOORS = ("python gRPC health server", "python -c pass")


@dataclass
class Run:
    """One measured start: seconds to SERVING and, for the service, its phases."""

    serving_s: float
    phases: dict[str, float] = field(default_factory=dict)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process exited ({process.returncode}) before serving")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(_POLL_S)
    raise TimeoutError(f"nothing listened on port {port} in time")


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the process exited ({process.returncode}) before serving")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(_POLL_S)
    raise TimeoutError(f"127.0.0.1:{port} was not SERVING in time")


def time_to_serving(
    argv: Sequence[str], env: dict[str, str], port: int, log: Path, timeout_s: float = TIMEOUT_S
) -> tuple[float, float]:
    """Spawn `argv`; seconds from spawn to its first SERVING health check on `port`,
    and the wall-clock time (epoch s) of the spawn. The process is stopped after.

    Raises:
        RuntimeError: the process exited first (its output is in `log`).
        TimeoutError: it was not serving within `timeout_s`.
    """
    with log.open("wb") as handle:
        spawned_at = time.time()
        started = time.monotonic()
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = started + timeout_s
        _wait_for_port(port, process, deadline)
        _wait_until_serving(port, process, deadline)
        return time.monotonic() - started, spawned_at
    finally:
        stop(process, timeout_s=30.0)


def time_to_exit(argv: Sequence[str]) -> float:
    """Seconds from spawning `argv` to its exit."""
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def _log_times(log: Path) -> dict[str, float]:
    """Epoch seconds of the first log line of each event in a JSON log."""
    times: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            stamp = datetime.datetime.fromisoformat(entry["timestamp"]).timestamp()
            times.setdefault(str(entry["event"]), stamp)
    return times


def phases(log: Path, spawned_at: float, serving_s: float) -> dict[str, float]:
    """Where a start's time went, from the service's log (empty if a line is missing)."""
    times = _log_times(log)
    loading, serving = times.get("loading embedding model"), times.get("semcache serving")
    if loading is None or serving is None:
        return {}
    return {
        "before_model_s": round(loading - spawned_at, 3),
        "model_to_serving_s": round(serving - loading, 3),
        "log_to_health_s": round(spawned_at + serving_s - serving, 3),
    }


def service_env(
    backend: str | None, data_dir: Path, configuration: Configuration
) -> dict[str, str]:
    """The caller's environment for one start: JSON logs, fresh data, free ports."""
    env = {k: v for k, v in os.environ.items() if k not in _UPSTREAM_KEYS}
    env.update(
        PYTHONUNBUFFERED="1",
        SEMCACHE_DATA_DIR=str(data_dir),
        SEMCACHE_GRPC_PORT=str(free_port()),
        SEMCACHE_LOG_FORMAT="json",
        SEMCACHE_LOG_LEVEL="info",
        **configuration.settings,
    )
    env.pop("SEMCACHE_METRICS_PORT", None)
    env.pop("SEMCACHE_HTTP_PORT", None)
    if configuration.http_door:
        env["SEMCACHE_HTTP_PORT"] = str(free_port())
    if backend:
        env["SEMCACHE_EMBEDDING_BACKEND"] = backend
    return env


def start_service(
    configuration: Configuration,
    backend: str | None,
    workdir: Path,
    python_flags: Sequence[str] = (),
    timeout_s: float = TIMEOUT_S,
) -> Run:
    """Start the service once as `configuration` says, in a fresh data directory."""
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
    env = service_env(backend, data_dir, configuration)
    argv = [sys.executable, *python_flags, *_CLI, *configuration.args]
    log = data_dir.with_suffix(".log")
    try:
        serving_s, spawned_at = time_to_serving(
            argv, env, int(env["SEMCACHE_GRPC_PORT"]), log, timeout_s
        )
    except (RuntimeError, TimeoutError) as error:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{configuration.name}: {error}; its log ends: {tail}") from None
    return Run(serving_s, phases(log, spawned_at, serving_s))


def start_floor(name: str, workdir: Path) -> Run:
    """One start of a floor process."""
    if name == FLOORS[1]:
        return Run(time_to_exit([sys.executable, "-c", "pass"]))
    port = free_port()
    argv = [sys.executable, "-c", GRPC_FLOOR, str(port)]
    serving_s, _ = time_to_serving(argv, dict(os.environ), port, workdir / "floor.log")
    return Run(serving_s)


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \| (\s*)(\S+)")


def import_costs(log: Path, top: int = 10) -> dict[str, Any]:
    """Self time per top-level package from a `-X importtime` log, the `top` costliest."""
    per_package: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            per_package[match.group(3).split(".")[0]] += int(match.group(1))
    return {
        "total_ms": round(sum(per_package.values()) / 1000, 1),
        "packages": [
            {"package": name, "self_ms": round(us / 1000, 1)}
            for name, us in per_package.most_common(top)
        ],
    }


def summarise(name: str, runs: Sequence[Run], floor_s: float | None) -> Row:
    """Median, min and max seconds to SERVING, the ratio to the floor, median phases."""
    times = [run.serving_s for run in runs]
    row: Row = {
        "configuration": name,
        "runs": len(times),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }
    if floor_s:
        row["x_floor"] = round(row["median_s"] / floor_s, 2)
    for key in sorted({key for run in runs for key in run.phases}):
        values = [run.phases[key] for run in runs if key in run.phases]
        row[key] = round(statistics.median(values), 3)
    return row


COLUMNS = [
    ("configuration", "start"),
    ("runs", "runs"),
    ("median_s", "median s"),
    ("min_s", "min s"),
    ("max_s", "max s"),
    ("x_floor", "× gRPC floor"),
    ("before_model_s", "to model load s"),
    ("model_to_serving_s", "model → serving s"),
    ("log_to_health_s", "log → health s"),
]
FLOOR_COLUMNS = COLUMNS[:5]
IMPORT_COLUMNS = [("package", "package"), ("self_ms", "import self time ms")]


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: the starts, the floors, the costliest imports."""
    imports = report["imports"]
    return "\n\n".join(
        [
            f"{report['setup']} {report['machine']}.",
            markdown_table(report["rows"], COLUMNS),
            "Floors, measured in the same rounds:\n\n"
            + markdown_table(report["floors"], FLOOR_COLUMNS),
            f"Imports of one `serve` start under `python -X importtime` (which inflates them):"
            f" {imports['total_ms']:,.0f} ms in all, the costliest packages:\n\n"
            + markdown_table(imports["packages"], IMPORT_COLUMNS),
        ]
    )


def _measure_round(
    workdir: Path,
    backend: str | None,
    floors: dict[str, list[Run]],
    starts: dict[str, list[Run]],
    turn: int = 0,
) -> None:
    """One start of each floor and configuration, in an order that turns with `turn`
    (the round's number: found from outside, the floors always went first)."""
    runs: list[tuple[str, Callable[[], Run]]] = [
        (name, functools.partial(start_floor, name, workdir)) for name in FLOORS
    ]
    runs += [
        (configuration.name, functools.partial(start_service, configuration, backend, workdir))
        for configuration in CONFIGURATIONS
    ]
    for name, start in rotated(runs, turn):
        (floors if name in FLOORS else starts)[name].append(start())


def _warm_up(workdir: Path, backend: str | None, say: Callable[[str], None]) -> None:
    say("warm-up: one unmeasured start of each (exports the ONNX file if it is not cached)")
    for configuration in CONFIGURATIONS:
        start_service(configuration, backend, workdir, timeout_s=WARMUP_TIMEOUT_S)
    start_floor(FLOORS[0], workdir)


def _importtime(workdir: Path, backend: str | None) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="importtime-", dir=workdir))
    configuration = CONFIGURATIONS[0]
    env = service_env(backend, data_dir, configuration)
    argv = [sys.executable, "-X", "importtime", *_CLI]
    log = workdir / "importtime.log"
    time_to_serving(argv, env, int(env["SEMCACHE_GRPC_PORT"]), log)
    return import_costs(log)


def run(out_dir: Path, runs: int, backend: str | None = None) -> str:
    """Measure `runs` rounds, write startup.json / startup.md under `out_dir`."""
    floors: dict[str, list[Run]] = {name: [] for name in FLOORS}
    starts: dict[str, list[Run]] = {c.name: [] for c in CONFIGURATIONS}
    with tempfile.TemporaryDirectory(prefix="semcache-startup-") as tmp:
        workdir = Path(tmp)
        _warm_up(workdir, backend, progress)
        for round_ in range(1, runs + 1):
            _measure_round(workdir, backend, floors, starts, turn=round_ - 1)
            latest = ", ".join(f"{name} {s[-1].serving_s:.2f} s" for name, s in starts.items())
            progress(f"round {round_}/{runs}: {latest}")
        progress("one more `serve` start under python -X importtime")
        imports = _importtime(workdir, backend)
    floor_rows = [summarise(name, floors[name], None) for name in FLOORS]
    floor_s = floor_rows[0]["median_s"]
    report: dict[str, Any] = {
        "setup": (
            f"Spawn to first SERVING health check, {runs} rounds of every start in turn,"
            f" a fresh data directory each, the ONNX file cached (embedding backend"
            f" {backend or os.environ.get('SEMCACHE_EMBEDDING_BACKEND', 'onnx-int8')})."
        ),
        "machine": machine_note(),
        "rows": [summarise(name, runs_, floor_s) for name, runs_ in starts.items()],
        "floors": floor_rows,
        "imports": imports,
    }
    table = markdown(report)
    write_results(out_dir, "startup", report, table)
    return table
