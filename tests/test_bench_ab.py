"""`semcache bench ab`: two services side by side, one with some settings changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.ab import SettingError, Side, parse_settings, summarise
from tests.conftest import run_bench_cli


def test_settings_are_name_value_pairs_of_the_services_own_settings() -> None:
    assert parse_settings(["SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE=false", "SEMCACHE_TTL_S=0"]) == {
        "SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE": "false",
        "SEMCACHE_TTL_S": "0",
    }
    with pytest.raises(SettingError, match="NAME=VALUE"):
        parse_settings(["SEMCACHE_TTL_S"])
    with pytest.raises(SettingError, match="not a setting of the service"):
        parse_settings(["SEMCACHE_NO_SUCH_THING=1"])
    with pytest.raises(SettingError, match="at least one"):
        parse_settings([])


def _side(calls: list[tuple[str, float]], health: float) -> Side:
    side = Side()
    for outcome, ms in calls:
        side.outcomes.append(outcome)
        side.round_trip_ms.append(ms)
        side.service_ms.append(ms / 2)
    side.health_ms.append(health)
    return side


def test_the_difference_is_paired_over_the_calls_both_sides_answered_alike() -> None:
    """A question one side served as a semantic hit and the other as a miss is no
    comparison of either outcome: B − A takes only the calls answered alike."""
    a = _side([("miss", 10.0), ("exact_hit", 2.0), ("semantic_hit", 8.0)], health=2.0)
    b = _side([("miss", 9.0), ("exact_hit", 2.5), ("miss", 12.0)], health=2.5)

    rows = {(row["side"], row["outcome"]): row for row in summarise({"A": a, "B": b})}

    assert rows["B", "exact_hit"]["b_minus_a_ms"] == 0.5
    assert rows["B", "miss"]["b_minus_a_ms"] == -1.0  # only the first call is alike
    assert rows["B", "miss"]["count"] == 2 and rows["B", "miss"]["alike"] == 1
    assert rows["A", "semantic_hit"]["count"] == 1 and rows["A", "semantic_hit"]["alike"] == 0
    assert rows["B", "semantic_hit"]["count"] == 0
    assert rows["A", "exact_hit"]["x_health_p50"] == 1.0  # each side against its own floor
    assert rows["B", "exact_hit"]["x_health_p50"] == 1.0
    assert "b_minus_a_ms" not in rows["A", "miss"]


def _pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"a": "How do I learn Python quickly?", "b": "What is the fastest way to learn Python?"},
        {"a": "What is machine learning?", "b": "Can you explain machine learning?"},
    ]
    path.write_text("".join(json.dumps({**r, "same_answer": True}) + "\n" for r in rows))
    return path


def test_bench_ab_runs_both_sides_and_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_bench_cli(
        "ab",
        "--setting",
        "SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE=true",
        "--pairs",
        "2",
        "--data",
        str(_pairs_file(tmp_path)),
        "--out",
        str(out),
    )

    assert result.returncode == 0, result.stderr
    report = json.loads((out / "ab.json").read_text())
    assert report["settings_b"] == {"SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE": "true"}
    assert report["rounds"] == 2  # one pair each, the side started first alternating
    assert "round 2 of 2, B started first" in result.stderr
    counts = {(row["side"], row["outcome"]): row["count"] for row in report["rows"]}
    assert counts["A", "exact_hit"] == counts["B", "exact_hit"] == 2
    assert sum(n for (side, _), n in counts.items() if side == "A") == 6
    assert sum(n for (side, _), n in counts.items() if side == "B") == 6
    assert [row["checks"] for row in report["health"]] == [2, 2]
    assert "B − A, paired median ms" in (out / "ab.md").read_text()


def test_a_value_side_b_refuses_is_one_line_naming_it(tmp_path: Path) -> None:
    result = run_bench_cli(
        "ab",
        "--setting",
        "SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE=maybe",
        "--pairs",
        "2",
        "--data",
        str(_pairs_file(tmp_path)),
        "--out",
        str(tmp_path / "out"),
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[bench]")]
    assert len(lines) == 1, result.stderr  # besides progress, one line
    assert "SEMCACHE_EMBEDDING_INLINE_WHEN_ALONE='maybe' is invalid" in lines[0]


def test_an_unknown_setting_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = run_bench_cli("ab", "--setting", "SEMCACHE_TYPO=1", "--out", str(tmp_path))

    assert result.returncode == 2
    assert "SEMCACHE_TYPO: not a setting of the service" in result.stderr
    assert not (tmp_path / "ab.json").exists()

    more_rounds = ("--setting", "SEMCACHE_TTL_S=0", "--pairs", "2", "--rounds", "3")
    result = run_bench_cli("ab", *more_rounds, "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--rounds must be between 1 and --pairs (2), not 3" in result.stderr
