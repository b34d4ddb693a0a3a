"""Fast checks of the benchmark harness: the baseline, the workload, the load generator.

No timing is asserted; these only catch a harness that would report nonsense.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.baselines.reference_cache import ReferenceSemanticCache
from benchmarks.load import ZipfWorkload, exact_hit_prompts, measure_phase, requests_for
from benchmarks.report import ProcessSampler, markdown_table, percentile
from tests.conftest import Service, bench_env, run_bench_cli

PAIRS = [(f"question {i}", f"paraphrase {i}") for i in range(50)]


def _unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_reference_cache_returns_the_most_similar_entry_above_the_threshold() -> None:
    cache = ReferenceSemanticCache(threshold=0.9)
    cache.add("north", _unit(0, 1, 0), "up")
    cache.add("east", _unit(1, 0, 0), "right")
    cache.add("north-east", _unit(1, 1, 0), "diagonal")

    match = cache.lookup(_unit(0.1, 1, 0))

    assert match is not None
    assert (match.question, match.answer) == ("north", "up")
    assert match.similarity == pytest.approx(0.995, abs=1e-3)
    assert cache.lookup(_unit(0, 0, 1)) is None
    assert cache.get("anything", lambda _: _unit(1, 0.05, 0)) == "right"


def test_zipf_workload_is_deterministic_for_a_seed() -> None:
    first = ZipfWorkload(PAIRS, seed=7).draw(300)

    assert ZipfWorkload(PAIRS, seed=7).draw(300) == first
    assert ZipfWorkload(PAIRS, seed=8).draw(300) != first


def test_zipf_workload_skews_towards_the_first_pairs_and_mixes_paraphrases() -> None:
    asks = ZipfWorkload(PAIRS, s=1.1, paraphrase_p=0.3, seed=0).draw(5000)
    counts = Counter(ask.pair for ask in asks)

    assert counts[0] > counts[1] > counts[9] > counts[49]
    assert counts[0] / len(asks) == pytest.approx(
        1 / sum(1 / k**1.1 for k in range(1, 51)), rel=0.1
    )
    paraphrased = [ask for ask in asks if ask.paraphrase]
    assert len(paraphrased) / len(asks) == pytest.approx(0.3, abs=0.03)
    assert all(ask.prompt == PAIRS[ask.pair][1] for ask in paraphrased)


async def test_load_phase_reports_outcomes_costs_and_latency(service: Service) -> None:
    prompts = ["What is machine learning?"] * 3 + ["What does machine learning mean?"]
    requests = requests_for(prompts, "smoke")

    phase = await measure_phase(service.stub, requests, name="smoke", concurrency=2, stream=False)
    streamed = await measure_phase(service.stub, requests, name="smoke", concurrency=1, stream=True)

    summary = phase.summary()
    assert summary["requests"] == 4 and summary["errors"] == 0
    assert {"throughput_rps", "hit_rate", "p50_ms", "p95_ms", "p99_ms", "cost_saved_usd"} <= set(
        summary
    )
    assert "miss" in summary["by_outcome"]
    assert summary["cost_spent_usd"] > 0
    assert streamed.summary()["hit_rate"] == 1.0
    assert streamed.summary()["cost_saved_usd"] > 0


async def test_the_exact_hit_phase_asks_only_questions_stored_under_their_own_words() -> None:
    """A question served from a neighbour when first asked is a semantic hit when
    asked again: it would put the embedder into the exact-hit phase's times."""
    from service._proto.semcache.v1 import semcache_pb2 as pb

    answered_from = {"stored": pb.CACHE_STATUS_EXACT_HIT, "neighbour": pb.CACHE_STATUS_SEMANTIC_HIT}
    asked: list[tuple[str, int]] = []

    class Stub:
        async def Complete(self, request: Any, **options: Any) -> Any:
            asked.append((request.prompt, request.cache_policy))
            return pb.CompleteResponse(cache_status=answered_from[request.prompt])

    questions = ["stored", "neighbour"]
    assert await exact_hit_prompts(Stub(), questions, "ns") == ["stored"]  # type: ignore[arg-type]
    assert asked == [(q, pb.CACHE_POLICY_NO_STORE) for q in questions]


