"""The rooms of the service keep to themselves (issue: one house, clearly roomed).

- Only the gRPC door (`service.transport.grpc`) and its generated stubs import
  grpc or google.rpc; the pipeline, cache, routing and providers know no transport.
- Nothing in `service` imports the benchmarks, and only the CLI's simulator
  commands import the simulator (`semcache_simulator`, a distribution of its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
GRPC_ROOTS = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.rpc")
GRPC_ROOMS = ("transport/grpc/", "_proto/", "client/")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(SERVICE.rglob("*.py"))


def _is_under(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SERVICE)))
def test_only_the_grpc_door_imports_grpc(path: Path) -> None:
    relative = path.relative_to(SERVICE).as_posix()
    if relative.startswith(GRPC_ROOMS) or relative == "cli.py":
        return
    leaking = sorted(m for m in _imports(path) if _is_under(m, GRPC_ROOTS))
    assert not leaking, f"service/{relative} imports {leaking}: keep gRPC in service/transport/grpc"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SERVICE)))
def test_nothing_in_the_service_imports_the_benchmarks(path: Path) -> None:
    relative = path.relative_to(SERVICE).as_posix()
    if relative == "cli.py":  # `semcache bench …` imports them lazily, inside its commands
        return
    assert not any(_is_under(m, ("benchmarks",)) for m in _imports(path)), relative


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SERVICE)))
def test_nothing_in_the_service_imports_the_simulator(path: Path) -> None:
    relative = path.relative_to(SERVICE).as_posix()
    if relative == "cli.py":  # `serve --simulate` and `simulate-upstream`, lazily
        return
    assert not any(_is_under(m, ("semcache_simulator",)) for m in _imports(path)), relative


def test_the_simulator_is_not_in_the_service_tree() -> None:
    assert not (SERVICE / "simulator").exists()
    assert (SERVICE.parent / "simulator" / "semcache_simulator" / "__init__.py").is_file()


def test_the_layering_check_sees_a_leak(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text("import grpc\nfrom google.rpc import status_pb2\n")
    assert {m for m in _imports(leaky) if _is_under(m, GRPC_ROOTS)} == {"grpc", "google.rpc"}
