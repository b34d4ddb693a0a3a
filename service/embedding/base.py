"""The `Embedder` protocol every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors.

    `embed` is blocking and CPU-bound: callers run it off the event loop
    (see `service.embedding.runner`).
    """

    @property
    def model_id(self) -> str:
        """Names the model *and* backend (e.g. `all-MiniLM-L6-v2/torch-fp32`).

        It is part of every cache scope, so vectors from two backends never mix.
        """
        ...

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return an array of shape `(len(texts), dim)`, each row L2-normalised."""
        ...


def texts_per_run(embedder: Embedder) -> int | None:
    """How many texts `embedder` runs the model on at once, if it says (an optional
    `texts_per_run` attribute); None: it takes any batch whole.

    An embedder that splits a batch into runs returns nothing until the last run
    ends, so the batcher hands it no more than one run's worth at a time.
    """
    value = getattr(embedder, "texts_per_run", None)
    return value if isinstance(value, int) and value >= 1 else None


def int8_kernels_of(embedder: Embedder) -> str | None:
    """The CPU's int8 kernel family an int8 embedder runs on (an optional `int8_kernels`
    attribute, see `cpu.int8_kernels`); None: its vectors do not depend on it."""
    value = getattr(embedder, "int8_kernels", None)
    return value if isinstance(value, str) else None