def test_process_sampler_sees_this_process() -> None:
    pytest.importorskip("psutil")
    with ProcessSampler(os.getpid(), interval_s=0.01) as sampler:
        deadline = time.perf_counter() + 0.1
        while time.perf_counter() < deadline:
            pass

    usage = sampler.usage()
    assert usage.samples >= 1
    assert usage.rss_max_mib > 10


def test_report_helpers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert percentile([], 0.99) == 0.0
    table = markdown_table([{"name": "a", "ms": 1.5}], (("name", "name"), ("ms", "p50 ms")))
    assert table.splitlines() == ["| name | p50 ms |", "|---|---:|", "| a | 1.500 |"]


def test_grouping_bench_catalogue_groups_the_benchmarked_model(tmp_path: Path) -> None:
    from benchmarks.grouping import MODEL, grouped_catalogue
    from service.llm.catalogue import PromptGrouping, load_catalogue

    catalogue = load_catalogue(grouped_catalogue(tmp_path, 8, 2), {})
    grouping = catalogue.provider_of(MODEL).grouping
    assert grouping == PromptGrouping(max_prompts=8, max_in_flight=2)


# --- floors, data paths, progress and clean shutdown, compare's symmetry ---------------

REPO = Path(__file__).resolve().parents[1]
QQP_ROWS = [
    {
        "a": "How do I learn Python quickly?",
        "b": "What is the fastest way to learn Python?",
        "same_answer": True,
    },
    {
        "a": "What is the capital of France?",
        "b": "Which city is the capital of France?",
        "same_answer": True,
    },
    {"a": "How do I cook rice?", "b": "How do I cook pasta?", "same_answer": False},
    {"a": "Why is the sky blue?", "b": "What makes the sky look blue?", "same_answer": True},
    {"a": "Is coffee bad for you?", "b": "Is tea bad for you?", "same_answer": False},
    {
        "a": "How can I sleep better?",
        "b": "What helps me sleep better at night?",
        "same_answer": True,
    },
]


def _qqp_file(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in QQP_ROWS))
    return path


def test_bench_quality_on_a_few_pairs_shows_progress_and_leaves_no_pending_task(
    tmp_path: Path,
) -> None:
    result = run_bench_cli(
        "quality",
        "--datasets",
        "qqp",
        "--data",
        str(_qqp_file(tmp_path)),
        "--limit",
        "5",
        "--out",
        str(tmp_path / "out"),
    )

    assert result.returncode == 0, result.stderr
    assert "[bench] quality qqp: setting 1/23" in result.stderr
    assert "Task was destroyed" not in result.stderr
    rows = json_rows(tmp_path / "out" / "quality.json")
    assert len(rows) == 23  # 5 pairs, one group each; 11 thresholds, 9 guards, 3 deltas
    assert [r["value"] for r in rows if r["mode"] == "budget"] == [0.005, 0.01, 0.02]
    assert "Error budget δ = 0.01" in result.stdout


def json_rows(path: Path) -> list[dict[str, object]]:
    import json

    summary: list[dict[str, object]] = json.loads(path.read_text())["summary"]
    return summary


def test_missing_bench_data_is_one_line_that_says_how_to_point_at_it(tmp_path: Path) -> None:
    result = run_bench_cli("latency", env={"SEMCACHE_BENCH_DATA_DIR": str(tmp_path / "nowhere")})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(tmp_path / "nowhere" / "qqp_dev.jsonl") in lines[0]
    assert "SEMCACHE_BENCH_DATA_DIR" in lines[0] and "--data" in lines[0]


def test_bench_data_comes_from_the_setting_else_beside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.data import data_dir, data_file

    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    monkeypatch.delenv("SEMCACHE_BENCH_DATA_DIR", raising=False)
    assert data_dir() == REPO.parent / "shared" / "data"

    (tmp_path / "qqp_dev.jsonl").write_text("")
    monkeypatch.setenv("SEMCACHE_BENCH_DATA_DIR", str(tmp_path))
    assert data_file() == tmp_path / "qqp_dev.jsonl"


