"""The README's benchmark tables are the checked-in results, rendered by `semcache bench readme`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.readme_tables import (
    README,
    RENDERERS,
    REQUIRED,
    RESULTS_DIR,
    regenerate,
    regions,
)

TEXT = README.read_text(encoding="utf-8")
BENCHMARKS = TEXT[TEXT.index("## Benchmarks\n") : TEXT.index("## Development\n")]


def test_every_latency_and_throughput_benchmark_has_a_generated_region() -> None:
    assert set(REQUIRED) <= set(regions(TEXT)) <= set(RENDERERS)


def test_every_region_has_its_results_file_and_every_results_file_a_region() -> None:
    checked_in = {path.stem for path in RESULTS_DIR.glob("*.json")}
    assert checked_in == set(regions(TEXT))


def test_the_readme_tables_are_what_the_checked_in_results_render_to() -> None:
    assert regenerate(TEXT) == TEXT, "README is stale: run `semcache bench readme`"


@pytest.mark.parametrize("name", regions(TEXT))
def test_each_table_names_the_command_that_wrote_its_results(name: str) -> None:
    report = json.loads((RESULTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    command = report["command"]

    assert command.startswith(f"semcache bench {name}")
    assert "--out docs/bench" in command
    assert f"Produced by `{command}`" in TEXT


@pytest.mark.parametrize("name", ["latency", "load", "overhead", "compare", "gptcache", "scale"])
def test_each_latency_report_carries_its_floors(name: str) -> None:
    report = json.loads((RESULTS_DIR / f"{name}.json").read_text(encoding="utf-8"))

    assert report["floors"]["health"], "no health-check floor"
    assert report["floors"]["embedder"]["texts"] > 0, "no embedder floor"


def test_the_startup_report_carries_its_floors() -> None:
    report = json.loads((RESULTS_DIR / "startup.json").read_text(encoding="utf-8"))
    floors = {row["configuration"]: row["median_s"] for row in report["floors"]}

    assert floors["python gRPC health server"] > 0 and floors["python -c pass"] > 0
    assert all(row["x_floor"] > 0 for row in report["rows"])


def test_figures_that_no_command_produces_are_gone() -> None:
    for unsourced in ("146 to 175", "179 → 219", "a second job on one core", "0.18 ms"):
        assert unsourced not in TEXT


def test_compare_shows_every_row_it_printed() -> None:
    report = json.loads((RESULTS_DIR / "compare.json").read_text(encoding="utf-8"))
    lookups = {row["lookup"] for row in report["rows"]}

    assert "numpy matmul brute force" in lookups
    for lookup in lookups:
        assert f"| {lookup} |" in BENCHMARKS


def test_a_stale_region_is_rewritten_from_its_results_file(tmp_path: Path) -> None:
    report = {
        "command": "semcache bench grouping --out docs/bench",
        "setup": "2 misses",
        "rows": [{"configuration": "grouped", "requests": 2, "p50_ms": 1.5}],
    }
    (tmp_path / "grouping.json").write_text(json.dumps(report))
    stale = "before\n<!-- bench:grouping -->\nold table\n<!-- /bench:grouping -->\nafter\n"

    fresh = regenerate(stale, tmp_path)

    assert "old table" not in fresh
    assert "Produced by `semcache bench grouping --out docs/bench`:" in fresh
    assert "| grouped | 2 |" in fresh
    assert fresh.startswith("before\n<!-- bench:grouping -->\n")
    assert fresh.endswith("<!-- /bench:grouping -->\nafter\n")


def test_results_name_the_code_they_ran_and_the_readme_says_it(tmp_path: Path) -> None:
    """Found from outside: checked-in results that predated the code beside them (a
    stage table without the stage the renderer described) could not be told apart."""
    import subprocess

    from benchmarks import readme_tables
    from benchmarks.report import code_version, write_results

    head = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert code_version().startswith(head or "unknown")
    write_results(tmp_path, "startup", {"rows": []}, "table")
    written = json.loads((tmp_path / "startup.json").read_text())
    assert written["code"] == code_version()
    assert f"(code: {written['code']})" in (tmp_path / "startup.md").read_text()
    report = json.loads((readme_tables.RESULTS_DIR / "startup.json").read_text())
    (tmp_path / "startup.json").write_text(json.dumps({**report, "code": "abc1234"}))
    rendered = readme_tables.render("startup", tmp_path)
    assert rendered.startswith(f"Produced by `{report['command']}` at commit abc1234:")
