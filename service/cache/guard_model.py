"""The near-miss guard's fitted logistic model, read from `guard_weights.json` beside it.

The weights are data, not code: `semcache calibrate` (`service.cache.calibrate`) refits
them from labelled pairs and writes the file with where they came from (the data file's
sha256, the embedder, the command, the date), so anyone can refit and diff them.
Pure Python on purpose: the guard runs per candidate and must not pull numpy in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "FEATURE_NAMES",
    "SHIPPED_WEIGHTS_PATH",
    "GuardModel",
    "GuardModelError",
    "dump_guard_model",
    "load_guard_model",
    "shipped_guard_model",
]

SHIPPED_WEIGHTS_PATH = Path(__file__).with_name("guard_weights.json")
FORMAT_VERSION = 1

# The order of `guard.PairFeatures.vector()`; the file names them so a reordering shows.
FEATURE_NAMES = (
    "similarity",
    "unmatched_min_ge_1",
    "unmatched_only_one_side",
    "unmatched_max_ge_3",
    "number_one_sided",
    "entity_one_sided",
    "scope_one_sided",
)


class GuardModelError(ValueError):
    """The weights file is missing, not JSON, or does not fit the guard's features."""


@dataclass(frozen=True)
class GuardModel:
    """Weights and bias of P(same answer) = sigmoid(bias + weights · features)."""

    weights: tuple[float, ...]
    bias: float
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def score(self, features: Sequence[float]) -> float:
        """The model's probability (0..1) for one feature vector in `FEATURE_NAMES` order."""
        z = self.bias + sum(w * x for w, x in zip(self.weights, features, strict=True))
        return 1.0 / (1.0 + math.exp(-z))  # |z| < 30 for any feature vector: no overflow


def load_guard_model(path: Path) -> GuardModel:
    """Read a weights file written by `dump_guard_model`.

    Raises:
        GuardModelError: the file cannot be read, is not JSON, or names other features.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        names, weights = tuple(document["features"]), document["weights"]
        model = GuardModel(
            tuple(float(w) for w in weights), float(document["bias"]),
            {k: v for k, v in document.items() if k not in ("features", "weights", "bias")},
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GuardModelError(f"cannot read the guard's weights from {path}: {error}") from error
    if names != FEATURE_NAMES or len(model.weights) != len(FEATURE_NAMES):
        raise GuardModelError(
            f"{path} holds weights for features {list(names)}, the guard computes"
            f" {list(FEATURE_NAMES)}: refit it with `semcache calibrate --out {path}`"
        )
    return model


def dump_guard_model(model: GuardModel) -> str:
    """The JSON text of `model`, stable (sorted provenance keys) so refits diff cleanly."""
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "features": list(FEATURE_NAMES),
        "weights": list(model.weights),
        "bias": model.bias,
    }
    document.update(sorted((k, v) for k, v in model.provenance.items() if k != "format"))
    return json.dumps(document, indent=2) + "\n"


@cache
def shipped_guard_model() -> GuardModel:
    """The weights shipped in `guard_weights.json`, read once per process.

    Raises:
        GuardModelError: the shipped file is missing or damaged (a broken install).
    """
    return load_guard_model(SHIPPED_WEIGHTS_PATH)
