"""The serve / explore / miss decision for one cache candidate, against an error budget.

Model (built after vCache, Schroeder et al., ICLR 2026, not copied from it): the
log-odds that a query at guard score `s` deserves entry e's answer is

    logit P(same | s, e) = prior.logit_same(s) + delta_e

`prior` is the calibrated cold-start map (`prior.Prior`), or the live one that
`online.LiveCalibration` re-fits to this cache's judged traffic; `delta_e` is the
entry's own shift, with prior N(0, entry_sd^2), fitted
to the entry's evidence by Newton steps (MAP) with a Laplace variance. The decision uses
the predictive probability, which averages over that uncertainty: with no evidence
it equals the calibrated prior; each "same" at a score raises delta_e and lowers the
score it takes to serve, each "wrong" does the opposite.

Hard stops, before any estimate: a guard rule veto (numbers, negation, names...) or a
score below the guard's floor is a MISS; a "wrong" judged on this entry at a score at
or above the query's stops serving it there at once (vCache's sigmoid would only
lean that way after refitting).

Then, with `p_wrong` the predictive probability that the answer is wrong:
SERVE if `p_wrong <= risk_max` (the caller's allowance, see `online.ErrorBudget`);
MISS if `p_wrong >= policy.explore_max` (clearly wrong: exploring it teaches little);
EXPLORE otherwise when the exploration budget allows, else MISS. A small share of
SERVE decisions (`policy.audit_share`) is explored instead, so the live error estimate
stays unbiased and a wrong entry that keeps being served is caught.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from service.cache.verify.evidence import Evidence
from service.cache.verify.prior import Prior, sigmoid

__all__ = [
    "Action",
    "Candidate",
    "Estimate",
    "Policy",
    "Verdict",
    "decide",
    "estimate",
    "fit_shift",
    "fitted_shift",
    "hard_stop",
    "p_wrong_at",
]

_NEWTON_STEPS = 12


class Action(StrEnum):
    """What to do with a candidate."""

    SERVE = "serve"  # answer from the cache
    EXPLORE = "explore"  # call upstream, answer with that, judge the candidate, record evidence
    MISS = "miss"  # call upstream; the candidate is not worth judging


@dataclass(frozen=True)
class Candidate:
    """What the guard found about one (query, cached entry) pair.

    `score` is the guard's score (0..1); `veto` the name of a guard rule that fired
    ("" if none, "below_threshold" under the cosine floor); `identical` is True when
    the two questions are equal after normalisation or differ only in an everyday
    question form (`forms.form_key`).
    """

    score: float
    veto: str = ""
    identical: bool = False
    similarity: float | None = None  # the cosine, when known (a wrong nearby by either)


@dataclass(frozen=True)
class Policy:
    """How the decision trades wrong answers, exploration and hits.

    Args:
        max_error_rate: delta, the share of requests that may get a wrong answer (0..1).
        explore_max: at or above this P(wrong) a candidate is a MISS, never explored.
        audit_share: share (0..1) of SERVE decisions explored instead, to keep checking.
        entry_sd: prior standard deviation of an entry's own log-odds shift.
    """

    max_error_rate: float = 0.01
    explore_max: float = 0.5
    audit_share: float = 0.02
    entry_sd: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "explore_max", "audit_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if self.entry_sd <= 0:
            raise ValueError(f"entry_sd must be > 0, got {self.entry_sd}")


@dataclass(frozen=True)
class Estimate:
    """P(wrong) for one candidate, with what it rests on."""

    p_wrong: float  # predictive probability (0..1) that the cached answer is wrong
    shift: float  # the entry's fitted log-odds shift (delta_e)
    shift_variance: float
    observations: int


@dataclass(frozen=True)
class Verdict:
    """The decision on one candidate and why."""

    action: Action
    p_wrong: float
    reason: str


def _log_posterior(
    bases: Sequence[float], labels: Sequence[bool], shift: float, sd: float
) -> float:
    total = -0.5 * (shift / sd) ** 2
    for base, same in zip(bases, labels, strict=True):
        p = sigmoid(base + shift)
        total += math.log(max(p if same else 1.0 - p, 1e-300))
    return total


def fit_shift(logits: Sequence[float], labels: Sequence[bool], sd: float) -> tuple[float, float]:
    """MAP log-odds shift (and its Laplace variance) for observations at base `logits`.

    Maximises sum log-likelihood(sigmoid(logit_i + shift), label_i) - shift^2 / (2 sd^2)
    by Newton steps, halved while they would lower it. With no observations it is
    (0, sd^2): the prior itself.
    """
    precision = 1.0 / (sd * sd)
    shift, curvature = 0.0, precision
    if not logits:
        return shift, 1.0 / curvature
    current = _log_posterior(logits, labels, shift, sd)
    for _ in range(_NEWTON_STEPS):
        gradient, curvature = -shift * precision, precision
        for base, same in zip(logits, labels, strict=True):
            p = sigmoid(base + shift)
            gradient += (1.0 if same else 0.0) - p
            curvature += p * (1.0 - p)
        step = gradient / curvature
        while abs(step) > 1e-12 and _log_posterior(logits, labels, shift + step, sd) < current:
            step /= 2.0
        shift += step
        current = _log_posterior(logits, labels, shift, sd)
        if abs(step) < 1e-9:
            break
    return shift, 1.0 / curvature


def _moderated(logit_value: float, variance: float) -> float:
    """E[sigmoid(x)] for x ~ N(logit_value, variance), by the probit approximation."""
    return sigmoid(logit_value / math.sqrt(1.0 + math.pi * variance / 8.0))


def fitted_shift(evidence: Evidence, prior: Prior, policy: Policy) -> tuple[float, float]:
    """The entry's MAP log-odds shift and its variance, from its evidence (see `estimate`)."""
    if not evidence.observations:
        return 0.0, policy.entry_sd**2
    stretch = _stretch(policy)
    scores, labels = evidence.scores_and_labels()
    return fit_shift([stretch * prior.logit_same(s) for s in scores], labels, policy.entry_sd)