async def test_floors_pool_health_checks_and_single_text_embeddings() -> None:
    from benchmarks.floors import FloorRecorder, bare_health_server
    from service.embedding.fake import HashingEmbedder

    floors = FloorRecorder(HashingEmbedder(), ["one text", "another text"], workers=2)
    async with bare_health_server() as channel:
        await floors.health_burst(channel, 4, n=20)
        await floors.health_burst(channel, 4, n=10)
    floors.embed_burst(5)
    report = floors.report()

    assert [row["concurrency"] for row in report["health"]] == [4]
    assert report["health"][0]["health_checks"] == 30
    assert report["health"][0]["health_p50_ms"] > 0 and report["health"][0]["health_rps"] > 0
    assert report["embedder"]["texts"] == 5 and report["embedder"]["workers"] == 2
    assert report["embedder"]["embed_texts_per_s"] > 0


def _hit_row(phase: str, concurrency: int, p50_ms: float, rps: float) -> dict[str, object]:
    return {
        "phase": phase,
        "mode": "unary",
        "concurrency": concurrency,
        "p50_ms": p50_ms,
        "throughput_rps": rps,
    }


def test_load_states_each_phase_as_ratios_to_the_floors_and_checks_the_targets() -> None:
    from benchmarks.load_report import add_ratios, targets

    health = [
        {"concurrency": 1, "health_p50_ms": 1.0, "health_rps": 900.0},
        {"concurrency": 64, "health_p50_ms": 40.0, "health_rps": 1600.0},
    ]
    report: dict[str, object] = {
        "floors": {
            "health": health,
            "embedder": {"texts": 10, "embed_p50_ms": 3.0, "embed_texts_per_s": 300.0},
        },
        "zipf": [],
        "hits": [
            _hit_row("exact_hit", 1, 1.1, 800.0),
            _hit_row("exact_hit", 64, 50.0, 1200.0),
            _hit_row("semantic_hit", 1, 5.5, 180.0),
            _hit_row("semantic_hit", 64, 300.0, 210.0),
        ],
    }

    add_ratios(report)

    exact_1, exact_64, semantic_1, semantic_64 = report["hits"]  # type: ignore[misc]
    assert exact_1["x_health_p50"] == 1.1
    assert exact_64["x_health_rps"] == 0.75
    assert semantic_1["over_floor_ms"] == 1.5
    assert semantic_64["x_embed_rps"] == 0.7
    assert [(t["measured"], t["met"]) for t in targets(report)] == [
        (1.1, True),
        (0.75, False),
        (1.5, False),
        (0.7, False),
    ]


