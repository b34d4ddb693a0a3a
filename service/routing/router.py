"""The router: which model answers a request that names none.

Strategies (the `routing_strategy` setting):

    rules          the decision tree of `service.routing.rules`
    nearest        the vote of the nearest labelled examples (`service.routing.nearest`)
    nearest+rules  the rules' `long_prompt` branch first (an embedding cannot see
                   length), then the nearest examples when their calibrated
                   confidence reaches `confidence_min`, the rules otherwise

A request that names a model bypasses routing. The router never embeds the
query: it reuses the vector computed for the cache lookup, and falls back to
the rules when there is none (cache bypassed, embedder down).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from service.domain import CompletionRequest
from service.llm.catalogue import Catalogue, estimate_tokens
from service.routing.nearest import EmbedMany, ExampleIndex, Vector, load_examples
from service.routing.rules import classify, long_prompt
from service.routing.strategy import STRATEGIES

_EXAMPLE_PREVIEW_CHARS = 60


@dataclass(frozen=True)
class RouteDecision:
    """Which model answers, its tier, and why.

    `reason` is `requested`, `rule:<name>` or `nearest:<tier>` (the proto's
    `route_reason`); `score` is the calibrated confidence of a nearest-example
    decision, 0 otherwise (`route_score`); `detail` says, for people, what the
    rule matched or which example was nearest and how similar it was.
    """

    model: str
    tier: str
    reason: str
    score: float
    detail: str = ""


class Router:
    """Chooses a model for each request; cheap enough for every miss (tens of µs).

    Raises:
        ValueError: an unknown strategy, or a nearest strategy without examples.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        strategy: str = "rules",
        examples: ExampleIndex | None = None,
        confidence_min: float = 0.7,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown routing strategy {strategy!r}; use one of {STRATEGIES}")
        if strategy != "rules" and examples is None:
            raise ValueError(f"routing strategy {strategy!r} needs labelled examples")
        self._catalogue = catalogue
        self._strategy = strategy
        self._examples = examples
        self._confidence_min = confidence_min

    @property
    def uses_vectors(self) -> bool:
        """Whether decisions depend on the query vector (else pass None)."""
        return self._examples is not None and self._strategy != "rules"

    def route_request(self, request: CompletionRequest, vector: Vector | None) -> RouteDecision:
        """`route` for `request`, its whole conversation's length counted."""
        tokens = sum(estimate_tokens(message.content) for message in request.messages)
        return self.route(request.question, vector, request.model, tokens)

    def route(
        self,
        text: str,
        vector: Vector | None,
        requested_model: str | None,
        prompt_tokens: int | None = None,
    ) -> RouteDecision:
        """The model for a request whose question is `text`, whose whole prompt is
        `prompt_tokens` long (None: the question's length) and whose cache-lookup
        embedding is `vector` (None when there is none).

        Raises:
            InvalidRequestError: `requested_model` is not in the catalogue.
        """
        if requested_model:
            model = self._catalogue.require_model(requested_model)
            return RouteDecision(model.name, model.tier, "requested", 0.0)
        rules = functools.partial(self._by_rules, text, prompt_tokens)
        if not self.uses_vectors or self._examples is None:
            return rules("")
        if vector is None:
            return rules("no query embedding for nearest-example routing")
        combined = self._strategy == "nearest+rules"
        if combined and long_prompt(text, prompt_tokens) is not None:
            return rules("")
        verdict = self._examples.nearest(vector)
        if combined and verdict.confidence < self._confidence_min:
            note = (
                f"nearest-example confidence {verdict.confidence:.2f} for {verdict.tier} "
                f"is below {self._confidence_min:.2f}"
            )
            return rules(note)
        model = self._catalogue.model_for_tier(verdict.tier)
        preview = _preview(verdict.example)
        detail = f"nearest example {preview!r} (cosine {verdict.similarity:.3f})"
        return RouteDecision(
            model.name, verdict.tier, f"nearest:{verdict.tier}", verdict.confidence, detail
        )

    def _by_rules(self, text: str, prompt_tokens: int | None, note: str) -> RouteDecision:
        verdict = classify(text, prompt_tokens)
        model = self._catalogue.model_for_tier(verdict.tier)
        detail = "; ".join(part for part in (verdict.matched, note) if part)
        return RouteDecision(model.name, verdict.tier, f"rule:{verdict.rule}", 0.0, detail)


def _preview(text: str) -> str:
    if len(text) <= _EXAMPLE_PREVIEW_CHARS:
        return text
    return text[: _EXAMPLE_PREVIEW_CHARS - 1] + "…"


def build_router(
    catalogue: Catalogue,
    strategy: str,
    examples_path: Path | None,
    embed_many: EmbedMany | None,
    *,
    confidence_min: float = 0.7,
    k: int = 5,
) -> Router:
    """The router for a strategy; nearest strategies embed `examples_path` once, now.

    Raises:
        ValueError: an unknown strategy, a nearest strategy without an examples
            file or embedder, or an invalid examples file.
    """
    if strategy == "rules" or strategy not in STRATEGIES:
        return Router(catalogue, strategy)  # which refuses an unknown strategy
    if examples_path is None or embed_many is None:
        raise ValueError(
            f"routing strategy {strategy!r} needs a labelled examples file "
            "(e.g. service/defaults/route-examples.yaml) and an embedder"
        )
    examples = ExampleIndex(load_examples(examples_path), embed_many, k)
    return Router(catalogue, strategy, examples, confidence_min)
