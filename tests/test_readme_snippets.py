"""Every code block in the README runs as written, or is listed in `NOT_RUN` with
the reason it cannot run in a test.

The blocks run against `semcache serve` started as `make run` starts it: no
upstream configured (so the built-in simulator answers), no keys file (open
mode). The one change made to a block is the address: the service listens on
a free port, so `localhost:50051` becomes that port, and a `semcache` command
that names no `--target` gets one.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.embedding.base import Embedder
from tests.conftest import MODEL_CACHE_DIR, REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\S*)\n(.*?)^```", re.S | re.M)
README_ADDRESS = "localhost:50051"
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 120.0

# The start of each block that is not run, and why. A block missing from here
# and of no runnable kind fails `test_every_block_is_run_or_listed`.
NOT_RUN = {
    "make run": "installs the venv and serves until stopped; the tests below start what"
    " it runs (`semcache serve`), and `make test` is CI itself",
    "pip install ./clients/python": "installs into the environment; `make install` did, and"
    " the Python blocks below import the client from this checkout",
    "gRPC stub ─▶ ServiceInterceptor": "a diagram, not code",
    "providers:\n  - name: local-vllm": "a catalogue fragment, not a command; grouping is"
    " tested in tests/test_grouping.py",
    "curl -s localhost:8080/": "needs the HTTP door: run by tests/test_http_readme.py",
    "from openai import OpenAI": "needs the HTTP door: run by tests/test_http_readme.py",
    "protoc -I protos": "compiled by tests/test_proto_compile.py",
    "conn, err := grpc.NewClient": "compiled by tests/test_proto_compile.py",
    'import grpc from "@grpc/grpc-js"': "compiled by tests/test_proto_compile.py",
}


@dataclass(frozen=True)
class Block:
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.language or 'plain'}: {self.code.splitlines()[0][:60]}"


BLOCKS = [Block(m.group(1), m.group(2)) for m in BLOCK.finditer(README)]
PYTHON = [b for b in BLOCKS if b.language == "python"]
CONSOLE = [b for b in BLOCKS if b.language == "console"]
GRPCURL = [b for b in BLOCKS if b.language == "sh" and b.code.startswith("grpcurl ")]


def _listed(block: Block) -> bool:
    return any(block.code.startswith(start) for start in NOT_RUN)


def test_every_block_is_run_or_listed() -> None:
    runnable = PYTHON + CONSOLE + GRPCURL
    unaccounted = [b.name for b in BLOCKS if b not in runnable and not _listed(b)]
    assert unaccounted == [], "run these in this file, or list them in NOT_RUN with a reason"
    stale = [start for start in NOT_RUN if not any(b.code.startswith(start) for b in BLOCKS)]
    assert stale == [], "NOT_RUN names blocks the README no longer has"
    assert PYTHON and CONSOLE, "the README's examples moved: update this file"


class ReadmeService:
    """`semcache serve` as `make run` starts it, on a free port."""

    def __init__(self, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "OPENAI_"))}
        env.update(
            PYTHONPATH=str(REPO),
            SEMCACHE_GRPC_PORT="0",
            SEMCACHE_DATA_DIR=str(data_dir),
            SEMCACHE_EMBEDDING_CACHE_DIR=str(MODEL_CACHE_DIR),
        )
        self.lines: list[str] = []
        self._serving = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--simulate"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if "semcache serving" in line:
                self._serving.set()
        self._serving.set()  # ended: let the waiter see it

    @property
    def address(self) -> str:
        """localhost:<port>, once it serves."""
        assert self._serving.wait(START_TIMEOUT_S), "semcache serve did not start in time"
        serving = next((line for line in self.lines if "semcache serving" in line), None)
        assert serving is not None, "semcache serve ended:\n" + "\n".join(self.lines)
        port = re.search(r"address=\S+:(\d+)", serving)
        assert port is not None, serving
        return f"localhost:{port.group(1)}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def readme_service(embedder: Embedder, tmp_path: Path) -> Iterator[ReadmeService]:
    """A fresh service per test (the README's examples expect an empty cache)."""
    service = ReadmeService(tmp_path / "data")
    yield service
    service.stop()


def _run(command: list[str], timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "OPENAI_"))}
    env["PYTHONPATH"] = os.pathsep.join((str(REPO / "clients" / "python"), str(REPO)))
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.mark.parametrize("block", PYTHON, ids=[b.name for b in PYTHON])
def test_python_block_runs(block: Block, readme_service: ReadmeService) -> None:
    code = block.code.replace(README_ADDRESS, readme_service.address)
    done = _run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    # What a comment says a print shows, it shows (e.g. `# CacheStatus.SEMANTIC_HIT`).
    for promised in re.findall(r"#\s*(CacheStatus\.\w+)", block.code):
        assert promised in done.stdout, done.stdout


def _console_commands(block: Block) -> list[tuple[str, str | None]]:
    """Each `$ ` command of a console block, with the cache status its output shows."""
    commands: list[tuple[str, str | None]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], None))
        elif commands and (shown := re.search(r"-- cache=(\w+)", line)):
            commands[-1] = (commands[-1][0], shown.group(1))
    return commands


@pytest.mark.parametrize("block", CONSOLE, ids=[b.name for b in CONSOLE])
def test_console_block_runs(block: Block, readme_service: ReadmeService) -> None:
    for command, cache_status in _console_commands(block):
        argv = shlex.split(command.replace(README_ADDRESS, readme_service.address))
        if Path(argv[0]).name == "semcache" and "--target" not in argv:
            argv += ["--target", readme_service.address]
        done = _run(argv)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        if cache_status is not None:
            assert f"cache={cache_status} " in done.stderr, f"{command}: {done.stderr}"


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl is not installed here")
@pytest.mark.parametrize("block", GRPCURL, ids=[b.name for b in GRPCURL])
def test_grpcurl_block_runs(block: Block, readme_service: ReadmeService) -> None:
    code = block.code.replace(README_ADDRESS, readme_service.address)
    done = _run(["bash", "-c", code])
    assert done.returncode == 0, done.stderr
    assert '"cacheStatus"' in done.stdout, done.stdout
