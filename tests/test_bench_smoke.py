"""Fast checks of the benchmark harness: the baseline, the workload, the load generator.

No timing is asserted; these only catch a harness that would report nonsense.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.baselines.reference_cache import ReferenceSemanticCache
from benchmarks.load import ZipfWorkload, measure_phase, requests_for
from benchmarks.report import ProcessSampler, markdown_table, percentile
from tests.conftest import Service

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
