"""The hit decision the cache runs: guard verdicts in, one candidate served, explored or refused.

`HitDecider` is what `SemanticCache` asks after its search. With the error budget on
(`BudgetSettings`), each candidate's guard verdict and stored evidence go through
`decision.decide` against the namespace's delta (tightened by the request's
`max_error_rate`): SERVE returns a hit, EXPLORE an `Exploration` (the request goes
upstream and `learning.Learning` judges the fresh answer against the candidate's),
MISS neither. With the budget off, the guard's (or threshold's) own accept decides,
as before the budget existed. Either way an entry judged wrong at or above a
candidate's score is not served there (a user's thumbs-down stops it at once).
"""

from __future__ import annotations

import random
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from service.cache.guard import GuardVerdict
from service.cache.scope import CacheKey
from service.cache.store import ScoredEntry
from service.cache.verify.counters import CounterBook, VerificationCounters
from service.cache.verify.decision import (
    Action,
    Candidate,
    Policy,
    Verdict,
    decide,
    fitted_shift,
    hard_stop,
    p_wrong_at,
)
from service.cache.verify.evidence import Evidence, Observation
from service.cache.verify.forms import form_key
from service.cache.verify.online import ErrorBudget, ExplorationBudget, TenantCalibrations
from service.cache.verify.prior import Prior

__all__ = ["BudgetSettings", "Choice", "Exploration", "HitDecider", "VerifyState"]

_FIT_CACHE_SIZE = 20_000
_BUDGETS_KEPT = 1024  # error budgets, one per (tenant, namespace); ~30 KB each
PRIORS_KEPT = 1024  # tenants whose live prior is kept


@dataclass(frozen=True)
class BudgetSettings:
    """The operator's error budget: delta per namespace, and the exploration allowance."""

    max_error_rate: float = 0.01
    by_namespace: Mapping[str, float] = field(default_factory=dict)
    exploration_share: float = 0.1
    audit_share: float = 0.02

    def delta(self, namespace: str) -> float:
        """The namespace's delta (its override, or the service's)."""
        return self.by_namespace.get(namespace, self.max_error_rate)


@dataclass(frozen=True)
class Exploration:
    """A candidate to check: the request goes upstream, and its answer is judged against this."""

    tenant: str
    namespace: str
    question: str
    point_id: str
    cached_content: str
    score: float
    p_wrong: float
    audit: bool  # a would-be hit explored at random (unbiased error estimate)
    obs_id: str


@dataclass(frozen=True)
class Choice:
    """What the decision made of one lookup's candidates."""

    served: ScoredEntry | None = None
    score: float = 0.0  # the served candidate's guard score (0..1)
    p_wrong: float = 0.0  # the served candidate's estimated P(wrong)
    detail: str = "no_candidates"
    exploration: Exploration | None = None
    audited: ScoredEntry | None = None  # an audit's candidate: served if the upstream fails


@dataclass
class VerifyState:
    """What the decision and the learning share: the priors and the counters.

    `prior` is where every tenant starts; `calibrations` re-fits each tenant's own to
    that tenant's judged traffic (`learning.Learning` adds to it), the newest
    `PRIORS_KEPT` kept. One tenant's verdicts never move another's decisions (found
    from outside: 200 WRONG verdicts from one tenant, each on its own seeded hit, made
    every other tenant's candidates "too_risky"; 256 CORRECT ones moved them back).
    """

    prior: Prior
    counters: CounterBook = field(default_factory=CounterBook)
    calibrations: TenantCalibrations = field(init=False)

    def __post_init__(self) -> None:
        self.calibrations = TenantCalibrations(self.prior, PRIORS_KEPT)

    def prior_for(self, tenant: str) -> Prior:
        """`tenant`'s prior: its own live fit, else the starting one."""
        return self.calibrations.prior_for(tenant)

    def counters_for(self, tenant: str, namespace: str) -> VerificationCounters:
        """The (tenant, namespace)'s counters, created at zero on first use (a tenant's
        namespaces past `counters.MAX_NAMESPACES_PER_TENANT` share one row)."""
        return self.counters.of(tenant, namespace)


@lru_cache(maxsize=8192)
def _form(text: str) -> tuple[str, str] | None:
    return form_key(text)


# The details of a hit served as the very question asked, in other words: exact form,
# or an everyday form of it (see `_candidate`).
SAME_QUESTION_DETAILS = frozenset({"identical", "same_form"})


def _candidate(
    query: str,
    cached: str,
    verdict: GuardVerdict,
    follow_up: bool = False,
    similarity: float | None = None,
) -> tuple[Candidate, str]:
    """The decision's view of a guard verdict (and the pair's cosine `similarity`, when
    known), and the reason a served hit would give.

    A follow-up (a query with a conversation context) is never `identical` on its final
    message: "yes please" says nothing about whether the answer fits, its conversation
    does, so it is weighed at its score (the weaker of question and context matches).
    """
    if verdict.reason == "identical" and not follow_up:
        return Candidate(1.0, identical=True, similarity=similarity), "identical"
    if verdict.vetoed:
        return Candidate(verdict.score, veto=verdict.reason, similarity=similarity), verdict.reason
    same_form = _form(query) is not None and _form(query) == _form(cached)
    if same_form and not follow_up:
        return Candidate(verdict.score, identical=True, similarity=similarity), "same_form"
    return Candidate(verdict.score, similarity=similarity), "ok"


class HitDecider:
    """Chooses among a lookup's verified candidates (see the module docstring).

    Args:
        state: the live prior and the counters, shared with `learning.Learning`.
        budget: the error budget; None decides by the guard's accept alone.
        policy: the decision's trade-offs (explore_max, entry_sd); its
            max_error_rate and audit_share are taken from `budget`.
        seed: seeds the audit draws, so a replay decides the same way twice.
    """

    def __init__(
        self,
        state: VerifyState,
        budget: BudgetSettings | None = None,
        policy: Policy | None = None,
        seed: int = 0,
    ) -> None:
        self.state = state
        self.budget = budget
        base = policy or Policy()
        audit = budget.audit_share if budget is not None else base.audit_share
        self._policy = Policy(base.max_error_rate, base.explore_max, audit, base.entry_sd)
        share = budget.exploration_share if budget is not None else 0.0
        self.exploration = ExplorationBudget(share=share)
        # One per (tenant, namespace), the newest kept: one tenant's traffic must not fund
        # another's risk (found from outside: 150 unrelated questions from one tenant let
        # 16 of 16 of another's near misses be served, where alone it served none).
        self._error_budgets: OrderedDict[tuple[str, str], ErrorBudget] = OrderedDict()
        self._fits: OrderedDict[tuple[frozenset[Observation], Prior], tuple[float, float]] = (
            OrderedDict()
        )
        self._draws = random.Random(seed)

    def choose(
        self,
        key: CacheKey,
        found: Sequence[ScoredEntry],
        verdicts: Sequence[GuardVerdict],
        max_error_rate: float | None = None,
        request_id: str = "",
    ) -> Choice:
        """Serve, explore or refuse: the best of `found` (with their guard `verdicts`)."""
        if self.budget is None:
            return self._by_accept(found, verdicts)
        return self._by_budget(key, found, verdicts, max_error_rate, request_id)

    def note_served_instead(self, key: CacheKey, p_wrong: float) -> None:
        """Count an audit's candidate served after all (its upstream call failed)."""
        self.state.counters_for(key.tenant, key.namespace).count_served(p_wrong)

    def note_exact(self, key: CacheKey) -> None:
        """Count an exact hit: a request the budgets share out over, at no risk."""
        if self.budget is None:
            return
        self.state.counters_for(key.tenant, key.namespace).requests += 1
        self.exploration.on_request()
        self._error_budget(key).on_request(0.0)

    def _by_accept(self, found: Sequence[ScoredEntry], verdicts: Sequence[GuardVerdict]) -> Choice:
        best: tuple[float, ScoredEntry] | None = None
        first = verdicts[0].reason if verdicts else "no_candidates"
        for candidate, verdict in zip(found, verdicts, strict=True):
            if candidate.entry.evidence.judged_wrong_at(verdict.score, candidate.similarity):
                first = "judged_wrong_nearby" if candidate is found[0] else first
                continue
            if verdict.accept and (best is None or verdict.score > best[0]):
                best = (verdict.score, candidate)
        if best is None:
            return Choice(detail=first)
        return Choice(best[1], best[0], 0.0, "ok")

    def _by_budget(
        self,
        key: CacheKey,
        found: Sequence[ScoredEntry],
        verdicts: Sequence[GuardVerdict],
        max_error_rate: float | None,
        request_id: str,
    ) -> Choice:
        counters = self.state.counters_for(key.tenant, key.namespace)
        counters.requests += 1
        self.exploration.on_request()
        best = self._best(key, found, verdicts)
        budget = self._error_budget(key)
        budget.on_request(_risk(best[0]) if best is not None else None)
        if best is None:
            return Choice(detail=verdicts[0].reason if verdicts else "no_candidates")
        first_stop, scored, candidate, reason = best
        if first_stop.reason != "pending":  # a hard stop: served at no risk, or refused
            return self._act(key, first_stop, scored, candidate, reason, counters, request_id)
        verdict = decide(
            candidate,
            scored.entry.evidence,
            prior=self.state.prior_for(key.tenant),
            policy=self._policy,
            risk_max=self._risk_max(budget, key.namespace, max_error_rate),
            may_explore=self.exploration.available(),
            draw=self._draws.random(),
            p_wrong=first_stop.p_wrong,
        )
        return self._act(key, verdict, scored, candidate, reason, counters, request_id)

    def _best(
        self, key: CacheKey, found: Sequence[ScoredEntry], verdicts: Sequence[GuardVerdict]
    ) -> tuple[Verdict, ScoredEntry, Candidate, str] | None:
        """The candidate with the lowest P(wrong); a hard stop's verdict if all are stopped.

        A candidate still to be decided carries Verdict(MISS, p_wrong, "pending").
        """
        best: tuple[Verdict, ScoredEntry, Candidate, str] | None = None
        follow_up = bool(key.context)
        for scored, guard_verdict in zip(found, verdicts, strict=True):
            question = scored.entry.question
            candidate, reason = _candidate(
                key.text, question, guard_verdict, follow_up, scored.similarity
            )
            stop = hard_stop(candidate, scored.entry.evidence)
            if stop is None:
                p_wrong = self._p_wrong(key.tenant, candidate.score, scored.entry.evidence)
                stop = Verdict(Action.MISS, p_wrong, "pending")
            elif stop.action is Action.SERVE:
                return stop, scored, candidate, reason  # identical: nothing beats it
            if best is None or _better(stop, best[0]):
                best = (stop, scored, candidate, reason)
        return best

    def _p_wrong(self, tenant: str, score: float, evidence: Evidence) -> float:
        prior = self.state.prior_for(tenant)
        key = (evidence.observations, prior)
        fitted = self._fits.get(key)
        if fitted is None:
            fitted = self._fits[key] = fitted_shift(evidence, prior, self._policy)
            if len(self._fits) > _FIT_CACHE_SIZE:
                self._fits.popitem(last=False)
        return p_wrong_at(score, fitted, prior, self._policy)

    def _error_budget(self, key: CacheKey) -> ErrorBudget:
        """The error budget of `key`'s tenant and namespace (at its namespace's delta)."""
        assert self.budget is not None
        owner = (key.tenant, key.namespace)
        found = self._error_budgets.get(owner)
        if found is None:
            delta = self.budget.delta(key.namespace)
            found = self._error_budgets[owner] = ErrorBudget(max_error_rate=delta)
            if len(self._error_budgets) > _BUDGETS_KEPT:
                self._error_budgets.popitem(last=False)  # it restarts at delta if it returns
        else:
            self._error_budgets.move_to_end(owner)
        return found

    def _risk_max(self, budget: ErrorBudget, namespace: str, requested: float | None) -> float:
        assert self.budget is not None
        if requested is not None and requested < self.budget.delta(namespace):
            return requested  # a stricter caller gets a strict per-hit bound
        return budget.allowance()

    def _act(
        self,
        key: CacheKey,
        verdict: Verdict,
        scored: ScoredEntry,
        candidate: Candidate,
        reason: str,
        counters: VerificationCounters,
        request_id: str,
    ) -> Choice:
        if verdict.action is Action.SERVE:
            counters.count_served(verdict.p_wrong)
            return Choice(scored, candidate.score, verdict.p_wrong, reason)
        if verdict.action is Action.MISS:
            return Choice(detail=verdict.reason, p_wrong=verdict.p_wrong)
        self.exploration.spend()
        audit = verdict.reason == "audit"
        counters.explored += 1
        counters.audits += int(audit)
        exploration = Exploration(
            tenant=key.tenant,
            namespace=key.namespace,
            question=key.text,
            point_id=scored.point_id,
            cached_content=scored.entry.content,
            score=candidate.score,
            p_wrong=verdict.p_wrong,
            audit=audit,
            obs_id=request_id or uuid.uuid4().hex,
        )
        detail = f"explore_{verdict.reason}"
        audited = scored if audit else None
        return Choice(
            p_wrong=verdict.p_wrong, detail=detail, exploration=exploration, audited=audited
        )


def _risk(verdict: Verdict) -> float | None:
    """What a lookup's best candidate puts at risk if served (None: it cannot be)."""
    if verdict.action is Action.SERVE:
        return 0.0
    return verdict.p_wrong if verdict.reason == "pending" else None


def _better(verdict: Verdict, than: Verdict) -> bool:
    """A pending candidate beats a stopped one; among pending, the lower P(wrong) wins."""
    pending, other_pending = verdict.reason == "pending", than.reason == "pending"
    if pending != other_pending:
        return pending
    return pending and verdict.p_wrong < than.p_wrong
