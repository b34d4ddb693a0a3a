"""The router: rules on clear cases, nearest examples with a fake embedder, and route-eval."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from service.errors import InvalidRequestError
from service.llm.catalogue import Catalogue, load_catalogue
from service.routing import Router, build_router
from service.routing.evaluate import load_labelled, route_eval
from service.routing.nearest import ExampleIndex, load_examples
from service.routing.rules import classify

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE_FILE = ROOT / "service" / "defaults" / "models.example.yaml"
EXAMPLES_FILE = ROOT / "service" / "defaults" / "route-examples.yaml"
EVAL_FILE = ROOT / "config" / "route-eval.jsonl"
DIM = 16
TIER_AXIS = {"small": 0, "medium": 1, "large": 2}
UNRELATED_AXIS = 9


def _unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _noise(text: str) -> npt.NDArray[np.float32]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    noise = np.zeros(DIM, dtype=np.float32)
    noise[3:8] = np.random.default_rng(seed).normal(0, 0.15, 5)
    return noise


def _near(tier: str, text: str = "query") -> npt.NDArray[np.float32]:
    vector = _noise(text)
    vector[TIER_AXIS[tier]] += 1.0
    return _unit(vector)


class FakeEmbedder:
    """Deterministic vectors: an example's tier (its first word) sets the main axis."""

    def __init__(self) -> None:
        self.texts_embedded = 0

    def __call__(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts_embedded += len(texts)
        return np.stack([_near(text.split()[0], text) for text in texts])


EXAMPLES = {tier: [f"{tier} example {n}" for n in range(6)] for tier in TIER_AXIS}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(CATALOGUE_FILE, env={})


def _nearest_router(catalogue: Catalogue, strategy: str) -> Router:
    return Router(catalogue, strategy, ExampleIndex(EXAMPLES, FakeEmbedder(), k=3))


# --- rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "tier", "rule"),
    [
        ("What is the capital of France?", "small", "simple"),
        ("Define entropy.", "small", "simple"),
        ("List the noble gases.", "small", "simple"),
        ("Is Rust memory safe?", "small", "simple"),
        ("hello there", "small", "short_prompt"),
        ("Explain how a hash map works.", "medium", "open_task"),
        ("Write a short poem about the sea.", "medium", "open_task"),
        ("Analyze the failure modes of two-phase commit.", "large", "reasoning"),
        ("Compare Raft and Paxos.", "large", "reasoning"),
        ("Prove that the sum of two even numbers is even.", "large", "reasoning"),
        ("Work through this step by step: 17 * 23", "large", "reasoning"),
        ("Explain why the sky is blue.", "large", "reasoning"),
        ("Design a schema for a library.", "large", "reasoning"),
        ("the quick brown fox jumps over the lazy dog " * 12, "medium", "medium_prompt"),
        ("the quick brown fox jumps over the lazy dog " * 120, "large", "long_prompt"),
    ],
)
def test_rules_pick_the_documented_tier(prompt: str, tier: str, rule: str) -> None:
    verdict = classify(prompt)
    assert (verdict.tier, verdict.rule) == (tier, rule)


def test_a_rule_decision_names_the_rule_and_the_tiers_default_model(
    catalogue: Catalogue,
) -> None:
    router = Router(catalogue, "rules")
    decision = router.route("Compare Raft and Paxos.", None, None)
    assert (decision.model, decision.tier, decision.reason) == ("gpt-4o", "large", "rule:reasoning")
    assert decision.score == 0.0
    assert "compare" in decision.detail
    assert router.route("What is DNS?", None, None).model == "gpt-4o-mini"
    assert router.route("Explain DNS.", None, None).model == "claude-3-5-haiku"


def test_a_requested_model_bypasses_routing(catalogue: Catalogue) -> None:
    decision = Router(catalogue, "rules").route("Prove Fermat's last theorem.", None, "gpt-4o-mini")
    assert (decision.model, decision.tier, decision.reason) == ("gpt-4o-mini", "small", "requested")


def test_an_unknown_requested_model_lists_the_known_ones(catalogue: Catalogue) -> None:
    with pytest.raises(InvalidRequestError, match=r"gpt-5.*claude-3-5-haiku.*gpt-4o-mini"):
        Router(catalogue, "rules").route("hi", None, "gpt-5")


# --- nearest examples ------------------------------------------------------------------


def test_nearest_examples_route_by_the_query_vector(catalogue: Catalogue) -> None:
    router = _nearest_router(catalogue, "nearest+rules")
    # The text alone would go to the small tier; the vector says medium.
    decision = router.route("What is it?", _near("medium"), None)

    assert (decision.model, decision.tier, decision.reason) == (
        "claude-3-5-haiku",
        "medium",
        "nearest:medium",
    )
    assert decision.score >= 0.9
    assert "medium example" in decision.detail and "cosine" in decision.detail


def test_a_low_confidence_vote_falls_back_to_the_rules(catalogue: Catalogue) -> None:
    unrelated = np.zeros(DIM, dtype=np.float32)
    unrelated[UNRELATED_AXIS] = 1.0
    decision = _nearest_router(catalogue, "nearest+rules").route(
        "Compare Raft and Paxos.", unrelated, None
    )
    assert (decision.tier, decision.reason, decision.score) == ("large", "rule:reasoning", 0.0)
    assert "confidence" in decision.detail

    pure = _nearest_router(catalogue, "nearest").route("Compare Raft and Paxos.", unrelated, None)
    assert pure.reason.startswith("nearest:")
    assert pure.score < 0.7


