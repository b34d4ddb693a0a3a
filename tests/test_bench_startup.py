"""`semcache bench startup`: spawn to first SERVING health check, with its floors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.startup import (
    GRPC_FLOOR,
    free_port,
    import_costs,
    markdown,
    phases,
    time_to_serving,
)
from service.embedding.base import Embedder
from tests.conftest import REPO


def test_the_grpc_floor_is_timed_to_serving_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-c", GRPC_FLOOR, str(port)]

    serving_s, spawned_at = time_to_serving(argv, {}, port, tmp_path / "floor.log")

    assert serving_s > 0 and spawned_at > 0
    with pytest.raises(ConnectionRefusedError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", port), 1).close()


def test_a_process_that_exits_before_serving_is_an_error_not_a_hang(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "raise SystemExit(3)"]

    with pytest.raises(RuntimeError, match=r"exited \(3\) before serving"):
        time_to_serving(argv, {}, free_port(), tmp_path / "dead.log", timeout_s=60)


def test_phases_come_from_the_service_log(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    lines = [
        "not json",
        '{"event": "loading embedding model", "timestamp": "2026-01-01T00:00:10.500000Z"}',
        '{"event": "semcache serving", "timestamp": "2026-01-01T00:00:11.000000Z"}',
        '{"event": "semcache serving", "timestamp": "2026-01-01T00:00:19.000000Z"}',
    ]
    log.write_text("\n".join(lines))
    spawned_at = 1767225610.0  # 2026-01-01T00:00:10Z

    assert phases(log, spawned_at, 1.25) == {
        "before_model_s": 0.5,
        "model_to_serving_s": 0.5,
        "log_to_health_s": 0.25,
    }
    log.write_text(lines[1])
    assert phases(log, spawned_at, 1.0) == {}


def test_import_costs_add_self_time_per_top_level_package(tmp_path: Path) -> None:
    log = tmp_path / "importtime.log"
    log.write_text(
        "import time: self [us] | cumulative | imported package\n"
        "import time:      1000 |       1000 |     openai.types\n"
        "import time:       500 |       1500 |   openai\n"
        "import time:       200 |        200 | numpy\n"
        '{"event": "semcache serving"}\n'
    )

    costs = import_costs(log, top=1)

    assert costs == {"total_ms": 1.7, "packages": [{"package": "openai", "self_ms": 1.5}]}


def test_bench_startup_writes_its_results_with_floors_and_progress(
    tmp_path: Path, embedder: Embedder
) -> None:
    # `embedder` exported the ONNX file; the bench reads the cache from the settings.
    from tests.test_startup import serve_environment

    env = serve_environment(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "bench", "startup", "--runs", "1", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert "[bench] round 1/1: serve " in done.stderr
    report = json.loads((out / "startup.json").read_text())
    assert report["command"] == f"semcache bench startup --runs 1 --out {out}"
    assert [row["configuration"] for row in report["rows"]] == [
        "serve",
        "serve + HTTP door",
        "serve --simulate",
    ]
    assert all(row["x_floor"] > 0 and row["before_model_s"] > 0 for row in report["rows"])
    assert [row["configuration"] for row in report["floors"]] == [
        "python gRPC health server",
        "python -c pass",
    ]
    assert report["imports"]["packages"]
    assert markdown(report) in (out / "startup.md").read_text()


def test_each_round_starts_with_another(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Found from outside: every round ran the floors first, then the configurations in
    one fixed order, where the docstring says they take turns."""
    from benchmarks import startup
    from benchmarks.report import rotated

    order: list[str] = []
    monkeypatch.setattr(startup, "start_floor", lambda name, workdir: order.append(name))
    monkeypatch.setattr(startup, "start_service", lambda c, backend, workdir: order.append(c.name))
    floors = {name: [] for name in startup.FLOORS}
    starts = {c.name: [] for c in startup.CONFIGURATIONS}
    sides = len(startup.FLOORS) + len(startup.CONFIGURATIONS)
    firsts = []
    for turn in range(sides):
        startup._measure_round(tmp_path, None, floors, starts, turn)  # type: ignore[arg-type]
        firsts.append(order[-sides])
    assert sorted(firsts) == sorted(set(firsts)) and len(firsts) == sides
    assert rotated([1, 2, 3], 1) == [2, 3, 1] and rotated([1, 2, 3], 3) == [1, 2, 3]
