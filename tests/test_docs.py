"""The README documents every setting, RPC and CLI command that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from service._proto.semcache.v1 import semcache_pb2 as pb
from service.cli import build_parser
from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_table(name: str) -> None:
    assert f"| `SEMCACHE_{name.upper()}` |" in README


def _documented_default(name: str) -> str:
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, Path) and default.is_absolute():
        return f"`{default.relative_to(Path(__file__).resolve().parents[1])}`"
    return f"`{default}`"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_the_readme_states_each_settings_default(name: str) -> None:
    row = next(line for line in README.splitlines() if f"| `SEMCACHE_{name.upper()}` |" in line)
    assert row.split(" | ")[1] == _documented_default(name)


@pytest.mark.parametrize(
    "rpc", [m.name for m in pb.DESCRIPTOR.services_by_name["SemanticCacheService"].methods]
)
def test_every_rpc_is_in_the_readme(rpc: str) -> None:
    assert f"`{rpc}(" in README


def _commands() -> list[str]:
    parser = build_parser()
    names: list[str] = []
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
            names += [f"{name} {n}" for a in nested for n in a.choices] or [name]
    return names


@pytest.mark.parametrize("command", _commands())
def test_every_cli_command_is_in_the_readme(command: str) -> None:
    assert f"`semcache {command}" in README


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMCACHE_GRPC_PORT", "6000")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://provider.example/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = Settings()
    assert settings.grpc_port == 6000
    assert settings.upstream_base_url == "http://provider.example/v1"
    assert settings.upstream_api_key is not None
    assert settings.upstream_api_key.get_secret_value() == "sk-test"
    monkeypatch.setenv("SEMCACHE_UPSTREAM_BASE_URL", "http://preferred.example/v1")
    assert Settings().upstream_base_url == "http://preferred.example/v1"


def test_bad_settings_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMCACHE_SIMILARITY_MIN", "1.5")
    with pytest.raises(ValueError, match="similarity_min"):
        Settings()


def test_make_test_installs_what_the_tests_need_and_lists_every_skip() -> None:
    dry_run = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "scripts/test_deps.sh" in dry_run, "make test must install redis-server and openssl"
    assert re.search(r"pytest .*-rs", dry_run), "make test must list skipped tests and why"
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci, ".ci/run runs exactly what make test does"


def test_choice_lists_come_from_the_settings_types() -> None:
    """The CLI's choices are the settings' Literal types, never a second list."""
    from typing import get_args

    from service.cli import build_parser
    from service.embedding.factory import EMBEDDING_BACKENDS
    from service.routing.strategy import STRATEGIES

    fields = Settings.model_fields
    assert get_args(fields["embedding_backend"].annotation) == EMBEDDING_BACKENDS
    assert get_args(fields["routing_strategy"].annotation) == STRATEGIES
    help_text = build_parser().format_help()
    assert "route-eval" in help_text


@pytest.mark.parametrize(
    "name", sorted(n for n, f in Settings.model_fields.items() if f.default is None)
)
def test_an_unset_setting_says_what_unset_means(name: str) -> None:
    """One convention for "off": optional settings are off when unset, and say so."""
    description = Settings.model_fields[name].description or ""
    assert "unset" in description.lower(), description


def test_every_setting_belongs_to_one_area_and_each_area_is_a_nested_view() -> None:
    """Settings are declared by area; `settings.<area>` is that area's own model with
    the same values, while the variables keep their flat `SEMCACHE_*` names."""
    from service.config import AREAS

    owners: dict[str, list[str]] = {}
    for area in AREAS:
        for name in area.model_fields:
            owners.setdefault(name, []).append(area.__name__)
    assert set(owners) == set(Settings.model_fields)
    assert all(len(areas) == 1 for areas in owners.values()), owners
    settings = Settings(ttl_s=5, max_error_rate=0.02, grpc_port=6000)
    assert (settings.cache.ttl_s, settings.verify.max_error_rate) == (5, 0.02)
    assert settings.server.grpc_port == 6000
    assert settings.area(AREAS[0]).model_dump() == {
        name: getattr(settings, name) for name in AREAS[0].model_fields
    }
