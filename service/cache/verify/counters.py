"""What verification saw, per (tenant, namespace): the numbers behind the live error estimate.

Kept in this replica's memory since it started, like `cache.stats.CacheStats`.
Two estimates of the error rate (wrong answers / looked-up requests) are given:

- `expected_error_rate`: the decision's own, the sum of P(wrong) over the semantic
  hits it served, divided by requests. It is only as good as the model.
- `audited_error_rate` with a 95% Wilson interval: a random `audit_share` of would-be
  semantic hits is explored instead of served, and judged; the share judged wrong,
  times the share of requests served semantically, estimates the error rate without
  trusting the model. Exact hits count as right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["OTHER_NAMESPACES", "CounterBook", "VerificationCounters", "wilson_interval"]

_Z95 = 1.959964


def wilson_interval(wrong: int, trials: int, z: float = _Z95) -> tuple[float, float, float]:
    """(estimate, low, high) of a proportion `wrong / trials`; (0, 0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 0.0, 1.0
    p = wrong / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class VerificationCounters:
    """One (tenant, namespace)'s verification counts on this replica."""

    requests: int = 0  # lookups the decision saw (bypasses excluded)
    semantic_served: int = 0  # semantic hits served
    expected_wrong: float = 0.0  # sum of P(wrong) over semantic_served
    explored: int = 0  # upstream calls made to judge an uncertain candidate (audits included)
    audits: int = 0  # of explored: would-be hits explored at random to check the decision
    audit_wrong: int = 0  # of audits: judged wrong
    judged_same: int = 0  # explorations the judge found to deserve the cached answer
    judged_wrong: int = 0  # explorations the judge found not to
    feedback_correct: int = 0  # SubmitFeedback(correct) received
    feedback_wrong: int = 0  # SubmitFeedback(wrong) received

    def count_served(self, p_wrong: float) -> None:
        """One semantic hit served at an estimated `p_wrong`."""
        self.semantic_served += 1
        self.expected_wrong += p_wrong

    @property
    def expected_error_rate(self) -> float:
        """The decision's own estimate: sum of served P(wrong) / requests."""
        return self.expected_wrong / self.requests if self.requests else 0.0

    def audited_error_rate(self) -> tuple[float, float, float]:
        """(estimate, low, high): audited wrong share x semantic-served share of requests."""
        share, low, high = wilson_interval(self.audit_wrong, self.audits)
        served = self.semantic_served / self.requests if self.requests else 0.0
        return share * served, low * served, high * served


# Beyond this many namespaces of one tenant, the rest are counted together under
# OTHER_NAMESPACES (not a valid namespace name, so never one a caller uses). Found from
# outside: namespaces are the caller's to choose, and each one seen added 12
# Prometheus series and a row per stats call, never dropped: 5,000 namespaces made
# /metrics 5 MB and every all-tenants stats call scan every (tenant, namespace).
MAX_NAMESPACES_PER_TENANT = 256
OTHER_NAMESPACES = "(other)"


class CounterBook:
    """The counters of every (tenant, namespace), at most `max_namespaces` namespaces
    per tenant kept apart (then `OTHER_NAMESPACES`), found by tenant without a scan."""

    def __init__(self, max_namespaces: int = MAX_NAMESPACES_PER_TENANT) -> None:
        self._max_namespaces = max_namespaces
        self._tenants: dict[str, dict[str, VerificationCounters]] = {}

    def of(self, tenant: str, namespace: str) -> VerificationCounters:
        """The (tenant, namespace)'s counters, created at zero on first use."""
        spaces = self._tenants.get(tenant)
        if spaces is None:
            spaces = self._tenants[tenant] = {}
        found = spaces.get(namespace)
        if found is None:
            if len(spaces) >= self._max_namespaces:
                namespace = OTHER_NAMESPACES
                found = spaces.get(namespace)
            if found is None:
                found = spaces[namespace] = VerificationCounters()
        return found

    def of_tenant(self, tenant: str) -> list[tuple[str, VerificationCounters]]:
        """Copies of `tenant`'s counters, one per namespace, sorted by namespace."""
        spaces = self._tenants.get(tenant, {})
        return sorted((ns, replace(c)) for ns, c in list(spaces.items()))

    def snapshot(self) -> dict[tuple[str, str], VerificationCounters]:
        """Copies of every (tenant, namespace)'s counters."""
        return {
            (tenant, ns): replace(c)
            for tenant, spaces in list(self._tenants.items())
            for ns, c in list(spaces.items())
        }
