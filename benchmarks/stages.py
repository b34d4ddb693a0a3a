"""Where a request's time in the service goes, by the service's own account.

The service times each stage of its request path into the histogram
`semcache_stage_duration_seconds{stage}` (README, "Observability"). A
benchmark that starts its own service gives it a metrics port, reads the
histogram's sums and counts when its timed phase starts and again when it
ends, and reports each stage's calls and mean time over the phase: the
embedding with its thread hop, the search, the guard, the upstream call, the
store. Means, not percentiles: a Prometheus histogram keeps only sums and
counts to that precision.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.report import Row

METRIC = "semcache_stage_duration_seconds"
# The path's order (README, "Observability"); a stage the service adds later is listed after.
ORDER = ("lookup", "embed", "search", "verify", "route", "upstream", "store")
TIMEOUT_S = 10.0

Totals = dict[str, tuple[float, float]]  # stage -> (seconds, calls)


def parse(text: str) -> Totals:
    """Each stage's (sum of seconds, count) in a Prometheus text exposition."""
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if stage is None:
                continue
            slot = totals.setdefault(stage, [0.0, 0.0])
            if sample.name == METRIC + "_sum":
                slot[0] = sample.value
            elif sample.name == METRIC + "_count":
                slot[1] = sample.value
    return {stage: (seconds, calls) for stage, (seconds, calls) in totals.items()}


class StageMeter:
    """Reads the service's stage totals at `start()` and `stop()`; `rows()` is the difference."""

    def __init__(self, metrics_port: int, host: str = "127.0.0.1") -> None:
        self.url = f"http://{host}:{metrics_port}/metrics"
        self._before: Totals = {}
        self._after: Totals = {}

    def read(self) -> Totals:
        with urllib.request.urlopen(self.url, timeout=TIMEOUT_S) as response:
            return parse(response.read().decode("utf-8"))

    def start(self) -> None:
        self._before = self.read()

    def stop(self) -> None:
        self._after = self.read()

    def rows(self) -> list[Row]:
        return stage_rows(self._before, self._after)


def stage_rows(before: Totals, after: Totals) -> list[Row]:
    """One row per stage run between the two readings: calls and mean ms, in path order."""
    known = [stage for stage in ORDER if stage in after]
    stages = known + sorted(stage for stage in after if stage not in ORDER)
    rows: list[Row] = []
    for stage in stages:
        seconds, calls = after[stage]
        seconds_before, calls_before = before.get(stage, (0.0, 0.0))
        calls = round(calls - calls_before)
        if calls <= 0:
            continue
        mean_ms = (seconds - seconds_before) * 1000 / calls
        rows.append({"stage": stage, "calls": calls, "mean_ms": round(mean_ms, 3)})
    return rows


COLUMNS = (("stage", "stage"), ("calls", "calls"), ("mean_ms", "mean ms"))
