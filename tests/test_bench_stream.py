"""`semcache bench stream`: scoring by the answers' tags, the targets, a tiny stream end to end.

The stream here is made up for the test (no QQP text ships with the project).
No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.stream import (
    answer_cluster,
    markdown,
    outcome_of,
    progress_line,
    replay,
    service_runs,
    targets,
)
from benchmarks.stream_replay import Request, load_stream, summarise, table_rows
from semcache_simulator.canned import canned_answer

REPO = Path(__file__).resolve().parents[1]
TINY = [
    ("How do I reset my password?", "c1"),
    ("What is the capital of France?", "c2"),
    ("How do I reset my password?", "c1"),
    ("Which city is the capital of France?", "c2"),
    ("How do I reset my router?", "t1"),
    ("how do i reset my password", "c1"),
    ("What is the capital of Spain?", "t2"),
    ("What is the capital of France?", "c2"),
]


def request(cluster: str = "c1", should_hit: bool = True, reworded: bool = False) -> Request:
    return Request("q", cluster, should_hit, reworded, cluster.startswith("t"))


def write_tiny(path: Path) -> Path:
    path.write_text("".join(json.dumps({"q": q, "cluster": c}) + "\n" for q, c in TINY))
    return path


def test_answer_cluster_reads_the_canned_tag() -> None:
    assert answer_cluster(canned_answer("c12")) == "c12"
    assert answer_cluster("  ANSWER[t7]: x") == "t7"
    assert answer_cluster("[gpt-4o-mini] Answer to: q") is None


def test_outcome_of_scores_hits_by_tag_and_spots_explorations() -> None:
    right = outcome_of(request("c1"), "semantic_hit", "ok", canned_answer("c1"))
    wrong = outcome_of(request("c1"), "semantic_hit", "ok", canned_answer("c2"))
    exact = outcome_of(request("c1"), "exact_hit", "", canned_answer("c1"))
    explored = outcome_of(request("c1"), "miss", "explore_uncertain", canned_answer("c1"))
    missed = outcome_of(request("c1"), "miss", "low_score", canned_answer("c1"))
    assert (right.kind, right.correct) == ("semantic", True)
    assert (wrong.kind, wrong.correct) == ("semantic", False)
    assert (exact.kind, exact.correct) == ("exact", True)
    assert (explored.kind, missed.kind) == ("explore", "miss")


def test_scores_served_share_error_rate_traps_and_explorations() -> None:
    outcomes = [
        outcome_of(request("c1", should_hit=False), "miss", "", canned_answer("c1")),
        outcome_of(request("c1"), "exact_hit", "", canned_answer("c1")),
        outcome_of(request("c1", reworded=True), "semantic_hit", "ok", canned_answer("c1")),
        outcome_of(request("t1", should_hit=False), "semantic_hit", "ok", canned_answer("c1")),
        outcome_of(request("c1", reworded=True), "miss", "explore_x", canned_answer("c1")),
    ]
    figures = summarise("x", outcomes)
    assert figures["served"] == round(2 / 3, 4)  # 2 right hits of 3 should-hit requests
    assert figures["reworded_served"] == 0.5
    assert figures["error_rate"] == 0.2 and figures["wrong"] == 1
    assert figures["traps_served"] == 1
    assert (figures["exact_hits"], figures["semantic_hits"]) == (1, 2)
    assert figures["explorations"] == 1
    assert "served 66.7% of should-hit, wrong 1, explorations 1" in progress_line(
        "x", outcomes, 10, 0.0
    )


def test_replay_asks_in_order_and_reports_progress(capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[str] = []

    def ask(question: str) -> tuple[str, str, str]:
        asked.append(question)
        return "miss", "", canned_answer("c1")

    requests = [Request(f"q{i}", "c1", i > 0, False, False) for i in range(3)]
    outcomes = replay("guard alone", requests, ask)
    assert asked == ["q0", "q1", "q2"] and [o.kind for o in outcomes] == ["miss"] * 3
    assert "[bench] guard alone 3/3: served 0.0% of should-hit" in capsys.readouterr().err


def test_the_two_service_runs_differ_only_in_the_error_budget() -> None:
    verified, guard = service_runs(0.02)
    assert verified.env["SEMCACHE_ERROR_BUDGET"] == "true"
    assert float(verified.env["SEMCACHE_MAX_ERROR_RATE"]) == 0.02
    assert guard.env["SEMCACHE_ERROR_BUDGET"] == "false"
    assert verified.env["SEMCACHE_JUDGE"] == guard.env["SEMCACHE_JUDGE"] == "exact"


def test_targets_check_the_verified_runs_whole_stream_and_second_half() -> None:
    rows = [
        {"error_rate": 0.008, "reworded_served": 0.55, "exploration_share": 0.04},
        {"error_rate": 0.012, "reworded_served": 0.6, "exploration_share": 0.02},
    ]
    met = {t["target"]: t["met"] for t in targets(rows, 0.01)}
    assert list(met.values()) == ["yes", "no", "yes", "yes"]


def test_markdown_says_the_cosine_row_is_computed_in_process(tmp_path: Path) -> None:
    requests = load_stream(write_tiny(tmp_path / "tiny.jsonl"))
    results = {
        "verified δ=0.01": [outcome_of(r, "miss", "", "") for r in requests],
        "guard alone": [outcome_of(r, "miss", "", "") for r in requests],
    }
    rows = table_rows(results)
    report = {
        "stream": "tiny.jsonl", "requests": 8, "should_hit": 5, "reworded": 2, "traps": 2,
        "judge": "exact", "machine": "m", "rows": rows, "targets": targets(rows, 0.01),
        "verification": {"verified δ=0.01": [{"explored": 2, "judged_same": 1}]},
    }  # fmt: skip
    text = markdown(report)
    assert "computed in process with the same embedder" in text
    assert "verified δ=0.01: 2 explored (0 audits), judged 1 same and 0 wrong" in text


def test_a_tiny_stream_end_to_end_through_the_service(tmp_path: Path) -> None:
    stream = write_tiny(tmp_path / "tiny.jsonl")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
    clean["SEMCACHE_EMBEDDING_CACHE_DIR"] = str(REPO / ".semcache" / "models")
    out = tmp_path / "out"
    command = ["bench", "stream", "--stream", str(stream), "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *command],
        cwd=REPO, env=clean, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[bench] guard alone 8/8" in result.stderr
    report = json.loads((out / "stream.json").read_text())
    assert report["command"].startswith("semcache bench stream")
    by_run = {(r["decider"], r["part"]): r for r in report["rows"]}
    for decider in ("verified δ=0.01", "guard alone"):
        row = by_run[(decider, "all")]
        assert row["requests"] == 8
        assert row["exact_hits"] == 3  # the repeats of c1 (twice) and c2, served right
        assert row["traps_served"] == 0 and row["wrong"] == 0
    assert (out / "stream.png").stat().st_size > 0 and (out / "stream.md").is_file()