def p_wrong_at(score: float, fitted: tuple[float, float], prior: Prior, policy: Policy) -> float:
    """P(wrong) at guard score `score` for an entry whose `fitted_shift` is `fitted`."""
    shift, variance = fitted
    return 1.0 - _moderated(_stretch(policy) * prior.logit_same(score) + shift, variance)


def _stretch(policy: Policy) -> float:
    return math.sqrt(1.0 + math.pi * policy.entry_sd**2 / 8.0)


def estimate(score: float, evidence: Evidence, prior: Prior, policy: Policy) -> Estimate:
    """The predictive P(wrong) of serving the entry for a query at guard score `score`.

    The calibrated prior is already averaged over entries, so the entry-level base
    log-odds are the prior's stretched by the factor that the averaging shrinks them by;
    with no evidence the predictive probability is then exactly the prior's.
    """
    fitted = fitted_shift(evidence, prior, policy)
    return Estimate(p_wrong_at(score, fitted, prior, policy), *fitted, len(evidence))


def hard_stop(candidate: Candidate, evidence: Evidence) -> Verdict | None:
    """The verdict that needs no estimate (a veto, a wrong judged nearby, identical), or None."""
    if candidate.veto:
        return Verdict(Action.MISS, 1.0, candidate.veto)
    if evidence.judged_wrong_at(candidate.score, candidate.similarity):
        return Verdict(Action.MISS, 1.0, "judged_wrong_nearby")
    if candidate.identical:
        return Verdict(Action.SERVE, 0.0, "identical")
    return None


def decide(
    candidate: Candidate,
    evidence: Evidence,
    *,
    prior: Prior,
    policy: Policy,
    risk_max: float,
    may_explore: bool,
    draw: float,
    p_wrong: float | None = None,
) -> Verdict:
    """Serve, explore or miss `candidate`, given its entry's `evidence`.

    Args:
        risk_max: the largest P(wrong) this request may serve at (0..1); `policy.
            max_error_rate` for a strict per-hit bound, or `online.ErrorBudget.allowance()`.
        may_explore: whether the exploration budget has room for one more call.
        draw: a uniform number in [0, 1) for the audit (a seeded RNG, or a hash of the
            request id, so a replay decides the same way twice).
        p_wrong: the candidate's P(wrong) when the caller has it already (a cached
            `fitted_shift`); None computes it with `estimate`.
    """
    stop = hard_stop(candidate, evidence)
    if stop is not None:
        return stop
    if p_wrong is None:
        p_wrong = estimate(candidate.score, evidence, prior, policy).p_wrong
    if p_wrong <= risk_max:
        if may_explore and draw < policy.audit_share:
            return Verdict(Action.EXPLORE, p_wrong, "audit")
        return Verdict(Action.SERVE, p_wrong, "within_budget")
    if p_wrong >= policy.explore_max or not may_explore:
        return Verdict(Action.MISS, p_wrong, "too_risky" if may_explore else "no_budget")
    return Verdict(Action.EXPLORE, p_wrong, "uncertain")
