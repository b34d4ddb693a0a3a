"""The per-process state the decision needs: exploration budget, error budget, live calibration.

None of it is per entry (that is `evidence.Evidence`), and none of it must be shared
between replicas: each replica bounds its own exploration and error share, so the
fleet's shares are bounded too.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.cache.verify.prior import Prior, penalised_newton

__all__ = ["ErrorBudget", "ExplorationBudget", "LiveCalibration", "TenantCalibrations"]

_RISK_BIN = 0.0025  # width (P(wrong) units) of the error budget's histogram bins
_RISK_BINS = 400  # covers P(wrong) 0..1
# The most P(wrong) one hit may be served at, however much of the budget is spare
# (see `ErrorBudget`): on qqp_stream_dev no hit the decision served at δ 0.5-2% was
# riskier, so the cap costs it nothing there (`python -m benchmarks.stream_replay run`).
HIT_RISK_MAX = 0.3


@dataclass
class ExplorationBudget:
    """Token bucket: `share` of requests may explore, at most `burst` in a row.

    Raises:
        ValueError: `share` is outside 0..1 or `burst` < 1.
    """

    share: float = 0.1
    burst: float = 5.0
    tokens: float = 1.0
    explored: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or self.burst < 1.0:
            raise ValueError(
                f"share must be in 0..1 and burst >= 1, got {self.share}, {self.burst}"
            )

    def on_request(self) -> None:
        """Count one request; it earns `share` of an exploration."""
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.share)

    def available(self) -> bool:
        """Whether one more exploration fits the budget (never with a share of 0)."""
        return self.share > 0.0 and self.tokens >= 1.0

    def spend(self) -> None:
        """Record one exploration (call only after `available()` said yes)."""
        self.tokens -= 1.0
        self.explored += 1


@dataclass
class ErrorBudget:
    """Turns delta, a share of *requests* that may be wrong, into a per-candidate allowance.

    Most requests carry no risk (exact repeats, nothing similar cached), so serving
    only candidates with P(wrong) <= delta leaves most of the budget unspent. This keeps
    a histogram of the best candidate's P(wrong) per request and allows the largest
    `r` at which serving every past candidate with P(wrong) <= r would have spent at
    most `headroom * delta` per request. It is never stricter than delta itself.
    Counts halve every `window` requests, so the allowance follows the traffic and the
    live calibration: a P(wrong) recorded under an older, more optimistic prior stops
    counting soon (on qqp_stream_dev a window of 250 kept the second half's reworded
    share at 21% where 20,000 let it fall to 16%, at the same error).

    The allowance never exceeds `HIT_RISK_MAX` (unless delta itself does) whatever the
    budget has to spare: found from outside, a namespace whose traffic was mostly exact
    repeats let its next near misses be served at P(wrong) 0.78-0.84, answers the model
    itself rated probably wrong, because each fitted the average.
    """

    max_error_rate: float = 0.01
    headroom: float = 0.8
    window: int = 250
    min_requests: int = 100
    requests: float = 0.0
    _counts: list[float] = field(default_factory=lambda: [0.0] * _RISK_BINS)
    _risk: list[float] = field(default_factory=lambda: [0.0] * _RISK_BINS)

    def on_request(self, p_wrong: float | None) -> None:
        """Count one request and the P(wrong) of its best candidate (None: no candidate)."""
        self.requests += 1
        if p_wrong is not None:
            index = min(int(p_wrong / _RISK_BIN), _RISK_BINS - 1)
            self._counts[index] += 1
            self._risk[index] += p_wrong
        if self.requests >= 2 * self.window:
            self._halve()

    def _halve(self) -> None:
        self.requests /= 2
        self._counts = [c / 2 for c in self._counts]
        self._risk = [r / 2 for r in self._risk]

    def allowance(self) -> float:
        """The largest P(wrong) a candidate may be served at now (>= max_error_rate, and
        at most `ceiling`)."""
        return min(self._spare(), self.ceiling)

    @property
    def ceiling(self) -> float:
        """The most any one hit may risk: `HIT_RISK_MAX`, or delta if that is more."""
        return max(self.max_error_rate, HIT_RISK_MAX)

    def _spare(self) -> float:
        if self.requests < self.min_requests:
            return self.max_error_rate
        budget = self.headroom * self.max_error_rate * self.requests
        spent, allowed = 0.0, self.max_error_rate
        for index, risk in enumerate(self._risk):
            spent += risk
            if spent > budget:
                break
            if self._counts[index]:
                allowed = max(allowed, (index + 1) * _RISK_BIN)
        return allowed


@dataclass
class LiveCalibration:
    """The calibrated prior, re-fitted to this cache's judged traffic.

    A workload's base rate and difficulty differ from qqp_dev's (more look-alikes, say),
    so every judged observation (any entry) is kept, the newest `limit`, and the prior's
    log-odds `l` are corrected to `(1 + b) * l + a`, with (a, b) the MAP fit under
    N(0, sd^2) each: no data leaves the prior as it is. Refitted every `refit_every` adds.
    """

    base: Prior
    sd: float = 1.0
    limit: int = 4096
    refit_every: int = 16
    current: Prior = field(init=False)
    _seen: deque[tuple[float, bool]] = field(default_factory=deque)
    _pending: int = 0

    def __post_init__(self) -> None:
        self.current = self.base

    def add(self, score: float, same: bool) -> None:
        """Record one judged comparison at guard score `score`."""
        self._seen.append((score, same))
        while len(self._seen) > self.limit:
            self._seen.popleft()
        self._pending += 1
        if self._pending >= self.refit_every:
            self.refit()

    def refit(self) -> Prior:
        """Refit the correction now and return the corrected prior."""
        logits = np.array([self.base.logit_same(score) for score, _ in self._seen])
        labels = np.array([same for _, same in self._seen], dtype=np.float64)
        a, b = _fit_correction(logits, labels, self.sd)
        self.current = Prior(
            round((1.0 + b) * self.base.intercept + a, 6), round((1.0 + b) * self.base.slope, 6)
        )
        self._pending = 0
        return self.current


class TenantCalibrations:
    """One `LiveCalibration` per tenant, each started from `base`; the newest `kept`
    tenants' are kept (a tenant dropped starts again from `base`). One tenant's
    verdicts never move another's prior (see `verifier.VerifyState`)."""

    def __init__(self, base: Prior, kept: int) -> None:
        self._base, self._kept = base, kept
        self._by_tenant: OrderedDict[str, LiveCalibration] = OrderedDict()

    def prior_for(self, tenant: str) -> Prior:
        """`tenant`'s prior now: its own live fit, else `base`."""
        live = self._by_tenant.get(tenant)
        return self._base if live is None else live.current

    def add(self, tenant: str, score: float, same: bool) -> Prior:
        """Record one judged comparison for `tenant`; its prior now."""
        live = self._by_tenant.get(tenant)
        if live is None:
            live = self._by_tenant[tenant] = LiveCalibration(self._base)
        self._by_tenant.move_to_end(tenant)
        if len(self._by_tenant) > self._kept:
            self._by_tenant.popitem(last=False)
        live.add(score, same)
        return live.current


def _fit_correction(
    logits: npt.NDArray[np.float64], labels: npt.NDArray[np.float64], sd: float
) -> tuple[float, float]:
    """MAP (a, b) of P(same) = sigmoid(l + a + b * l) under N(0, sd^2) priors."""
    x = np.column_stack([np.ones_like(logits), logits])
    a, b = penalised_newton(x, labels, logits, np.eye(2) / (sd * sd))
    return float(a), float(b)
