"""`semcache serve` loads the service and nothing of its test apparatus.

The benchmarks and the upstream simulator are tools beside the service: a
server started for real traffic must not import them (nor pay for them), and
with no upstream configured it refuses to guess unless told to `--simulate`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.test_startup import serve_environment

# Runs `semcache serve` up to the point where it would start serving, then
# prints which apparatus modules were imported and exits.
_PROBE = """
import json, sys
from service import cli, serve

async def report(app, settings, security=None):
    roots = ("benchmarks", "service.simulator")
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


def test_serve_imports_neither_benchmarks_nor_simulator(tmp_path: Path) -> None:
    assert _apparatus_imported(serve_environment(tmp_path)) == []


def test_the_probe_sees_the_simulator_when_asked_to_simulate(tmp_path: Path) -> None:
    env = serve_environment(tmp_path)
    del env["SEMCACHE_UPSTREAM_BASE_URL"]
    assert "service.simulator" in _apparatus_imported(env, "--simulate")


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
