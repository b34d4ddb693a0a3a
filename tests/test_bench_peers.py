"""`semcache bench peers`: the report's arithmetic, LiteLLM's config and outcomes, and the
harness end to end against a second semcache standing in for the peer (no LiteLLM needed).

The run against the real LiteLLM proxy is skipped unless its venv is already there
(`.semcache/peers-venv`, made by the first `semcache bench peers`). No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.load import Sample
from benchmarks.peers import PeersConfig
from benchmarks.peers_gateways import litellm_config, litellm_installed, litellm_outcome
from benchmarks.peers_report import DIRECT, PhaseTally, build_report

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is the boiling point of water at high altitude?",
    "How do volcanoes form?",
    "When may a chess player castle?",
    "Why do leaves change colour in autumn?",
    "How does a bicycle gear work?",
    "Who invented the printing press?",
    "How do vaccines train the immune system?",
    "What is a tax deduction?",
    "How do I tune a guitar?",
    "Why does the moon have phases?",
    "What causes ocean tides?",
    "How is cheese made from milk?",
]


class _Gateway:
    def __init__(self, name: str, pid: int | None) -> None:
        self.name, self.pid = name, pid


def _samples(outcome: str, *round_trips_ms: float) -> list[Sample]:
    return [Sample(outcome, ms) for ms in round_trips_ms]


def _report(peer_hit_ms: float, peer_bypass_ms: float) -> dict[str, Any]:
    bypass = PhaseTally(
        {
            DIRECT: _samples("direct", 1.0, 1.0, 1.0),
            "semcache gRPC": [*_samples("bypass", 2.0, 2.5), Sample("error", 0.1)],
            "semcache HTTP": _samples("bypass", 3.0, 3.0, 3.0),
            "LiteLLM": _samples("bypass", *[peer_bypass_ms] * 3),
        }
    )
    gateways = [_Gateway("semcache gRPC", 7), _Gateway("semcache HTTP", 7), _Gateway("LiteLLM", 9)]
    served = {"semcache gRPC": 3, "semcache HTTP": 3, "LiteLLM": 3}
    bypass.add_cpu(gateways, {7: 1.0, 9: 1.0}, {7: 1.06, 9: 1.3}, served)
    hits = PhaseTally(
        {
            "semcache gRPC": _samples("exact_hit", 1.0, 1.0, 1.0),
            "semcache HTTP": [*_samples("exact_hit", 1.5, 1.5), Sample("miss", 9.0)],
            "LiteLLM": _samples("exact_hit", *[peer_hit_ms] * 3),
        }
    )
    config = {**PeersConfig().__dict__, "concurrency": 64}
    return build_report(
        {"bypass": bypass, "exact_hit_c1": hits}, {"health": []}, config, [], "LiteLLM"
    )


def _row(report: dict[str, Any], phase: str, gateway: str) -> dict[str, Any]:
    return next(r for r in report["rows"] if (r["phase"], r["gateway"]) == (phase, gateway))


def test_added_latency_pairs_each_call_with_the_direct_one_and_leaves_out_other_outcomes() -> None:
    report = _report(peer_hit_ms=20.0, peer_bypass_ms=31.0)

    grpc = _row(report, "bypass", "semcache gRPC")
    assert (grpc["requests"], grpc["left_out"], grpc["left_out_as"]) == (3, 1, {"error": 1})
    assert grpc["added_ms"] == pytest.approx(1.25)  # median of 1.0 and 1.5; the error left out
    assert _row(report, "bypass", "LiteLLM")["added_ms"] == pytest.approx(30.0)
    assert _row(report, "exact_hit_c1", "semcache HTTP")["left_out"] == 1  # a miss is not a hit
    # one process serves both semcache doors: its CPU over all their 6 calls
    assert grpc["cpu_s_per_1k"] == pytest.approx(10.0)
    assert grpc["cpu_scope"] == "process, both doors"
    assert _row(report, "bypass", "LiteLLM")["cpu_s_per_1k"] == pytest.approx(100.0)


def test_added_latency_is_over_the_questions_every_gateway_answered_as_expected() -> None:
    """Found from outside: semcache's misses left out its 12 semantic hits while the
    peer's kept all 300 questions, so the two medians were over different questions."""
    misses = PhaseTally(
        {
            DIRECT: _samples("direct", 1.0, 1.0, 1.0),
            "semcache gRPC": [Sample("semantic_hit", 1.5), *_samples("miss", 3.0, 3.0)],
            "LiteLLM": _samples("miss", 100.0, 31.0, 31.0),
        }
    )
    report = build_report({"miss": misses}, {"health": []}, PeersConfig().__dict__, [], "LiteLLM")
    assert _row(report, "miss", "semcache gRPC")["added_ms"] == pytest.approx(2.0)
    assert _row(report, "miss", "LiteLLM")["added_ms"] == pytest.approx(30.0)  # not 99 in it


