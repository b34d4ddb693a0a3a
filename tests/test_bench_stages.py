"""`benchmarks.stages`: the service's own account of a phase's time per stage,
read from its metrics endpoint before and after the phase (issue 13: where a
semantic hit's and a miss's time goes comes from the command, not a hand-run
profile)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.floors import FloorRecorder
from benchmarks.latency import markdown, measure
from benchmarks.stages import StageMeter, parse, stage_rows
from service.metrics import Metrics, start_metrics_server
from tests.conftest import Service


def test_a_phase_reports_each_stage_it_ran_with_its_own_calls_and_mean() -> None:
    metrics = Metrics()
    metrics.observe_stage("embed", 0.004)  # before the phase: not counted
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        meter = StageMeter(server.port)
        meter.start()
        metrics.observe_stage("embed", 0.005)
        metrics.observe_stage("embed", 0.007)
        metrics.observe_stage("search", 0.0005)
        metrics.observe_stage("lookup", 0.0001)
        meter.stop()
    finally:
        server.close()

    assert meter.rows() == [
        {"stage": "lookup", "calls": 1, "mean_ms": 0.1},
        {"stage": "embed", "calls": 2, "mean_ms": 6.0},
        {"stage": "search", "calls": 1, "mean_ms": 0.5},
    ]


def test_unknown_stages_follow_the_known_ones_and_idle_ones_are_left_out() -> None:
    before = {"embed": (1.0, 100.0), "verify": (0.5, 100.0)}
    after = {"embed": (1.0, 100.0), "verify": (0.6, 101.0), "rerank": (0.003, 1.0)}

    assert stage_rows(before, after) == [
        {"stage": "verify", "calls": 1, "mean_ms": 100.0},
        {"stage": "rerank", "calls": 1, "mean_ms": 3.0},
    ]


def test_other_series_are_not_read_as_stages() -> None:
    text = (
        "# TYPE semcache_request_duration_seconds histogram\n"
        'semcache_request_duration_seconds_sum{rpc="Complete",cache="miss"} 9.0\n'
        'semcache_request_duration_seconds_count{rpc="Complete",cache="miss"} 3.0\n'
        "# TYPE semcache_stage_duration_seconds histogram\n"
        'semcache_stage_duration_seconds_bucket{stage="route",le="+Inf"} 2.0\n'
        'semcache_stage_duration_seconds_sum{stage="route"} 0.002\n'
        'semcache_stage_duration_seconds_count{stage="route"} 2.0\n'
    )

    assert parse(text) == {"route": (0.002, 2.0)}


class _Meter(StageMeter):
    def __init__(self, calls: list[str]) -> None:
        super().__init__(0)
        self.calls = calls

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


async def test_latency_reads_the_stages_around_the_pairs_only(service: Service) -> None:
    """The warm-up's calls (a first model run, a first search) are not the pairs'."""
    calls: list[str] = []

    class Recorder(FloorRecorder):
        def add_health(self, concurrency: int, round_trip_ms: float) -> None:
            calls.append("pair")

        def warm_up(self, text: str) -> None:
            pass

        def add_embed(self, text: str) -> None:
            pass

    pairs = [("What is a cache?", "What does a cache do?"), ("What is RAM?", "Define RAM")]
    target = f"127.0.0.1:{service.server.port}"

    await asyncio.to_thread(measure, target, pairs, Recorder(None, ["x"]), _Meter(calls))

    assert calls == ["start", "pair", "pair", "stop"]


@pytest.mark.parametrize("stages", [[], [{"stage": "embed", "calls": 2, "mean_ms": 6.0}]])
def test_the_latency_report_shows_the_stage_table_only_when_it_was_measured(
    stages: list[dict[str, object]],
) -> None:
    floors = {
        "health": [],
        "embedder": {"model": "m", "threads": 1, "texts": 0, "embed_p50_ms": 5.0},
    }
    report = {
        "embedding_backend": "m",
        "machine": "a machine",
        "floors": floors,
        "rows": [],
        "stages": stages,
        "targets": [],
    }

    text = markdown(report)

    assert ("| embed | 2 | 6.000 |" in text) is bool(stages)
    assert ("In service, by the service's own metrics" in text) is bool(stages)
