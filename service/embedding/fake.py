"""`HashingEmbedder`: an in-memory `Embedder` for tests, no model files, no threads.

Each word is hashed (blake2b, so the same in every process) to one of `dim`
coordinates with a sign; a text's vector is the normalised sum of its words'.
Texts sharing most words are near ("How do I reset my password?" and "how do i
reset my password please" have cosine 0.93), texts sharing none are near 0, and
the same text always gives the same vector: enough to drive exact and semantic
hits through the real cache without a model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from service.embedding.base import Vectors

__all__ = ["HashingEmbedder"]

_WORD_RE = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """A deterministic bag-of-words `Embedder`; `calls` counts `embed` calls.

    Args:
        dim: vector length; the text "" maps to the first coordinate.
        name: the model half of `model_id` (it scopes the cache like a real model's).

    Raises:
        ValueError: `dim` < 2.
    """

    def __init__(self, dim: int = 256, name: str = "hashing-bow") -> None:
        if dim < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        self._dim = dim
        self._name = name
        self.calls = 0

    @property
    def model_id(self) -> str:
        """`<name>/fake`."""
        return f"{self._name}/fake"

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, shape `(len(texts), dim)`."""
        self.calls += 1
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self.vector(text)
        return out

    def vector(self, text: str) -> Vectors:
        """The unit vector of one text."""
        vector = np.zeros(self._dim, dtype=np.float64)
        for word in _WORD_RE.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self._dim
            vector[index] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            vector[0], norm = 1.0, 1.0
        return (vector / norm).astype(np.float32)