def test_targets_are_the_peer_over_semcache_against_5x_and_10x() -> None:
    met = {t["target"]: t for t in _report(peer_hit_ms=20.0, peer_bypass_ms=31.0)["targets"]}
    missed = {t["target"]: t for t in _report(peer_hit_ms=4.0, peer_bypass_ms=6.0)["targets"]}

    hit = "semcache gRPC: exact hit p50 at c=1 ≥ 5× lower than the peer's"
    bypass = "semcache gRPC: added latency on a bypassed call ≥ 10× lower than the peer's"
    assert met[hit]["peer_over_semcache"] == pytest.approx(20.0) and met[hit]["met"]
    assert met[bypass]["peer_over_semcache"] == pytest.approx(24.0) and met[bypass]["met"]
    assert not missed[hit]["met"] and not missed[bypass]["met"]
    comparison = {row["metric"]: row for row in _report(20.0, 31.0)["comparison"]}
    assert comparison["exact hit p50 ms, c=1"]["grpc_over_peer"] == pytest.approx(0.05)


def test_litellm_config_puts_one_model_at_the_upstream_behind_its_in_memory_cache(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(
        litellm_config(tmp_path / "c.yaml", "http://127.0.0.1:9/v1").read_text()
    )

    (model,) = config["model_list"]
    assert model["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1"
    assert model["litellm_params"]["model"].startswith("openai/")
    assert config["litellm_settings"] == {"cache": True, "cache_params": {"type": "local"}}


def test_litellm_outcome_is_a_hit_only_when_its_reply_names_a_cache_key() -> None:
    assert litellm_outcome(200, {"x-litellm-cache-key": "k"}, "default") == "exact_hit"
    assert litellm_outcome(200, {}, "default") == "miss"
    assert litellm_outcome(200, {}, "refresh") == "miss"
    assert litellm_outcome(200, {"x-litellm-cache-key": "k"}, "bypass") == "exact_hit"
    assert litellm_outcome(200, {}, "bypass") == "bypass"
    assert litellm_outcome(500, {}, "default") == "error"


def test_a_hit_set_litellm_cannot_hold_is_refused_with_what_to_change() -> None:
    with pytest.raises(SystemExit, match="at most 100"):
        PeersConfig(hit_set=150).check()
    PeersConfig(peer="semcache", hit_set=150).check()


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "questions.jsonl"
    pairs = zip(QUESTIONS[::2], QUESTIONS[1::2], strict=True)
    rows = [{"a": a, "b": b, "same_answer": False} for a, b in pairs]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run_peers(
    tmp_path: Path, peer: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
    clean["SEMCACHE_EMBEDDING_CACHE_DIR"] = str(REPO / ".semcache" / "models")
    args = ["--peer", peer, "--requests", "4", "--hit-set", "3", "--hit-requests", "12"]
    args += ["--concurrency", "4", "--rounds", "2", "--warmup", "1"]
    args += ["--data", str(_data(tmp_path)), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "bench", "peers", *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((tmp_path / "out" / "peers.json").read_text())


def _check_run(result: subprocess.CompletedProcess[str], report: dict[str, Any]) -> None:
    import psutil

    assert "[bench] peers: bypass, 4 questions through 4 gateways each" in result.stderr
    assert "Task was destroyed" not in result.stderr and "Traceback" not in result.stderr
    assert report["command"].startswith("semcache bench peers --peer")
    rows = {(r["phase"], r["gateway"]): r for r in report["rows"]}
    caches = ["semcache gRPC", "semcache HTTP", report["peer"]]
    for phase, n in (("bypass", 4), ("miss", 4), ("exact_hit_c1", 4), ("exact_hit_cN", 12)):
        for gateway in caches:
            row = rows[(phase, gateway)]
            assert (row["requests"], row["left_out"]) == (n, 0), row  # every call as asked
    assert rows[("bypass", DIRECT)]["left_out"] == rows[("miss", DIRECT)]["left_out"] == 0
    for gateway in caches:
        assert isinstance(rows[("bypass", gateway)]["added_ms"], float)
        assert isinstance(rows[("miss", gateway)]["added_ms"], float)
        assert rows[("exact_hit_cN", gateway)]["per_s"] > 0
        assert rows[("exact_hit_cN", gateway)]["cpu_scope"] == "alone"
    assert [h["concurrency"] for h in report["floors"]["health"]] == [1, 4]
    assert len(report["targets"]) == 4
    # One process serves both doors: a miss must pay its own embedding on each.
    assert report["service_env"]["SEMCACHE_EMBEDDING_MEMO_SIZE"] == "0"
    for gateway in report["gateways"]:  # every process it started has ended
        assert not psutil.pid_exists(gateway["pid"]), gateway


@pytest.mark.slow
def test_bench_peers_runs_every_phase_against_a_stand_in_peer_and_stops_it(tmp_path: Path) -> None:
    result, report = _run_peers(tmp_path, "semcache")

    _check_run(result, report)
    assert report["peer"] == "peer: a second semcache (HTTP door)"
    assert (tmp_path / "out" / "peers.md").read_text().startswith("Command: `semcache bench peers")


@pytest.mark.slow
@pytest.mark.skipif(not litellm_installed(), reason="LiteLLM's venv .semcache/peers-venv is absent")
def test_bench_peers_against_the_real_litellm_proxy(tmp_path: Path) -> None:
    result, report = _run_peers(tmp_path, "litellm")

    _check_run(result, report)
    assert report["peer"].startswith("LiteLLM proxy")
