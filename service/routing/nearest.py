"""Nearest-example routing: the operator's labelled prompts vote on the query's tier.

The examples are embedded once, at start-up, with the same embedder as the
cache. A query is routed with the vector the cache lookup already computed
(never embedded again): its `k` most similar examples vote for their tier,
each with its cosine similarity as weight.

The raw score of a vote is its margin: (winning tier's weight - runner-up's
weight) / k, so it is high only when the neighbours are both close and in
agreement. It is calibrated into a confidence, the estimated probability
that the vote is right, by leave-one-out on the examples themselves: each
example is routed by the others, and an isotonic (monotone) fit maps margin
to how often such votes were right. A zero margin (a tie) is anchored at
chance level, so an unlike-anything query gets a low confidence.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from service.llm.catalogue import TIERS

Vector = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
EmbedMany = Callable[[Sequence[str]], npt.NDArray[np.float32]]
"""Texts → array of shape (len(texts), dim), each row L2-normalised (an `Embedder.embed`)."""


@dataclass(frozen=True)
class NearestVerdict:
    """The tier the neighbours chose, its calibrated confidence in [0, 1], and the
    closest example of that tier with its cosine similarity to the query."""

    tier: str
    confidence: float
    example: str
    similarity: float


def load_examples(path: Path) -> dict[str, list[str]]:
    """Read labelled example prompts: a YAML mapping of tier → list of prompts.

    Raises:
        ValueError: unreadable file, an unknown tier, or an entry that is not a
            non-empty string; the message names the file and the entry.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the routing examples: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of tier to a list of example prompts")
    return {str(tier): _prompts(path, tier, prompts) for tier, prompts in document.items()}


def _prompts(path: Path, tier: object, prompts: object) -> list[str]:
    if tier not in TIERS:
        raise ValueError(f"{path}: unknown tier {tier!r}; use one of {list(TIERS)}")
    if not isinstance(prompts, list):
        raise ValueError(f"{path}: {tier}: expected a list of example prompts")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}: {tier}[{index}]: expected a non-empty string")
    return [p.strip() for p in prompts]


class ExampleIndex:
    """Labelled examples, embedded once, that route a query vector by k-NN vote.

    Raises:
        ValueError: fewer than two examples, an unknown tier, or `k < 1`.
    """

    def __init__(
        self, examples: Mapping[str, Sequence[str]], embed_many: EmbedMany, k: int = 5
    ) -> None:
        unknown = sorted(set(examples) - set(TIERS))
        if unknown or k < 1:
            raise ValueError(f"examples need tiers in {list(TIERS)} (got {unknown}) and k >= 1")
        self._texts = [text for tier in examples for text in examples[tier]]
        if len(self._texts) < 2:
            raise ValueError("nearest-example routing needs at least two examples")
        self._labels = [TIERS.index(tier) for tier in examples for _ in examples[tier]]
        self._matrix = np.asarray(embed_many(self._texts), dtype=np.float32)
        self._k = min(k, len(self._texts) - 1)
        self._knots = _calibrate(self._leave_one_out())

    @property
    def size(self) -> int:
        """Number of examples."""
        return len(self._texts)

    def nearest(self, vector: Vector) -> NearestVerdict:
        """Route `vector` (a unit vector from the same embedder as the examples)."""
        similarities = self._matrix @ vector
        tier, margin, nearest = self._vote(similarities)
        return NearestVerdict(
            tier=TIERS[tier],
            confidence=self.calibrated(margin),
            example=self._texts[nearest],
            similarity=float(similarities[nearest]),
        )

    def calibrated(self, margin: float) -> float:
        """The confidence for a vote margin: the leave-one-out fit, linearly interpolated."""
        xs, ys = self._knots
        right = bisect.bisect_right(xs, margin)
        if right == 0:
            return ys[0]
        if right == len(xs) or xs[right] == xs[right - 1]:
            return ys[right - 1]
        x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
        return y0 + (y1 - y0) * (margin - x0) / (x1 - x0)

    def _vote(self, similarities: npt.NDArray[np.floating]) -> tuple[int, float, int]:
        """(winning tier index, margin, index of the winner's closest example).

        Plain Python over the k neighbours: for a handful of values it is
        several times faster than more numpy calls.
        """
        top = np.argpartition(similarities, -self._k)[-self._k :]
        weights = [0.0] * len(TIERS)
        closest: dict[int, tuple[float, int]] = {}
        for index, similarity in zip(top.tolist(), similarities[top].tolist(), strict=True):
            label = self._labels[index]
            weights[label] += max(similarity, 0.0)
            if label not in closest or similarity > closest[label][0]:
                closest[label] = (similarity, index)
        # Ties (all weights 0 when every neighbour is dissimilar) go to the closest example.
        ranked = sorted(closest, key=lambda t: (weights[t], closest[t][0]), reverse=True)
        winner = ranked[0]
        runner_up = weights[ranked[1]] if len(ranked) > 1 else 0.0
        return winner, (weights[winner] - runner_up) / self._k, closest[winner][1]

    def _leave_one_out(self) -> tuple[FloatArray, FloatArray]:
        """(margin, 1.0 if right else 0.0) of each example routed by all the others."""
        gram = self._matrix @ self._matrix.T
        np.fill_diagonal(gram, -np.inf)
        margins, right = [], []
        for index, row in enumerate(gram):
            tier, margin, _ = self._vote(row)
            margins.append(margin)
            right.append(1.0 if tier == self._labels[index] else 0.0)
        return np.asarray(margins), np.asarray(right)


def _calibrate(observations: tuple[FloatArray, FloatArray]) -> tuple[list[float], list[float]]:
    """Knots of an isotonic fit of correctness on margin, anchored at (0, chance)."""
    margins, right = observations
    chance = 1.0 / len(TIERS)
    order = np.argsort(margins, kind="stable")
    xs = np.concatenate(([0.0], margins[order]))
    ys = np.concatenate(([chance], right[order]))
    blocks = _pool_adjacent_violators(xs, ys)
    return [b[0] / b[2] for b in blocks], [b[1] / b[2] for b in blocks]


def _pool_adjacent_violators(xs: FloatArray, ys: FloatArray) -> list[list[float]]:
    """Blocks of [sum x, sum y, count] whose means of y never decrease."""
    blocks: list[list[float]] = []
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        blocks.append([x, y, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last, strict=True)]
    return blocks
