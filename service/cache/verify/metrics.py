"""Verification's Prometheus series, read from the counters at every scrape.

semcache_verify_requests_total{tenant, namespace}           lookups the decision saw
semcache_verify_semantic_served_total{tenant, namespace}    semantic hits served
semcache_verify_explored_total{tenant, namespace, kind}     upstream calls to judge a
                                                            candidate (uncertain, audit)
semcache_verify_judged_total{tenant, namespace, verdict}    explorations judged (same, wrong)
semcache_verify_feedback_total{tenant, namespace, verdict}  SubmitFeedback (correct, wrong)
semcache_verify_error_rate{tenant, namespace, estimate}     wrong answers / requests:
                                                            expected, audited, audited_low,
                                                            audited_high (95% Wilson)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.cache.verify.counters import OTHER_NAMESPACES, VerificationCounters
from service.domain import added_up

__all__ = ["VerificationCollector"]

_LABELS = ("tenant", "namespace")
Snapshot = Callable[[], Mapping[tuple[str, str], VerificationCounters]]


def _families() -> dict[str, CounterMetricFamily | GaugeMetricFamily]:
    return {
        "requests": CounterMetricFamily(
            "semcache_verify_requests", "Lookups the hit decision saw.", labels=_LABELS
        ),
        "served": CounterMetricFamily(
            "semcache_verify_semantic_served", "Semantic hits served.", labels=_LABELS
        ),
        "explored": CounterMetricFamily(
            "semcache_verify_explored",
            "Requests sent upstream to judge a cached candidate (kind: uncertain, audit).",
            labels=(*_LABELS, "kind"),
        ),
        "judged": CounterMetricFamily(
            "semcache_verify_judged",
            "Explorations the answer judge decided (verdict: same, wrong).",
            labels=(*_LABELS, "verdict"),
        ),
        "feedback": CounterMetricFamily(
            "semcache_verify_feedback",
            "SubmitFeedback calls recorded (verdict: correct, wrong).",
            labels=(*_LABELS, "verdict"),
        ),
        "error_rate": GaugeMetricFamily(
            "semcache_verify_error_rate",
            "Estimated wrong answers / requests on this replica since it started (estimate:"
            " expected = the decision's own; audited, audited_low, audited_high = from random"
            " audits, with a 95% Wilson interval).",
            labels=(*_LABELS, "estimate"),
        ),
    }


class VerificationCollector(Collector):
    """Reads `snapshot` at scrape time (on the metrics server's thread: it must only read)."""

    def __init__(self, snapshot: Snapshot, tenant_label: Callable[[str], str] = str) -> None:
        self._snapshot = snapshot
        self._tenant_label = tenant_label

    def _rows(self) -> list[tuple[tuple[str, str], VerificationCounters]]:
        """The snapshot's rows; tenants without a label of their own (past the metrics'
        bound on tenants) together in one row, under their label and `OTHER_NAMESPACES`."""
        named: list[tuple[tuple[str, str], VerificationCounters]] = []
        others: dict[str, list[VerificationCounters]] = {}
        for (tenant, namespace), counters in self._snapshot().items():
            label = self._tenant_label(tenant)
            if label == tenant:
                named.append(((tenant, namespace), counters))
            else:
                others.setdefault(label, []).append(counters)
        rows = [
            ((label, OTHER_NAMESPACES), added_up(VerificationCounters(), c))
            for label, c in others.items()
        ]
        return sorted(named + rows, key=lambda row: row[0])

    def describe(self) -> Iterable[Metric]:
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _families()
        for (tenant, namespace), c in self._rows():
            labels = [tenant, namespace]
            families["requests"].add_metric(labels, c.requests)
            families["served"].add_metric(labels, c.semantic_served)
            families["explored"].add_metric([*labels, "uncertain"], c.explored - c.audits)
            families["explored"].add_metric([*labels, "audit"], c.audits)
            families["judged"].add_metric([*labels, "same"], c.judged_same)
            families["judged"].add_metric([*labels, "wrong"], c.judged_wrong)
            families["feedback"].add_metric([*labels, "correct"], c.feedback_correct)
            families["feedback"].add_metric([*labels, "wrong"], c.feedback_wrong)
            audited, low, high = c.audited_error_rate()
            rates = {"expected": c.expected_error_rate, "audited": audited}
            rates |= {"audited_low": low, "audited_high": high}
            for estimate, value in rates.items():
                families["error_rate"].add_metric([*labels, estimate], value)
        return list(families.values())
