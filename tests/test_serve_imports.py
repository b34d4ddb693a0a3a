"""`semcache serve` loads the service and nothing it was not asked for.

The benchmarks and the upstream simulator are tools beside the service: a
server started for real traffic must not import them (nor pay for them), and
with no upstream configured it refuses to guess unless told to `--simulate`.
Nor does it import the heavy packages of backends it was not configured with:
torch and transformers when the ONNX file is cached, qdrant-client with the
embedded store, aiohttp's server with the HTTP door off, redis with in-memory
rate limits. Each is checked in a real `semcache serve`, at the moment it serves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.embedding.base import Embedder
from tests.conftest import REPO
from tests.test_startup import serve_environment

# Runs `semcache serve` up to the point where it would start serving, then
# prints which apparatus modules were imported and exits.
_PROBE = """
import json, sys
from service import cli, serve

async def report(app, settings, security=None):
    roots = ("benchmarks", "semcache_simulator")
    apparatus = sorted(m for m in sys.modules if m.startswith(roots))
    print("IMPORTED " + json.dumps(apparatus))

serve.serve_until_signalled = report
sys.exit(cli.main(sys.argv[1:]))
"""


def _apparatus_imported(env: dict[str, str], *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, "serve", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    imported: list[str] = json.loads(lines[0].removeprefix("IMPORTED "))
    return imported


# Runs the whole of `semcache serve`; once both doors are up (where it would wait
# for a signal) prints every loaded module's name and stops as if sent SIGTERM.
_AT_SERVING = """
import asyncio, json, signal, sys
from service import cli, serve

class Serving:  # the signal queue: its first wait is serve's, with both doors up
    waited = False

    async def get(self):
        if self.waited:
            await asyncio.Future()  # no second signal: the drain runs its course
        self.waited = True
        print("LOADED " + json.dumps(sorted(sys.modules)), flush=True)
        return signal.SIGTERM

serve._signal_queue = Serving
sys.exit(cli.main(sys.argv[1:]))
"""

# Heavy packages, each needed only by a backend the default settings do not use.
_NOT_BY_DEFAULT = (
    "torch",  # the torch embedder, or exporting the ONNX file
    "transformers",
    "sentence_transformers",
    "qdrant_client",  # a Qdrant server (SEMCACHE_QDRANT_URL)
    "aiohttp.web",  # the HTTP door (SEMCACHE_HTTP_PORT)
    "service.transport.http",
    "redis",  # shared rate limits (SEMCACHE_RATE_LIMIT_REDIS_URL)
)


def _loaded_at_serving(env: dict[str, str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _AT_SERVING, "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("LOADED ")]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    return set(json.loads(lines[0].removeprefix("LOADED ")))


def _heavy(loaded: set[str]) -> list[str]:
    return sorted(
        name
        for name in _NOT_BY_DEFAULT
        if any(m == name or m.startswith(f"{name}.") for m in loaded)
    )


def test_serve_with_default_backends_imports_none_of_the_others(
    tmp_path: Path, embedder: Embedder
) -> None:
    # `embedder` exported the ONNX file into the cache `serve_environment` points at.
    loaded = _loaded_at_serving(serve_environment(tmp_path))

    assert _heavy(loaded) == []
    assert {"onnxruntime", "tokenizers", "qdrant_edge", "grpc"} <= loaded


@pytest.mark.parametrize(
    ("setting", "value", "imported"),
    [
        ("http_port", "0", ["aiohttp.web", "service.transport.http"]),
        ("qdrant_url", ":memory:", ["qdrant_client"]),
        ("rate_limit_redis_url", "redis://127.0.0.1:9", ["redis"]),
    ],
)
def test_each_heavy_package_comes_with_the_setting_that_needs_it(
    tmp_path: Path, embedder: Embedder, setting: str, value: str, imported: list[str]
) -> None:
    loaded = _loaded_at_serving(serve_environment(tmp_path, **{setting: value}))

    assert _heavy(loaded) == imported


def test_serve_imports_neither_benchmarks_nor_simulator(tmp_path: Path) -> None:
    assert _apparatus_imported(serve_environment(tmp_path)) == []


def test_the_probe_sees_the_simulator_when_asked_to_simulate(tmp_path: Path) -> None:
    env = serve_environment(tmp_path)
    del env["SEMCACHE_UPSTREAM_BASE_URL"]
    assert "semcache_simulator" in _apparatus_imported(env, "--simulate")


def test_serve_without_an_upstream_refuses_to_guess(tmp_path: Path) -> None:
    env = serve_environment(tmp_path)
    del env["SEMCACHE_UPSTREAM_BASE_URL"]
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("semcache serve: no upstream configured") and "--simulate" in last
    assert "Traceback" not in done.stderr
