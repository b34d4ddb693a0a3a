"""The server's distribution is the server (issue 11): the benchmarks and the simulator beside it.

The wheel of the root pyproject holds `service` and nothing else: the benchmarks
stay in the source tree (an editable install of a checkout puts them on the path),
and the upstream simulator is its own distribution, `semcache-simulator`, in
simulator/. Without them, the commands that need them say in one line what to
install instead of a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_startup import serve_environment

_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
# Offline, with the setuptools already installed: what `make install` does, minus the network.
_PIP_WHEEL = ("-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index")


def _wheel_names(tmp_path: Path, *parts: str) -> set[str]:
    """Build the wheel of a copy of REPO (only `parts`, the first holding the
    pyproject) offline, and return the top-level names inside it."""
    source = tmp_path / "src"
    for part in parts:
        origin = REPO / part
        if origin.is_dir():
            shutil.copytree(origin, source / part, ignore=_SKIP, dirs_exist_ok=True)
        else:
            (source / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, source / part)
    project = source / Path(parts[0]).parent
    out = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, *_PIP_WHEEL, "-w", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist()}


@pytest.mark.slow
def test_the_server_wheel_holds_the_service_alone(tmp_path: Path) -> None:
    parts = ("pyproject.toml", "README.md", "service", "benchmarks", "simulator")
    top = _wheel_names(tmp_path, *parts)

    assert top == {"service", "semcache-0.1.0.dist-info"}


@pytest.mark.slow
def test_the_simulator_is_a_wheel_of_its_own(tmp_path: Path) -> None:
    top = _wheel_names(tmp_path, "simulator/pyproject.toml", "simulator")

    assert top == {"semcache_simulator", "semcache_simulator-0.1.0.dist-info"}


# Runs `semcache` with `package` unimportable, as from the server's wheel alone.
_WITHOUT = """
import sys
sys.modules[sys.argv[1]] = None
from service import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def _run_without(package: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT, package, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("package", "args", "says"),
    [
        ("semcache_simulator", ["serve", "--simulate"], "semcache serve: --simulate: "),
        ("semcache_simulator", ["simulate-upstream"], "semcache simulate-upstream: "),
        ("benchmarks", ["bench", "latency"], "semcache bench: "),
    ],
)
def test_a_command_whose_package_is_missing_says_what_to_install(
    tmp_path: Path, package: str, args: list[str], says: str
) -> None:
    env = serve_environment(tmp_path)
    del env["SEMCACHE_UPSTREAM_BASE_URL"]

    done = _run_without(package, env, *args)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(says) and "not installed" in last
    assert ("./simulator" if package == "semcache_simulator" else "pip install -e .") in last
