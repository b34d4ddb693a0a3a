"""`semcache route-eval FILE`: how well the router picks tiers, and what it would save.

The file is JSON Lines, one `{"prompt": "...", "tier": "small|medium|large"}`
per line. The report (Markdown) gives the accuracy, a confusion matrix, what
decided each prompt, the time one routing decision takes, and the projected
cost of routing against sending every prompt to the strongest model.

Projected cost assumes each prompt's input is its estimated token count
(`estimate_tokens`, about four characters per token) and that every answer is
`output_tokens` long (250 by default), whatever the model.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.llm.catalogue import TIERS, Catalogue, estimate_tokens
from service.routing.nearest import EmbedMany
from service.routing.router import RouteDecision, Router

DEFAULT_OUTPUT_TOKENS = 250


@dataclass(frozen=True)
class LabelledPrompt:
    prompt: str
    tier: str


@dataclass(frozen=True)
class _Outcome:
    labelled: LabelledPrompt
    decision: RouteDecision
    elapsed_us: float


def load_labelled(path: Path) -> list[LabelledPrompt]:
    """Read a labelled JSONL file; blank lines are skipped.

    Raises:
        ValueError: unreadable file, or a line that is not an object with a
            non-empty `prompt` and a known `tier`; the message names the line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the labelled prompts: {error}") from error
    labelled = [_parse_line(path, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not labelled:
        raise ValueError(f"{path}: no labelled prompts")
    return labelled


def _parse_line(path: Path, number: int, line: str) -> LabelledPrompt:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except ValueError as error:
        raise ValueError(f"{where}: not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f'{where}: expected {{"prompt": ..., "tier": ...}}')
    prompt, tier = record.get("prompt"), record.get("tier")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string")
    if tier not in TIERS:
        raise ValueError(f"{where}: 'tier' must be one of {list(TIERS)}, got {tier!r}")
    return LabelledPrompt(prompt, str(tier))


def route_eval(
    path: Path,
    router: Router,
    catalogue: Catalogue,
    embed_many: EmbedMany,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> str:
    """Route every prompt of the labelled file at `path` and report, in Markdown.

    Prompts are embedded in one batch with `embed_many` (as the cache lookup
    would have), only when the router's strategy uses vectors.

    Raises:
        ValueError: the file cannot be read or has an invalid line.
    """
    labelled = load_labelled(path)
    outcomes = _route_all(labelled, router, embed_many)
    sections = [
        f"# Routing evaluation: {path.name}",
        _summary(outcomes),
        _confusion(outcomes),
        _reasons(outcomes),
        _cost(outcomes, catalogue, output_tokens),
    ]
    return "\n\n".join(sections) + "\n"


def _route_all(
    labelled: Sequence[LabelledPrompt], router: Router, embed_many: EmbedMany
) -> list[_Outcome]:
    prompts = [item.prompt for item in labelled]
    vectors = embed_many(prompts) if router.uses_vectors else None
    outcomes = []
    for index, item in enumerate(labelled):
        vector = vectors[index] if vectors is not None else None
        started_ns = time.perf_counter_ns()
        decision = router.route(item.prompt, vector, None)
        elapsed_us = (time.perf_counter_ns() - started_ns) / 1000
        outcomes.append(_Outcome(item, decision, elapsed_us))
    return outcomes


def _summary(outcomes: Sequence[_Outcome]) -> str:
    right = sum(o.decision.tier == o.labelled.tier for o in outcomes)
    elapsed_us = np.asarray([o.elapsed_us for o in outcomes])
    p50_us, p99_us = np.percentile(elapsed_us, [50, 99])
    return (
        f"Accuracy: **{right / len(outcomes):.1%}** ({right} of {len(outcomes)} prompts "
        "routed to their labelled tier)\n\n"
        f"Routing decision time: p50 {p50_us:.1f} µs, p99 {p99_us:.1f} µs "
        "(embedding excluded: the router reuses the cache lookup's vector)"
    )


def _confusion(outcomes: Sequence[_Outcome]) -> str:
    counts = Counter((o.labelled.tier, o.decision.tier) for o in outcomes)
    header = "| labelled \\ routed | " + " | ".join(TIERS) + " | total |"
    rule = "|---|" + "---:|" * (len(TIERS) + 1)
    rows = [
        f"| {label} | "
        + " | ".join(str(counts[label, routed]) for routed in TIERS)
        + f" | {sum(counts[label, routed] for routed in TIERS)} |"
        for label in TIERS
    ]
    return "\n".join(["## Confusion matrix", "", header, rule, *rows])


def _reasons(outcomes: Sequence[_Outcome]) -> str:
    by_reason = Counter(o.decision.reason for o in outcomes)
    right = Counter(o.decision.reason for o in outcomes if o.decision.tier == o.labelled.tier)
    rows = [
        f"| {reason} | {count} | {right[reason] / count:.0%} |"
        for reason, count in by_reason.most_common()
    ]
    return "\n".join(
        ["## What decided", "", "| reason | prompts | right |", "|---|---:|---:|", *rows]
    )


def _cost(outcomes: Sequence[_Outcome], catalogue: Catalogue, output_tokens: int) -> str:
    strongest = catalogue.strongest

    def total(models: Sequence[str]) -> float:
        return sum(
            catalogue.price(model).cost_usd(estimate_tokens(o.labelled.prompt), output_tokens)
            for model, o in zip(models, outcomes, strict=True)
        )

    routed = total([o.decision.model for o in outcomes])
    everything_strong = total([strongest.name] * len(outcomes))
    labelled = total([catalogue.model_for_tier(o.labelled.tier).name for o in outcomes])
    saving = 1 - routed / everything_strong if everything_strong else 0.0
    return "\n".join(
        [
            "## Projected cost",
            "",
            f"Assumes each prompt's input is its estimated token count (~4 characters per "
            f"token) and every answer is {output_tokens} tokens long.",
            "",
            "| plan | cost (USD) |",
            "|---|---:|",
            f"| routed | {routed:.6f} |",
            f"| everything to {strongest.name} | {everything_strong:.6f} |",
            f"| each prompt to its labelled tier | {labelled:.6f} |",
            "",
            f"Routing saves **{saving:.1%}** against sending everything to {strongest.name}.",
        ]
    )