async def test_compare_asks_every_lookup_the_same_queries_after_the_same_warmup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import compare
    from benchmarks.floors import FloorRecorder
    from benchmarks.quality import MemoEmbedder
    from service.cache.semantic import SemanticCache
    from service.embedding.fake import HashingEmbedder

    calls: Counter[str] = Counter()

    def counting(name: str, inner: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return inner(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        ReferenceSemanticCache, "lookup", counting("reference", ReferenceSemanticCache.lookup)
    )
    monkeypatch.setattr(compare, "_matmul_best", counting("matmul", compare._matmul_best))
    monkeypatch.setattr(SemanticCache, "lookup", counting("semcache", SemanticCache.lookup))
    memo = MemoEmbedder(HashingEmbedder())
    pairs = [(row["a"], row["b"]) for row in QQP_ROWS]
    corpus = compare.build_corpus(memo, pairs, 40, queries=6)  # type: ignore[arg-type]

    rows = await compare.compare_size(memo, corpus, tmp_path, 2, FloorRecorder(None, []))

    assert [row["lookup"] for row in rows] == [
        "reference (Python loop)",
        "numpy matmul brute force",
        "semcache (as served, no optimize)",
    ]
    assert {row["queries"] for row in rows} == {6}
    assert calls == {"reference": 2 + 6, "matmul": 2 + 6, "semcache": 2 + 6}
    assert all("hits" in row and "same_hit_as_reference" in row for row in rows)


def test_a_service_that_cannot_start_stops_the_benchmark_at_once_with_its_reason(
    tmp_path: Path,
) -> None:
    from benchmarks.procs import ServiceExited, run_stack

    started = time.monotonic()
    with (
        pytest.raises(ServiceExited, match="SEMCACHE_GRPC_PORT='-1' is invalid"),
        run_stack(tmp_path, extra_env={"SEMCACHE_GRPC_PORT": "-1"}),
    ):
        pass
    assert time.monotonic() - started < 100  # not the 120 s wait for SERVING


def test_scale_builds_then_probes_a_small_store_in_child_processes(tmp_path: Path) -> None:
    """`bench scale`'s build and probe children run to the end (a changed helper
    signature once failed every build while the command still wrote its report)."""
    import numpy as np

    from benchmarks.scale import Job, run_child

    rng = np.random.default_rng(7)
    paths = tmp_path / "real.npy", tmp_path / "queries.npy"
    for path, count in zip(paths, (40, 12), strict=True):
        vectors = rng.standard_normal((count, 8)).astype(np.float32)
        np.save(path, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    results = {}
    for kind in ("build", "probe", "recall"):
        job = Job(kind, tmp_path / "shard", "int8-disk", 300, *paths)
        results[kind] = run_child(job, time_limit_s=120)
        assert results[kind]["finished"], results[kind]
    assert results["probe"]["points"] == 300 and results["probe"]["lookup"]["p50_ms"] > 0
    # the exact search of the recall check runs in its own process, not the lookups'
    assert "recall_at_1" not in results["probe"]
    assert results["recall"]["recall_at_1"] > 0 and results["recall"]["peak_rss_mib"] > 0


@pytest.mark.parametrize("bench", ["latency", "load", "gptcache"])
def test_hit_path_benchmarks_start_the_service_without_the_error_budget_by_default(
    bench: str,
) -> None:
    """The hit-path benchmarks time the guard's own accept unless told otherwise: under
    the budget a fresh cache explores most first paraphrases (the gptcache comparison
    once asked 30 questions of 500 because of it), so the hit path would go untimed."""
    from service.cli import build_parser

    args = build_parser().parse_args(["bench", bench])
    assert args.error_budget == "off"
    assert build_parser().parse_args(["bench", bench, "--error-budget", "on"]).error_budget == "on"


async def test_overhead_direct_call_reads_a_whole_reply_and_a_streams_first_event() -> None:
    """`bench overhead`'s direct side is a thin HTTP client, like the gRPC stub it is
    compared with (the `openai` SDK's typed models once made semcache look faster
    than no gateway at all)."""
    import aiohttp

    from benchmarks.overhead import direct_call
    from semcache_simulator import SimulatorConfig, UpstreamSimulator

    async with (
        UpstreamSimulator(SimulatorConfig(ttft_ms=0, ms_per_token=0)) as simulator,
        aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as session,
    ):
        unary = await direct_call(session, simulator.base_url, "What is a cache?", False)
        stream = await direct_call(session, simulator.base_url, "What is a cache?", True)
    assert unary.outcome == stream.outcome == "direct"
    assert 0 < stream.first_event_ms <= stream.round_trip_ms
    assert unary.first_event_ms == 0 and unary.round_trip_ms > 0


def test_overhead_starts_the_service_with_the_embedding_memo_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both phases ask the same questions: with the memo on, the streamed misses reused
    the unary phase's vectors and were timed without their embedding (a streamed miss
    came out 2.4 ms cheaper than a unary one, and its target read "met")."""
    import contextlib

    import benchmarks.floors
    from benchmarks import overhead

    started_with: list[dict[str, str]] = []

    @contextlib.contextmanager
    def fake_stack(workdir: Path, extra_env: dict[str, str]) -> Iterator[None]:
        started_with.append(extra_env)
        raise RuntimeError("stop here")
        yield

    monkeypatch.setattr(overhead, "data_file", lambda data: tmp_path)
    monkeypatch.setattr(overhead, "distinct_questions", lambda n, path: ["q"] * n)
    monkeypatch.setattr(benchmarks.floors, "embedder_from_settings", lambda backend: (None, 1))
    monkeypatch.setattr(overhead, "FloorRecorder", lambda *args: None)
    monkeypatch.setattr(overhead, "run_stack", fake_stack)
    with pytest.raises(RuntimeError, match="stop here"):
        overhead.run(tmp_path, 3, {"SEMCACHE_EMBEDDING_MEMO_SIZE": "512", "X": "1"})
    assert started_with == [{"SEMCACHE_EMBEDDING_MEMO_SIZE": "0", "X": "1"}]


async def test_a_phase_at_concurrency_1_takes_its_health_floor_between_its_own_requests(
    service: Service,
) -> None:
    """A burst of health checks runs on warm caches and reads faster than a check
    between requests: a c=1 p50 is scaled by checks taken between its own
    requests. The embedder floor stays a burst before every phase."""
    from benchmarks.floors import EMBED_BURST, FloorRecorder
    from benchmarks.load import Driver
    from service.embedding.fake import HashingEmbedder

    floors = FloorRecorder(HashingEmbedder(), ["a text for the bursts"])
    driver = Driver(service.channel, floors, service_pid=os.getpid())
    prompts = ["What is machine learning?", "What is a vector?", "What is a cache?"]

    await driver.phase(requests_for(prompts, "floors"), "zipf", "unary", 1)
    await driver.phase(requests_for(prompts, "floors"), "zipf", "unary", 2)
    report = floors.report()

    by_concurrency = {row["concurrency"]: row["health_checks"] for row in report["health"]}
    assert by_concurrency[1] == len(prompts)  # one after each request, no burst
    assert by_concurrency[2] == 200  # a burst before the phase
    assert report["embedder"]["texts"] == 2 * EMBED_BURST  # a burst before each phase


async def test_work_between_requests_is_left_out_of_the_phase_wall_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import benchmarks.load as load
    from service._proto.semcache.v1 import semcache_pb2 as pb

    clock = [0.0]
    monkeypatch.setattr(load.time, "perf_counter", lambda: clock[0])
    asked: list[str] = []

    class Stub:
        async def Complete(self, request: Any, **options: Any) -> Any:
            clock[0] += 1.0  # each request takes a second
            return pb.CompleteResponse(cache_status=pb.CACHE_STATUS_MISS)

    async def between(request: Any) -> None:
        asked.append(request.prompt)
        clock[0] += 10.0  # and the floors after it ten

    requests = requests_for(["one", "two"], "ns")
    samples, wall_s = await load.drive(Stub(), requests, 1, False, between=between)  # type: ignore[arg-type]

    assert [s.round_trip_ms for s in samples] == [1000.0, 1000.0]
    assert asked == ["one", "two"] and wall_s == 2.0
    with pytest.raises(ValueError, match="concurrency 1"):
        await load.drive(Stub(), requests, 2, False, between=between)  # type: ignore[arg-type]


def test_a_paused_window_is_left_out_of_the_mean_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psutil")
    import benchmarks.report as report

    wall, cpu = [0.0], [0.0]
    monkeypatch.setattr(report.time, "perf_counter", lambda: wall[0])
    monkeypatch.setattr(report, "_cpu_s", lambda process: cpu[0])

    with ProcessSampler(os.getpid(), interval_s=0.01) as sampler:
        wall[0], cpu[0] = 1.0, 0.5  # half a core while not paused
        with sampler.paused():
            wall[0], cpu[0] = 11.0, 0.5  # idle for ten seconds of floors
        wall[0], cpu[0] = 12.0, 1.0

    assert sampler.usage().cpu_mean_pct == pytest.approx(50.0)


async def test_latency_embeds_each_pairs_a_untimed_before_its_timed_b(service: Service) -> None:
    """The service embeds `a` (the miss) a moment before `b` (the semantic hit), on
    caches warm with its model; a floor of `b` alone ran after the service's two
    embeddings had pushed the benchmark's model out of the shared caches, read
    slower than the service's own embedding, and flattered the semantic hit."""
    from benchmarks.floors import FloorRecorder
    from benchmarks.latency import measure

    calls: list[tuple[str, object]] = []

    class Recorder(FloorRecorder):
        def add_health(self, concurrency: int, round_trip_ms: float) -> None:
            calls.append(("health", concurrency))

        def warm_up(self, text: str) -> None:
            calls.append(("untimed", text))

        def add_embed(self, text: str) -> None:
            calls.append(("timed", text))

    floors = Recorder(None, ["x"])
    calls.clear()
    pairs = [("What is a cache?", "What does a cache do?"), ("What is RAM?", "Define RAM")]
    target = f"127.0.0.1:{service.server.port}"

    await asyncio.to_thread(measure, target, pairs, floors)

    assert calls[-6:] == [
        ("health", 1),
        ("untimed", pairs[0][0]),
        ("timed", pairs[0][1]),
        ("health", 1),
        ("untimed", pairs[1][0]),
        ("timed", pairs[1][1]),
    ]


def test_indexing_grows_three_stores_and_the_engine_default_never_rebuilds_this_early(
    tmp_path: Path,
) -> None:
    from benchmarks.indexing import grow, markdown, summarise

    rows = grow(points=400, step=200, root=tmp_path)
    summary = summarise(rows)

    default = [r for r in rows if r["variant"] == "engine default"]
    tuned = [r for r in rows if r["variant"] == "index after 200"]
    child = [r for r in rows if r["variant"] == "index after 200, in a child"]
    assert [r["points"] for r in default] == [r["points"] for r in tuned] == [200, 400]
    assert [r["points"] for r in child] == [200, 400]
    assert not any(r["rebuilt"] for r in default)  # the engine waits for 10 MB of vectors
    assert [r["indexed"] for r in tuned] == [r["indexed"] for r in child] == [200, 400]
    assert [s["rebuilds"] for s in summary] == [0, 2, 2]
    assert all(r["detached_s"] > 0 and r["copy_s"] > 0 for r in child), "from the store"
    assert all(r["detached_s"] == r["copy_s"] == 0 for r in tuned + default)
    assert all(r["search_p50_ms"] > 0 for r in rows)
    assert "longest_pause_s_x_default" in summary[2]
    assert "index after 200, in a child: pause s" in markdown(
        {"points": 400, "step": 200, "machine": "m", "summary": summary, "rows": rows}
    )


def test_the_longest_pause_spans_the_rebuild_between_ticks() -> None:
    from benchmarks.indexing import Ticker

    ticker = Ticker(ticks=[0.0, 0.001, 0.002, 0.5, 0.501])
    assert ticker.longest_pause_s(0.0021, 0.4) == pytest.approx(0.498)  # lock held throughout
    assert ticker.longest_pause_s(0.0005, 0.0015) == pytest.approx(0.001)  # a thread ran


async def test_upstream_asks_every_client_every_question_in_rotated_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bench upstream` is symmetric: the same questions, warm-up and sample size for each
    client, the order rotated call by call."""
    from benchmarks import upstream_client

    asked: list[tuple[str, str]] = []

    def fake_clients(base_url: str, session: object) -> tuple[dict[str, Any], list[Any]]:
        def caller(name: str) -> Any:
            async def call(question: str) -> None:
                asked.append((name, question))

            return call

        return {name: caller(name) for name in upstream_client.VARIANTS}, []

    monkeypatch.setattr(upstream_client, "_clients", fake_clients)
    questions = [f"q{i}" for i in range(6)]
    measured = await upstream_client.measure("http://unused", questions, warmup=2)

    for question in questions:
        assert sorted(name for name, q in asked if q == question) == sorted(
            upstream_client.VARIANTS
        )
    width = len(upstream_client.VARIANTS)
    firsts = [asked[index * width][0] for index in range(len(questions))]
    assert firsts == [upstream_client.VARIANTS[index % width] for index in range(6)]
    assert {len(values) for values in measured["wall_ms"].values()} == {4}
    rows = {row["variant"]: row for row in upstream_client.summarise(measured)}
    assert list(rows) == list(upstream_client.VARIANTS)
    assert rows["thin"]["p50_over_thin_ms"] == rows["thin stream"]["p50_over_thin_ms"] == 0.0


def test_ctrl_c_stops_a_benchmark_with_one_line_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    import signal

    import psutil

    with subprocess.Popen(
        [sys.executable, "-m", "service.cli", "bench", "latency", "--out", str(tmp_path)],
        cwd=REPO,
        env=bench_env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal's Ctrl-C reaches it
    ) as bench:
        assert bench.stderr is not None
        for line in bench.stderr:  # timed pairs: the service and simulator are up
            if "[bench] latency: 25/" in line:
                break
        started = psutil.Process(bench.pid).children(recursive=True)
        assert started, "the benchmark runs a service and a simulator"

        os.killpg(bench.pid, signal.SIGINT)
        rest = bench.stderr.read()
        assert bench.wait(timeout=60) == 130

    assert "Traceback" not in rest
    assert "semcache bench latency: interrupted" in rest
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive
