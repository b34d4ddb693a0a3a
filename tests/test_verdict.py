"""The learned hit decision (`service.cache.verify`) and the stream replay that measures it.

Pure functions and a tiny synthetic stream with a fake embedder: no model, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from benchmarks.stream_replay import (
    CosineDecider,
    VerdictDecider,
    load_stream,
    replay,
    summarise,
)
from service.cache.guard import NearMissGuard
from service.cache.verify.decision import Action, Candidate, Policy, decide, estimate
from service.cache.verify.evidence import Evidence, Observation
from service.cache.verify.forms import form_key
from service.cache.verify.online import ErrorBudget, ExplorationBudget, LiveCalibration
from service.cache.verify.prior import DEFAULT_PRIOR, Prior, fit_prior

POLICY = Policy(max_error_rate=0.05)
PRIOR = Prior(intercept=0.0, slope=1.0)  # P(same) is the guard score itself


def _evidence(*observations: tuple[float, bool], start: int = 0) -> Evidence:
    evidence = Evidence()
    for i, (score, same) in enumerate(observations, start=start):
        evidence = evidence.add(Observation(float(i), f"obs-{i}", score, same))
    return evidence


def _decide(score: float, evidence: Evidence, *, may_explore: bool = True, **kw: float) -> Action:
    verdict = decide(
        Candidate(score), evidence, prior=PRIOR, policy=POLICY,
        risk_max=kw.get("risk_max", 0.05), may_explore=may_explore, draw=kw.get("draw", 0.99),
    )  # fmt: skip
    return verdict.action


def test_cold_start_follows_the_calibrated_prior() -> None:
    # With no evidence, P(wrong) is exactly the prior's 1 - P(same).
    assert estimate(0.97, Evidence(), PRIOR, POLICY).p_wrong == pytest.approx(0.03)
    assert _decide(0.97, Evidence()) is Action.SERVE
    assert _decide(0.80, Evidence()) is Action.EXPLORE  # uncertain: worth judging
    assert _decide(0.30, Evidence()) is Action.MISS  # clearly wrong: not worth a call


def _lowest_serving_score(evidence: Evidence) -> float:
    grid = [round(0.80 + 0.001 * i, 3) for i in range(200)]
    return next(s for s in grid if _decide(s, evidence) is Action.SERVE)


def test_repeated_same_evidence_lowers_the_score_it_takes_to_serve() -> None:
    judged = 0.93  # P(wrong) 0.07 from the prior: above the 0.05 allowance
    assert _decide(judged, Evidence()) is Action.EXPLORE
    cold = _lowest_serving_score(Evidence())
    some = _lowest_serving_score(_evidence(*[(judged, True)] * 8))
    many = _lowest_serving_score(_evidence(*[(judged, True)] * 32))

    assert cold == pytest.approx(0.95, abs=0.002)
    assert cold > some > many
    assert many < judged  # now served at the score it was judged at, and a little below


def test_one_wrong_at_or_above_a_score_stops_serving_there_at_once() -> None:
    same_many = _evidence(*[(0.90, True)] * 10)
    assert _decide(0.95, same_many) is Action.SERVE
    judged_wrong = same_many.add(Observation(99.0, "thumbs-down", 0.96, False, feedback=True))

    for score in (0.90, 0.95, 0.96):
        verdict = decide(
            Candidate(score), judged_wrong, prior=PRIOR, policy=POLICY, risk_max=0.05,
            may_explore=True, draw=0.99,
        )  # fmt: skip
        assert verdict.action is Action.MISS
        assert verdict.reason == "judged_wrong_nearby"
    assert _decide(0.995, judged_wrong) is Action.SERVE  # above it the entry still serves


def test_guard_vetoes_stay_hard_and_identical_questions_serve() -> None:
    vetoed = Candidate(0.99, veto="number_mismatch")
    identical = Candidate(0.5, identical=True)

    assert _decide_candidate(vetoed, _evidence((0.99, True))) is Action.MISS
    assert _decide_candidate(identical, Evidence()) is Action.SERVE


def _decide_candidate(candidate: Candidate, evidence: Evidence) -> Action:
    verdict = decide(
        candidate, evidence, prior=PRIOR, policy=POLICY, risk_max=0.5, may_explore=True,
        draw=0.99,
    )  # fmt: skip
    return verdict.action


def test_an_exhausted_exploration_budget_stops_exploring() -> None:
    budget = ExplorationBudget(share=0.25, burst=2.0, tokens=0.0)
    explored = 0
    for _ in range(100):
        budget.on_request()
        action = _decide(0.80, Evidence(), may_explore=budget.available())
        if action is Action.EXPLORE:
            budget.spend()
            explored += 1
        else:
            assert action is Action.MISS
    assert explored == 25  # a quarter of the requests, though all wanted to explore
    assert _decide(0.80, Evidence(), may_explore=False) is Action.MISS


def test_audits_explore_a_share_of_serves_only_while_the_budget_allows() -> None:
    assert _decide(0.99, Evidence(), draw=0.001) is Action.EXPLORE
    assert _decide(0.99, Evidence(), draw=0.001, may_explore=False) is Action.SERVE


def test_evidence_from_two_replicas_merges_without_loss_in_any_order() -> None:
    base = _evidence((0.9, True), (0.8, False))
    replica_a = base.add(Observation(10.0, "a-1", 0.91, True)).add(
        Observation(11.0, "a-2", 0.85, True)
    )
    replica_b = base.add(Observation(10.0, "b-1", 0.93, False))

    merged = replica_a.merge(replica_b)

    assert merged.observations == replica_a.observations | replica_b.observations
    assert len(merged) == 5
    assert replica_b.merge(replica_a) == merged
    assert merged.merge(replica_a) == merged  # a replayed write adds nothing twice
    assert Evidence.from_payload(json.loads(json.dumps(merged.to_payload()))) == merged


def test_merge_keeps_the_newest_observations_when_bounded() -> None:
    old = _evidence(*[(0.9, True)] * 30)
    new = _evidence(*[(0.9, True)] * 10, start=30)

    merged = old.merge(new)

    assert len(merged) == 32
    assert min(o.at_s for o in merged.observations) == 8.0


def test_error_budget_allows_more_risk_when_most_requests_carry_none() -> None:
    budget = ErrorBudget(max_error_rate=0.01, headroom=1.0, min_requests=10)
    assert budget.allowance() == 0.01  # too few requests: strict
    for i in range(1000):
        budget.on_request(0.05 if i % 10 == 0 else None)  # 10% risky, 5% each

    assert budget.allowance() == pytest.approx(0.0525)  # spends 0.5% of requests
    for _ in range(1000):
        budget.on_request(0.3)
    assert budget.allowance() < 0.3  # serving them all would spend 15%


def test_live_calibration_moves_the_prior_towards_the_judged_traffic() -> None:
    live = LiveCalibration(PRIOR, refit_every=1)
    for i in range(200):
        live.add(0.9, same=i % 2 == 0)  # the prior says 90% same; the traffic says 50%

    assert live.current.p_same(0.9) == pytest.approx(0.5, abs=0.05)


def test_fit_prior_is_deterministic_and_recovers_a_calibrated_score() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.05, 0.95, 4000).tolist()
    labels = [bool(rng.random() < s) for s in scores]

    prior = fit_prior(scores, labels)

    assert prior == fit_prior(scores, labels)
    assert prior.intercept == pytest.approx(0.0, abs=0.15)
    assert prior.slope == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is machine learning?", "Can you explain machine learning?"),
        ("Explain machine learning", "Could you explain machine learning."),
        ("How do I change my email address?", "How can I change my email address?"),
        ("What's the capital of France?", "What is the capital of France?"),
        ("How to learn Python?", "How do I learn Python?"),
    ],
)
def test_everyday_forms_of_one_intent_share_a_key(a: str, b: str) -> None:
    assert form_key(a) is not None
    assert form_key(a) == form_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is machine learning?", "Why is machine learning hard?"),
        ("How do I turn on 2FA?", "How do I turn off 2FA?"),
        ("What is the capital of France?", "What is the capital of Spain?"),
        ("How do I cancel my subscription?", "How do you cancel my subscription?"),
        # found from outside: each of these was served the other's answer as same_form
        ("How should I vote in the election?", "How can I vote in the election?"),
        ("How could I get fired for this?", "How do I get fired for this?"),
        ("How do I stop a nosebleed?", "How do I close a nosebleed?"),
        ("How do I fix a match?", "How do I solve a match?"),
        ("What is your name?", "Tell me about your name"),
    ],
)
def test_different_questions_do_not_share_a_form_key(a: str, b: str) -> None:
    assert form_key(a) != form_key(b) or form_key(a) is None


def test_no_fow_cache_trap_pair_shares_a_form_key() -> None:
    from fow_cache.data import load_questions

    traps = [p for p in load_questions() if not p["same_answer"]]
    matched = [
        p for p in traps if form_key(p["a"]) is not None and form_key(p["a"]) == form_key(p["b"])
    ]

    assert len(traps) == 300
    assert matched == []


def test_the_seed_example_is_served_from_cold() -> None:
    from service.cache.scope import CacheKey
    from service.cache.store import CacheEntry, ScoredEntry
    from service.cache.verify.verifier import BudgetSettings, HitDecider, VerifyState

    cached, asked = "What is machine learning?", "Can you explain machine learning?"
    entry = CacheEntry(
        tenant="t", namespace="n", scope="s", model="m", question=cached, content="ML is...",
        finish_reason="stop", prompt_tokens=1, completion_tokens=1, cost_usd=0.0,
        created_at=0.0, expires_at=1e12, last_hit_at=0.0,
    )  # fmt: skip
    decider = HitDecider(VerifyState(DEFAULT_PRIOR), BudgetSettings(max_error_rate=0.01))
    verdict = NearMissGuard().verify(asked, cached, 0.830)
    key = CacheKey("t", "n", "s", asked, "", "id")
    choice = decider.choose(key, [ScoredEntry("p", 0.830, entry)], [verdict])
    assert choice.served is not None
    assert (choice.detail, choice.p_wrong) == ("same_form", 0.0)


# A tiny stream in a made-up 3-d space: a popular intent "c1" asked in two wordings,
# a look-alike trap "t1" right next to it, and an unrelated intent "c2".
_VECTORS = {
    "How do I reset my password?": (1.0, 0.0, 0.0),
    "How can I reset my password?": (0.995, 0.0999, 0.0),
    "How do I reset my router?": (0.96, 0.28, 0.0),
    "What is the capital of France?": (0.0, 0.0, 1.0),
}
_STREAM = [
    ("How do I reset my password?", "c1"),
    ("What is the capital of France?", "c2"),
    ("How can I reset my password?", "c1"),
    ("How do I reset my router?", "t1"),
    ("How do I reset my password?", "c1"),
    ("What is the capital of France?", "c2"),
    ("How can I reset my password?", "c1"),
]


def _fake_vectors() -> dict[str, np.ndarray]:
    return {q: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for q, v in _VECTORS.items()}


@pytest.fixture
def stream(tmp_path: Path) -> Path:
    path = tmp_path / "stream.jsonl"
    path.write_text("".join(json.dumps({"q": q, "cluster": c}) + "\n" for q, c in _STREAM))
    return path


def test_stream_labels_should_hit_reworded_and_traps(stream: Path) -> None:
    requests = load_stream(stream)

    assert [r.should_hit for r in requests] == [False, False, True, False, True, True, True]
    assert [r.reworded for r in requests] == [False, False, True, False, False, False, False]
    assert [r.trap for r in requests] == [False, False, False, True, False, False, False]


def _kinds(outcomes: Sequence[object]) -> list[str]:
    return [getattr(o, "kind") for o in outcomes]  # noqa: B009


def test_replay_scores_a_cosine_threshold(stream: Path) -> None:
    outcomes = replay(load_stream(stream), _fake_vectors(), CosineDecider(0.95))
    figures = summarise("cosine", outcomes)

    # the paraphrase (0.995) is served right; the trap (0.96) is served wrong
    assert _kinds(outcomes) == [
        "miss",
        "miss",
        "semantic",
        "semantic",
        "exact",
        "exact",
        "semantic",
    ]
    assert figures["wrong"] == 1
    assert figures["traps_served"] == 1
    assert figures["reworded_served"] == 1.0
    assert figures["served"] == 1.0
    assert figures["error_rate"] == pytest.approx(1 / 7, abs=1e-4)


def test_replay_with_the_verdict_explores_within_budget_and_records_evidence(
    stream: Path,
) -> None:
    decider = VerdictDecider(0.01, PRIOR, explore_share=1.0)

    outcomes = replay(load_stream(stream), _fake_vectors(), decider)
    figures = summarise("verdict", outcomes)

    assert figures["wrong"] == 0
    assert figures["traps_served"] == 0
    assert figures["explorations"] == decider.decider.exploration.explored >= 1
    # the other form of the same how-to is served at once; the look-alike trap is not
    assert _kinds(outcomes)[2] == "semantic"
    assert _kinds(outcomes)[3] in ("explore", "miss")
    assert figures["reworded_served"] == 1.0


def test_no_hit_risks_more_than_three_in_ten_however_much_budget_is_spare() -> None:
    """Found from outside: in a namespace of mostly exact repeats, the spare budget let
    the next near misses be served at P(wrong) 0.78-0.84, answers the model itself
    rated probably wrong, because each one fitted the average."""
    budget = ErrorBudget(max_error_rate=0.01)
    for _ in range(120):
        budget.on_request(0.0)  # exact repeats: no risk at all
    budget.on_request(0.8)
    assert budget.allowance() == pytest.approx(0.3)
    assert ErrorBudget(max_error_rate=0.5).ceiling == 0.5  # never below delta itself
