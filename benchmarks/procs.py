"""Start the simulator and the service as separate processes, as a user would run them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CLI = (sys.executable, "-m", "service.cli")  # the `semcache` command, as this interpreter runs it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s} s")


def wait_until_serving(
    target: str, timeout_s: float = 120.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until the gRPC health service at `target` reports SERVING.

    Raises:
        TimeoutError: it did not within `timeout_s`.
        ServiceExited: `process` (the service) ended first.
    """
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise ServiceExited(f"semcache serve exited ({process.returncode}) before serving")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{target} was not SERVING within {timeout_s} s")


class ServiceExited(SystemExit):
    """The service process ended before it was serving.

    A `SystemExit` whose message is one line (the service's own last line, e.g. the
    setting it refused): the command prints it and exits with status 1, no traceback.
    """


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "(its log is empty)"


@dataclass
class Stack:
    """A simulator and a service, each in its own process."""

    target: str
    upstream_url: str
    service_pid: int


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT)


def embedding_memo_off(env: dict[str, str]) -> dict[str, str]:
    """`env` with the service's embedding memo off (`SEMCACHE_EMBEDDING_MEMO_SIZE=0`).

    The memo is keyed by text, so a benchmark that asks the same question twice on
    one service (two doors, or a unary then a streamed phase) would time the second
    ask without its embedding.
    """
    return {**env, "SEMCACHE_EMBEDDING_MEMO_SIZE": "0"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start_simulator(
    workdir: Path, ttft_ms: float, ms_per_token: float, simulator_args: tuple[str, ...]
) -> tuple[subprocess.Popen[bytes], int]:
    """`semcache simulate-upstream` started (not yet listening) in `workdir`; its port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["--port", str(port), "--ttft-ms", str(ttft_ms), "--ms-per-token", str(ms_per_token)]
    command = [*CLI, "simulate-upstream", *args, *simulator_args]
    return _spawn(command, _env(), workdir / "simulator.log"), port


def stop(*processes: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM to each still running, then SIGKILL to any not gone within `timeout_s`."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _upstream_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def run_simulator(
    workdir: Path,
    ttft_ms: float = 0.0,
    ms_per_token: float = 0.0,
    simulator_args: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run `semcache simulate-upstream` alone until the block ends; its base URL."""
    simulator, port = _start_simulator(workdir, ttft_ms, ms_per_token, simulator_args)
    try:
        _wait_for_port(port, 30)
        yield _upstream_url(port)
    finally:
        stop(simulator)


@contextlib.contextmanager
def run_stack(
    workdir: Path,
    ttft_ms: float = 0.0,
    ms_per_token: float = 0.0,
    extra_env: dict[str, str] | None = None,
    simulator_args: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """Run `semcache simulate-upstream`, then once it listens `semcache serve`, until the
    block ends (the service asks its providers at start-up whether they are the
    simulator, whose answers it caches only if so)."""
    simulator, sim_port = _start_simulator(workdir, ttft_ms, ms_per_token, simulator_args)
    try:
        _wait_for_port(sim_port, 30)
    except BaseException:
        stop(simulator)
        raise
    upstream = _upstream_url(sim_port)
    grpc_port = free_port()
    service_env = {
        **_env(),
        "SEMCACHE_GRPC_PORT": str(grpc_port),
        "SEMCACHE_DATA_DIR": str(workdir / "data"),
        "SEMCACHE_UPSTREAM_BASE_URL": upstream,
        "SEMCACHE_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    service = _spawn([*CLI, "serve"], service_env, workdir / "service.log")
    try:
        target = f"127.0.0.1:{grpc_port}"
        try:
            wait_until_serving(target, process=service)
        except ServiceExited as error:
            log = workdir / "service.log"
            raise ServiceExited(f"{error}; last line of {log}: {_last_line(log)}") from None
        yield Stack(target, upstream, service.pid)
    finally:
        stop(service, simulator)
