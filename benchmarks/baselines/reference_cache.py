"""The seed article's reference `SemanticCache`, re-implemented faithfully as a baseline.

It keeps a list of (question, embedding, answer) entries. A lookup walks every
entry in a Python loop, computes the cosine similarity of the query with that
entry's embedding with numpy, one entry at a time, keeps the best, and
returns it if it reaches the threshold. Nothing is indexed, scoped or
expired: a lookup costs O(entries) Python iterations, which is what semcache's
indexed, scoped lookup is compared against in `benchmarks.compare`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Vector = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class ReferenceMatch:
    """The best entry found: its position, question, answer and cosine similarity."""

    index: int
    question: str
    answer: str
    similarity: float


class ReferenceSemanticCache:
    """A list of entries searched by a Python loop of numpy cosine similarities."""

    def __init__(self, threshold: float = 0.85) -> None:
        self.threshold = threshold
        self._questions: list[str] = []
        self._embeddings: list[Vector] = []
        self._answers: list[str] = []

    def __len__(self) -> int:
        return len(self._questions)

    def add(self, question: str, embedding: Vector, answer: str) -> None:
        """Append one entry (the article's `set`/`add`)."""
        self._questions.append(question)
        self._embeddings.append(np.asarray(embedding, dtype=np.float32))
        self._answers.append(answer)

    @staticmethod
    def cosine_similarity(a: Vector, b: Vector) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    def lookup(self, embedding: Vector) -> ReferenceMatch | None:
        """The most similar entry if its cosine reaches the threshold, else None."""
        best_index, best_similarity = -1, -1.0
        for index, cached in enumerate(self._embeddings):
            similarity = self.cosine_similarity(embedding, cached)
            if similarity > best_similarity:
                best_index, best_similarity = index, similarity
        if best_index < 0 or best_similarity < self.threshold:
            return None
        return ReferenceMatch(
            best_index,
            self._questions[best_index],
            self._answers[best_index],
            best_similarity,
        )

    def get(self, question: str, embed: Callable[[str], Vector]) -> str | None:
        """The article's entry point: embed the question, then look it up; the answer or None."""
        match = self.lookup(embed(question))
        return match.answer if match is not None else None