def test_without_a_query_vector_the_rules_decide(catalogue: Catalogue) -> None:
    decision = _nearest_router(catalogue, "nearest").route("Define entropy.", None, None)
    assert (decision.tier, decision.reason) == ("small", "rule:simple")
    assert "no query embedding" in decision.detail


def test_a_long_prompt_goes_large_whatever_its_neighbours_say(catalogue: Catalogue) -> None:
    long_text = "please read this carefully " * 200
    decision = _nearest_router(catalogue, "nearest+rules").route(long_text, _near("small"), None)
    assert (decision.tier, decision.reason) == ("large", "rule:long_prompt")


def test_examples_are_embedded_once_and_queries_never(catalogue: Catalogue) -> None:
    embed = FakeEmbedder()
    router = Router(catalogue, "nearest", ExampleIndex(EXAMPLES, embed, k=3))
    embedded_at_start = embed.texts_embedded
    for tier in TIER_AXIS:
        router.route("anything", _near(tier), None)

    assert embedded_at_start == sum(len(texts) for texts in EXAMPLES.values())
    assert embed.texts_embedded == embedded_at_start


def test_confidence_never_decreases_with_the_vote_margin() -> None:
    index = ExampleIndex(EXAMPLES, FakeEmbedder(), k=3)
    confidences = [index.calibrated(margin) for margin in np.linspace(0, 1, 50)]
    assert confidences == sorted(confidences)
    assert confidences[0] < 0.5 < confidences[-1]


def test_nearest_strategies_need_examples(catalogue: Catalogue) -> None:
    with pytest.raises(ValueError, match="examples"):
        build_router(catalogue, "nearest+rules", None, None)
    with pytest.raises(ValueError, match="unknown routing strategy"):
        build_router(catalogue, "random", None, None)


def test_examples_with_an_unknown_tier_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "examples.yaml"
    path.write_text("small: [hi]\nhuge: [prove it]\n")
    with pytest.raises(ValueError, match=r"examples.yaml.*unknown tier 'huge'"):
        load_examples(path)


def test_the_shipped_examples_cover_every_tier_and_differ_from_the_eval_set() -> None:
    examples = load_examples(EXAMPLES_FILE)
    evaluated = {item.prompt for item in load_labelled(EVAL_FILE)}

    assert {tier: len(prompts) >= 15 for tier, prompts in examples.items()} == {
        "small": True,
        "medium": True,
        "large": True,
    }
    assert not evaluated & {p for prompts in examples.values() for p in prompts}
    assert len(evaluated) >= 60


# --- route-eval ------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_route_eval_reports_accuracy_confusion_and_cost(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    path = _write_jsonl(
        tmp_path / "eval.jsonl",
        [
            {"prompt": "What is DNS?", "tier": "small"},
            {"prompt": "Explain how DNS works.", "tier": "medium"},
            {"prompt": "Design a global DNS service.", "tier": "large"},
            {"prompt": "Who wrote Hamlet?", "tier": "medium"},  # routed small: one miss
        ],
    )
    report = route_eval(path, Router(catalogue, "rules"), catalogue, FakeEmbedder())

    assert "Accuracy: **75.0%** (3 of 4" in report
    assert "| labelled \\ routed | small | medium | large | total |" in report
    assert "| medium | 1 | 1 | 0 | 2 |" in report
    assert "everything to gpt-4o" in report and "Routing saves" in report
    assert "every answer is 250 tokens long" in report


def test_route_eval_names_a_bad_line(catalogue: Catalogue, tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text('{"prompt": "hi", "tier": "small"}\n{"prompt": "hi", "tier": "tiny"}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: 'tier'"):
        route_eval(path, Router(catalogue, "rules"), catalogue, FakeEmbedder())


def test_the_rules_route_most_of_the_shipped_eval_set_right(catalogue: Catalogue) -> None:
    report = route_eval(EVAL_FILE, Router(catalogue, "rules"), catalogue, FakeEmbedder())
    accuracy = float(report.split("Accuracy: **")[1].split("%")[0])
    assert accuracy >= 90.0


@pytest.mark.parametrize("strategy", ["rules", "nearest+rules"])
def test_a_long_conversation_is_routed_by_its_whole_length(
    catalogue: Catalogue, strategy: str
) -> None:
    """Found from outside: a ~1,050-token document as the system message, then "What is
    the total?", went to the small model by `rule:simple`; the same text as one prompt
    went to the large one by `rule:long_prompt`."""
    from service.domain import ChatMessage, CompletionRequest

    document = "Item twelve costs four dollars and fifty cents. " * 110
    request = CompletionRequest(
        (ChatMessage("system", document), ChatMessage("user", "What is the total?"))
    )
    router = (
        build_router(catalogue, "rules", None, None)
        if strategy == "rules"
        else _nearest_router(catalogue, strategy)
    )
    decision = router.route_request(request, _near("small"))
    assert decision.reason == "rule:long_prompt" and decision.tier == "large"
    short = CompletionRequest((ChatMessage("user", "What is the total?"),))
    assert router.route_request(short, None).tier == "small"
