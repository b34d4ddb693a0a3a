"""Starting and stopping `semcache serve`: a busy port or data directory, bad
settings or files fail with one clear line and a non-zero exit, never a
traceback; SIGTERM drains the calls in flight, and a second signal stops at once.

Most tests run the real command in a subprocess, as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from semcache_client import AsyncSemcacheClient, SemcacheError
from semcache_simulator import SimulatorConfig, UpstreamSimulator
from semcache_simulator.config import FaultConfig
from service.embedding.base import Embedder
from service.errors import StartupError
from service.transport.grpc.server import start_server
from tests.conftest import MODEL_CACHE_DIR, REPO, Service

START_TIMEOUT_S = 120.0  # a cold start exports the model; a warm one takes seconds
UNREACHABLE_UPSTREAM = "http://127.0.0.1:9/v1"  # never called: these servers never serve


def serve_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without its SEMCACHE_*/OPENAI_* values, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "OPENAI_"))}
    env.update(
        PYTHONPATH=str(REPO),
        SEMCACHE_DATA_DIR=str(tmp_path / "data"),
        SEMCACHE_EMBEDDING_CACHE_DIR=str(MODEL_CACHE_DIR),
        SEMCACHE_GRPC_PORT="0",
        SEMCACHE_UPSTREAM_BASE_URL=UNREACHABLE_UPSTREAM,
        SEMCACHE_LOG_FORMAT="console",
    )
    env.update({f"SEMCACHE_{name.upper()}": value for name, value in settings.items()})
    return env


class Serve:
    """One `python -m service.cli serve` process and the stderr lines it wrote."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, env: dict[str, str]) -> Serve:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def wait_for(self, text: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """The first stderr line containing `text`; fails if the process ends first."""
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self._next_line()
                if line is None:
                    pytest.fail(f"serve ended before {text!r}:\n" + "\n".join(self.lines))
                if text in line:
                    return line

    async def finish(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """Read stderr to its end and return the exit status."""
        async with asyncio.timeout(timeout_s):
            while await self._next_line() is not None:
                pass
            return await self.process.wait()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def _next_line(self) -> str | None:
        assert self.process.stderr is not None
        raw = await self.process.stderr.readline()
        if not raw:
            return None
        self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        return self.lines[-1]

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@pytest_asyncio.fixture
async def serves() -> AsyncIterator[list[Serve]]:
    """Every serve process a test starts is killed at its end, whatever happened."""
    started: list[Serve] = []
    yield started
    for each in started:
        each.kill()
        await each.process.wait()


async def run_serve(serves: list[Serve], env: dict[str, str]) -> tuple[int, str]:
    serves.append(await Serve.start(env))
    status = await serves[-1].finish()
    return status, serves[-1].stderr


def assert_one_clear_line(status: int, stderr: str, *phrases: str) -> None:
    last = stderr.strip().splitlines()[-1]
    assert status == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert last.startswith("semcache serve: "), stderr
    for phrase in phrases:
        assert phrase in last, last


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


# --- a busy port (in process) ------------------------------------------------


@pytest.mark.parametrize("backend", ["qdrant-memory"])
async def test_a_second_server_on_a_busy_port_fails_to_start(service: Service) -> None:
    with pytest.raises(StartupError, match="address already in use") as refused:
        await start_server(service.app, "127.0.0.1", service.server.port)
    assert "SEMCACHE_GRPC_PORT" in str(refused.value)


@pytest.mark.parametrize("backend", ["qdrant-memory"])
async def test_a_port_another_program_holds_fails_to_start(
    service: Service, busy_port: int
) -> None:
    with pytest.raises(StartupError, match="address already in use"):
        await start_server(service.app, "127.0.0.1", busy_port)


# --- start-up failures of the real command ------------------------------------


def _bad_keys_file(tmp_path: Path) -> str:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [this is: not, a list of entries\n")
    return str(path)


FAST_FAILURES = {
    "an invalid setting": ({"similarity_min": "1.5"}, ("SEMCACHE_SIMILARITY_MIN", "1.5")),
    "two invalid settings": (
        {"grpc_port": "port", "log_level": "loud"},
        ("SEMCACHE_GRPC_PORT", "SEMCACHE_LOG_LEVEL"),
    ),
    "open mode on a public address": (
        {"grpc_host": "0.0.0.0"},
        ("without API keys", "SEMCACHE_API_KEYS_FILE"),
    ),
    "a missing keys file": (
        {"api_keys_file": "/nonexistent/keys.yaml"},
        ("/nonexistent/keys.yaml", "SEMCACHE_API_KEYS_FILE"),
    ),
    "a missing TLS file": (
        {"tls_cert_file": "/nonexistent/cert.pem", "tls_key_file": "/nonexistent/key.pem"},
        ("/nonexistent/key.pem",),
    ),
    "a Qdrant URL without a scheme": (
        {"qdrant_url": "qdrant:6333"},
        ("SEMCACHE_QDRANT_URL", "http://HOST:6333"),
    ),
    "a Qdrant URL with a port out of range": (
        {"qdrant_url": "http://127.0.0.1:99999"},
        ("SEMCACHE_QDRANT_URL", "65535"),
    ),
    "an upstream URL that is not one": (
        {"upstream_base_url": "notaurl"},
        ("SEMCACHE_UPSTREAM_BASE_URL", "http://"),
    ),
    "an upstream URL with a port out of range": (
        {"upstream_base_url": "http://127.0.0.1:99999/v1"},
        ("SEMCACHE_UPSTREAM_BASE_URL", "65535"),
    ),
    "a Redis URL that is not one": (
        {"rate_limit_redis_url": "notaurl"},
        ("SEMCACHE_RATE_LIMIT_REDIS_URL", "redis://HOST:6379/0"),
    ),
    "an infinite breaker cooldown": (
        {"breaker_cooldown_s": "inf"},
        ("SEMCACHE_BREAKER_COOLDOWN_S", "finite"),
    ),
    "a data directory that cannot be made": (
        {"data_dir": "/proc/semcache-data"},
        ("SEMCACHE_DATA_DIR",),
    ),
}


@pytest.mark.parametrize("case", sorted(FAST_FAILURES))
async def test_start_up_errors_are_one_clear_line(
    case: str, tmp_path: Path, serves: list[Serve]
) -> None:
    settings, phrases = FAST_FAILURES[case]
    status, stderr = await run_serve(serves, serve_environment(tmp_path, **settings))
    assert_one_clear_line(status, stderr, *phrases)


async def test_a_bad_keys_file_is_one_clear_line(tmp_path: Path, serves: list[Serve]) -> None:
    env = serve_environment(tmp_path, api_keys_file=_bad_keys_file(tmp_path))
    status, stderr = await run_serve(serves, env)
    assert_one_clear_line(status, stderr, "not valid YAML or JSON", "SEMCACHE_API_KEYS_FILE")


async def test_a_busy_port_is_one_clear_line(
    embedder: Embedder, busy_port: int, tmp_path: Path, serves: list[Serve]
) -> None:
    env = serve_environment(tmp_path, grpc_port=str(busy_port))
    status, stderr = await run_serve(serves, env)
    assert_one_clear_line(status, stderr, "address already in use", "SEMCACHE_GRPC_PORT")


async def test_a_busy_metrics_port_is_one_clear_line(
    embedder: Embedder, busy_port: int, tmp_path: Path, serves: list[Serve]
) -> None:
    env = serve_environment(tmp_path, metrics_port=str(busy_port))
    status, stderr = await run_serve(serves, env)
    assert_one_clear_line(status, stderr, "address already in use", "SEMCACHE_METRICS_PORT")


async def test_a_missing_catalogue_is_one_clear_line(
    embedder: Embedder, tmp_path: Path, serves: list[Serve]
) -> None:
    env = serve_environment(tmp_path, catalogue_path=str(tmp_path / "models.yaml"))
    status, stderr = await run_serve(serves, env)
    assert_one_clear_line(status, stderr, "models.yaml", "SEMCACHE_CATALOGUE_PATH")


async def test_a_second_server_on_the_same_data_directory_is_one_clear_line(
    embedder: Embedder, simulator: UpstreamSimulator, tmp_path: Path, serves: list[Serve]
) -> None:
    env = serve_environment(tmp_path, upstream_base_url=simulator.base_url)
    first = await Serve.start(env)
    serves.append(first)
    await first.wait_for("semcache serving")
    status, stderr = await run_serve(serves, env)
    assert_one_clear_line(status, stderr, str(tmp_path / "data"), "SEMCACHE_DATA_DIR")
    first.process.send_signal(signal.SIGTERM)
    assert await first.finish() == 0, first.stderr


# --- stopping -----------------------------------------------------------------


@pytest_asyncio.fixture
async def slow_upstream() -> AsyncIterator[UpstreamSimulator]:
    """gpt-4o-mini answers after 3 s; gpt-4o never does (within a test's time)."""
    hang = FaultConfig(spike_rate=1.0, spike_ms=3_600_000)
    config = SimulatorConfig(ttft_ms=3_000, ms_per_token=0, faults={"gpt-4o": hang})
    async with UpstreamSimulator(config) as sim:
        yield sim


async def _until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def test_sigterm_drains_calls_in_flight_and_a_second_signal_stops_at_once(
    embedder: Embedder, slow_upstream: UpstreamSimulator, tmp_path: Path, serves: list[Serve]
) -> None:
    env = serve_environment(
        tmp_path,
        upstream_base_url=slow_upstream.base_url,
        upstream_timeout_s="3600",
        grace_period_s="3600",
        http_port="0",
    )
    serve = await Serve.start(env)
    serves.append(serve)
    door = await serve.wait_for("HTTP door serving")
    base_url = re.search(r"base_url=(\S+)", door).group(1)  # type: ignore[union-attr]
    serving = await serve.wait_for("semcache serving")
    port = re.search(r"address=\S+:(\d+)", serving).group(1)  # type: ignore[union-attr]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "What is a quay?"}]}
    async with (
        AsyncSemcacheClient(f"127.0.0.1:{port}", timeout_s=3600) as client,
        aiohttp.ClientSession() as session,
    ):
        quick = asyncio.create_task(client.complete("What is a lighthouse?", model="gpt-4o-mini"))
        stuck = asyncio.create_task(client.complete("What is a harbour?", model="gpt-4o"))
        # Found from outside: a second signal cancelled the gRPC calls, not the HTTP ones.
        stuck_http = asyncio.create_task(session.post(f"{base_url}/chat/completions", json=body))
        await _until(lambda: slow_upstream.request_count() == 3)
        serve.process.send_signal(signal.SIGTERM)
        await serve.wait_for("shutting down")
        answer = await quick  # started before SIGTERM: drained, answered in full
        assert answer.content and answer.model == "gpt-4o-mini"
        assert serve.process.returncode is None, "still draining the stuck call"
        serve.process.send_signal(signal.SIGTERM)
        # The grace period and every timeout are an hour: only the second signal can
        # end the drain within a minute.
        assert await serve.finish(timeout_s=60) == 0, serve.stderr
        with pytest.raises(SemcacheError):
            await stuck
        with pytest.raises(aiohttp.ClientError):
            await stuck_http
    assert "stopped" in serve.lines[-1], serve.stderr
    assert "Traceback" not in serve.stderr, serve.stderr


def test_the_health_probe_reports_invalid_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.transport.grpc import healthcheck

    monkeypatch.setenv("SEMCACHE_GRPC_PORT", "port")
    assert healthcheck.main([]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("unhealthy: invalid settings: SEMCACHE_GRPC_PORT='port'"), err
    assert len(err.splitlines()) == 1, err


async def test_a_missing_prior_file_is_one_clear_line(
    embedder: Embedder, tmp_path: Path, serves: list[Serve]
) -> None:
    env = serve_environment(tmp_path, prior_path=str(tmp_path / "prior.json"))
    status, stderr = await run_serve(serves, env)
    assert_one_clear_line(status, stderr, "prior.json", "SEMCACHE_PRIOR_PATH")


async def test_an_unknown_judge_model_is_one_clear_line(
    embedder: Embedder, tmp_path: Path, serves: list[Serve]
) -> None:
    env = serve_environment(tmp_path, judge="llm", judge_model="no-such-model")
    status, stderr = await run_serve(serves, env)
    assert_one_clear_line(status, stderr, "no-such-model", "SEMCACHE_JUDGE_MODEL")


def _add_to_bad_keys(tmp_path: Path) -> list[str]:
    (tmp_path / "bad.yaml").write_text("{{{\n")
    return ["keys", "add", "--file", str(tmp_path / "bad.yaml"), "--tenant", "t", "--name", "n"]


def _unreadable_route_file(tmp_path: Path) -> list[str]:
    (tmp_path / "prompts.jsonl").write_text("not json\n")
    return ["route-eval", str(tmp_path / "prompts.jsonl")]


COMMAND_FAILURES: dict[str, tuple[Callable[[Path], list[str]], int, str]] = {
    "keys add into a missing directory": (
        lambda tmp: ["keys", "add", "--file", str(tmp / "no" / "k.yaml"), "--tenant", "t",
                     "--name", "n"],
        1, "cannot write",
    ),
    "keys add with a bad tenant": (
        lambda tmp: ["keys", "add", "--file", str(tmp / "k.yaml"), "--tenant", "bad tenant!",
                     "--name", "n"],
        1, "tenant 'bad tenant!' is not valid",
    ),
    "keys add to a malformed keys file": (_add_to_bad_keys, 1, "not valid YAML or JSON"),
    "route-eval on a missing file": (
        lambda tmp: ["route-eval", str(tmp / "missing.jsonl")], 2, "cannot read",
    ),
    "route-eval on a malformed file": (_unreadable_route_file, 2, "not valid JSON"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(COMMAND_FAILURES))
def test_command_errors_are_one_clear_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an audit: each of these printed a Python traceback."""
    from service.cli import main

    argv, status, phrase = COMMAND_FAILURES[case]
    assert main(argv(tmp_path)) == status
    err = capsys.readouterr().err.strip()
    assert phrase in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", [["stats"], ["serve"], ["complete", "hi"]])
def test_a_json_setting_that_is_not_json_is_one_line(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydantic-settings' own SettingsError (a JSON setting it could not parse) escaped
    as a traceback from `serve` and `health`, and `stats` exited 2."""
    from service.cli import main

    monkeypatch.setenv("SEMCACHE_MAX_ERROR_RATE_BY_NAMESPACE", "notjson")
    assert main(command) == 1
    err = capsys.readouterr().err.strip()
    assert "SEMCACHE_MAX_ERROR_RATE_BY_NAMESPACE is not valid JSON" in err, err
    assert len(err.splitlines()) == 1, err


def test_simulate_upstream_on_a_taken_port_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["simulate-upstream", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("semcache simulate-upstream: cannot listen on"), err
    assert not any("Traceback" in line for line in err)
    with pytest.raises(SystemExit) as caught:
        main(["simulate-upstream", "--port", "99999"])
    assert caught.value.code == 2
    assert "99999 is not a port" in capsys.readouterr().err


def test_a_data_directory_that_is_a_file_says_so(tmp_path: Path) -> None:
    """Found from outside: it said only "File exists", which reads like a lock clash."""
    from service.errors import StartupError
    from service.startup import data_dir_lock
    from tests.conftest import make_settings

    taken = tmp_path / "data"
    taken.write_text("not a directory")
    settings = make_settings("edge", taken, "http://127.0.0.1:9/v1")
    with (
        pytest.raises(StartupError, match="it is a file, not a directory"),
        data_dir_lock(settings),
    ):
        pass


def test_settings_that_name_nothing_servable_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found from outside: a host with a space was refused as "without API keys", and a
    namespace that no request can name, or a collection name with slashes, were taken."""
    from service.cli import main

    for setting, value in (
        ("SEMCACHE_GRPC_HOST", "not a host"),
        ("SEMCACHE_METRICS_HOST", "not a host"),
        ("SEMCACHE_MAX_ERROR_RATE_BY_NAMESPACE", '{"bad ns!": 0.1}'),
        ("SEMCACHE_QDRANT_COLLECTION", "bad/../name"),
    ):
        with monkeypatch.context() as env:
            env.setenv(setting, value)
            env.setenv("SEMCACHE_TARGET", "127.0.0.1:1")
            assert main(["stats"]) == 1, setting
            assert f"{setting}=" in capsys.readouterr().err, setting
